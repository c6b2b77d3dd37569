"""Bad input to SkippedStepScheduler: clear errors that name the parameter (and the allowed values)."""

from __future__ import annotations

import math

import pytest
import torch

from skipstep import SkippedStepScheduler

SHAPE = (2, 3, 4, 4)


@pytest.fixture
def sched():
    s = SkippedStepScheduler(num_train_timesteps=100, eta=1.0, timestep_spacing="trailing")
    s.set_timesteps(5)  # [99, 79, 59, 39, 19]
    return s


# ---------------------------------------------------------------------------------------------------------------
# timesteps
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -3, 101, 10_000])
def test_num_inference_steps_out_of_range(n):
    s = SkippedStepScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match=r"num_inference_steps.*\[1, 100\]"):
        s.set_timesteps(n)


@pytest.mark.parametrize("n", [2.5, "10", True])
def test_num_inference_steps_not_an_integer(n):
    with pytest.raises(ValueError, match="num_inference_steps"):
        SkippedStepScheduler(num_train_timesteps=100).set_timesteps(n)


def test_num_inference_steps_and_timesteps_together_or_neither():
    s = SkippedStepScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_inference_steps.*timesteps"):
        s.set_timesteps(5, timesteps=[90, 50])
    with pytest.raises(ValueError, match="num_inference_steps.*timesteps"):
        s.set_timesteps()


@pytest.mark.parametrize(
    "timesteps,match",
    [
        ([10, 50, 90], r"timesteps must be strictly descending"),
        ([90, 50, 60, 10], r"timesteps must be strictly descending"),
        ([90, 50, 50, 10], r"timesteps must not contain duplicates.*50"),
        ([100, 50, 10], r"timesteps must lie in \[0, 99\]"),
        ([90, 50, -1], r"timesteps must lie in \[0, 99\]"),
        ([90.5, 10], r"timesteps .*integers"),
        ([], r"timesteps must be a non-empty"),
    ],
)
def test_bad_custom_timesteps(timesteps, match):
    s = SkippedStepScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match=match):
        s.set_timesteps(timesteps=timesteps)


# ---------------------------------------------------------------------------------------------------------------
# eta
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [-0.1, 1.5, math.nan, math.inf])
def test_eta_number_out_of_range(eta):
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        SkippedStepScheduler(eta=eta)


def test_eta_inside_list_out_of_range():
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\].*at step 2"):
        SkippedStepScheduler(eta=[1.0, 0.5, 1.2, 0.0])


@pytest.mark.parametrize(
    "eta,match",
    [
        ("linear:1.5:0", r"eta must lie in \[0, 1\].*1\.5"),
        ("linear:0:2", r"eta must lie in \[0, 1\].*2\.0"),
        ("1.7", r"eta must lie in \[0, 1\].*1\.7"),
        ("linear:-1:0", r"unknown eta schedule.*linear:A:B"),
        ("cosine:1:0", r"unknown eta schedule.*skip-ddim:K"),
        ("skip-ddim:1.5", r"eta switch point must lie in \[0, 1\]"),
        ("below:0:0:1", r"step count N of a 'below:N:LOW:HIGH' eta schedule must be >= 1"),
        ("below:8:ddim:1", r"LOW of a 'below:N:LOW:HIGH' eta schedule must be a number in \[0, 1\], 'window' or "
                           r"'snr-window:L:H'"),
        ("snr-window:2:-1", r"'snr-window:L:H' eta schedule needs L <= H, got L=2, H=-1"),
        ("below:8:0:snr-window:inf:-inf", r"needs L <= H, got L=inf, H=-inf"),
        ("snr-window:0", r"unknown eta schedule.*'snr-window:L:H'"),
        ("snr-window:nan:1", r"unknown eta schedule"),
        ("below:8:0:1.5", r"eta must lie in \[0, 1\].*1\.5 \(HIGH of 'below:'\)"),
        ("below:8:0", r"unknown eta schedule"),
    ],
)
def test_eta_inside_schedule_string_out_of_range(eta, match):
    with pytest.raises(ValueError, match=match):
        SkippedStepScheduler(eta=eta)


def test_eta_switch_point_beyond_the_steps():
    s = SkippedStepScheduler(num_train_timesteps=100, eta="skip-ddim:8")
    with pytest.raises(ValueError, match=r"eta switch point K=8 exceeds the number of steps \(5\)"):
        s.set_timesteps(5)


def test_eta_list_of_the_wrong_length():
    s = SkippedStepScheduler(num_train_timesteps=100, eta=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"per-step eta schedule must have one value per step: 5 values, got 3"):
        s.set_timesteps(5)
    s.set_timesteps(3)  # the right length works
    assert s.eta_schedule == [1.0, 0.5, 0.0]


def test_eta_of_the_wrong_type():
    with pytest.raises(ValueError, match="eta must be"):
        SkippedStepScheduler(eta=True)
    with pytest.raises(ValueError, match="eta must be one of"):
        SkippedStepScheduler(eta={"a": 1})


@pytest.mark.parametrize("eta", [-0.5, 1.01, math.nan])
def test_call_time_eta_out_of_range(sched, eta):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        sched.step(x, sched.timesteps[0], x, eta=eta)


# ---------------------------------------------------------------------------------------------------------------
# configuration names
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prediction_type": "eps"}, r"prediction_type must be one of .*'epsilon'.*'v_prediction'.*'eps'"),
        ({"prediction_type": "flow"}, r"prediction_type 'flow'"),
        ({"beta_schedule": "sigmoid"}, r"beta_schedule must be one of .*'scaled_linear'.*'sigmoid'"),
        ({"timestep_spacing": "uniform"}, r"timestep_spacing must be one of .*'trailing'.*'uniform'"),
        ({"variance_type": "fixed"}, r"variance_type must be one of .*'fixed_small'.*'fixed'"),
    ],
)
def test_unknown_names(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkippedStepScheduler(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# step()
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_shape", [(2, 4, 4, 4), (1, 3, 4, 4), (2, 3, 4, 5), (2, 3, 4)])
def test_model_output_shape_mismatch(sched, bad_shape):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"model output at step 0 .*shape.*expected \(2, 3, 4, 4\)"):
        sched.step(torch.randn(bad_shape), sched.timesteps[0], x)


def test_learned_variance_needs_2c_channels():
    s = SkippedStepScheduler(num_train_timesteps=100, variance_type="learned_range")
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"2C channels.*expected \(2, 6, 4, 4\), got \(2, 3, 4, 4\)"):
        s.step(torch.randn(SHAPE), s.timesteps[0], x)
    out = s.step(torch.randn(2, 6, 4, 4).clamp(-1, 1), s.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.shape == SHAPE


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_model_output_names_the_step(sched, bad):
    x = torch.randn(SHAPE)
    out = torch.randn(SHAPE)
    out[1, 2, 3, 0] = bad
    t = sched.timesteps[3]
    with pytest.raises(FloatingPointError, match=rf"model output at step 3 \((t=|timestep ){int(t)}\).*NaN or inf"):
        sched.step(out, t, x)


def test_check_finite_false_lets_non_finite_through():
    s = SkippedStepScheduler(num_train_timesteps=100, check_finite=False, eta=0.0)
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    out = torch.randn(SHAPE)
    out[0, 0, 0, 0] = math.nan
    res = s.step(out, s.timesteps[0], x)
    assert bool(torch.isnan(res.prev_sample).any())


def test_step_before_set_timesteps_runs_the_full_chain():
    """As DDPMScheduler: without set_timesteps the schedule is every training timestep, t -> t - 1 (this used to be
    refused; the drop-in issue asked for DDPM's behaviour)."""
    s = SkippedStepScheduler(num_train_timesteps=100)
    x = torch.randn(SHAPE)
    out = s.step(x, 99, x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.shape == x.shape
    assert int(s.previous_timestep(99)) == 98 and int(s.previous_timestep(0)) == -1
    assert s.num_inference_steps is None


@pytest.mark.parametrize("t", [5, 100, -1, torch.tensor(50)])
def test_timestep_not_in_schedule(sched, t):
    # the schedule is trailing [99, 79, 59, 39, 19]
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"timestep -?\d+ is not one of the scheduled timesteps \[99, 79, 59, 39, 19\]"):
        sched.step(x, t, x)


def test_unknown_step_keyword(sched):
    x = torch.randn(SHAPE)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['etta'\].*'eta'"):
        sched.step(x, sched.timesteps[0], x, etta=0.0)


def test_generator_and_variance_noise_together(sched):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        sched.step(x, sched.timesteps[0], x, generator=torch.Generator(), variance_noise=torch.randn(SHAPE))


def test_use_clipped_model_output_false_with_clipping():
    s = SkippedStepScheduler(num_train_timesteps=100, clip_sample=True)
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="use_clipped_model_output=False"):
        s.step(x, s.timesteps[0], x, use_clipped_model_output=False)


def test_diffusers_learned_variance_is_refused_with_the_alternative():
    """diffusers' 'learned' (a directly predicted variance) cannot move to a skipped chain; 'learned_range' can."""
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="learned_range"):
        SkippedStepScheduler.from_config(DDPMScheduler(variance_type="learned").config)
    SkippedStepScheduler.from_config(DDPMScheduler(variance_type="learned_range").config)


# ---------------------------------------------------------------------------------------------------------------
# the drop-in issue's bad-input sweep: every error names the parameter and the allowed values
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [2.0, True, "2", 0, 4])
def test_solver_order_must_be_an_int_1_2_3(order):
    with pytest.raises(ValueError, match=r"solver_order must be the integer 1, 2 or 3"):
        SkippedStepScheduler(solver_order=order)
    from skipstep import sample

    with pytest.raises(ValueError, match=r"solver_order must be the integer 1, 2 or 3"):
        sample(lambda x, t: x, (1, 1, 2, 2), num_steps=3, solver_order=order, progress=False)


def test_numpy_integers_are_accepted():
    import numpy as np

    s = SkippedStepScheduler(num_train_timesteps=np.int64(100), solver_order=np.int64(2))
    s.set_timesteps(np.int64(5))
    assert len(s.timesteps) == 5


@pytest.mark.parametrize("t", [99.6, 99.5, torch.tensor(99.5), float("nan")])
def test_off_schedule_timestep_is_refused_naming_value_and_schedule(sched, t):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"timestep .* is not one of the scheduled timesteps \[99, 79, 59, 39, 19\]"):
        sched.step(x, t, x)


def test_integral_float_timestep_is_the_integer(sched):
    x = torch.randn(SHAPE)
    a = sched.step(x, 99.0, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = sched.step(x, torch.tensor(99), x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)


@pytest.mark.parametrize("T", [0, -1, 10.0, True, "1000"])
def test_num_train_timesteps_is_named(T):
    with pytest.raises(ValueError, match=r"num_train_timesteps must be an integer >= 1"):
        SkippedStepScheduler(num_train_timesteps=T)


def test_zero_dimensional_sample(sched):
    x = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"sample must be a tensor with a leading batch axis"):
        sched.step(x, sched.timesteps[0], x)


def test_generator_list_must_match_the_batch(sched):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"one torch.Generator per sample: the batch has 2 samples, got 1"):
        sched.step(x, sched.timesteps[0], x, generator=[torch.Generator()])


def test_a_number_in_the_generator_slot_names_ddim_eta(sched):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator.*got float 0.0.*eta by keyword"):
        sched.step(x, sched.timesteps[0], x, 0.0)


def test_model_on_the_meta_device(sched):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"model_output at step 0 .* is on the meta device"):
        sched.step(torch.empty(SHAPE, device="meta"), sched.timesteps[0], x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"final_sigmas_type": "sigma_max"}, r"final_sigmas_type must be one of \('zero', 'sigma_min'\)"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, r"at most one of"),
        ({"replaced_scheduler": "FooScheduler"}, r"replaced_scheduler must name a diffusers scheduler class"),
        ({"lambda_min_clipped": float("nan")}, r"lambda_min_clipped must be a number"),
        ({"sigma_min": -1.0}, r"sigma_min must be None .* or a positive number"),
        ({"solver_type": "bh2"}, r"solver_type must be one of \('heun', 'midpoint'\)"),
        ({"lower_order_final": "yes"}, r"lower_order_final must be True or False"),
        ({"dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio must lie in \[0, 1\]"),
        ({"sample_max_value": 0.0}, r"sample_max_value must be > 0"),
    ],
)
def test_new_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkippedStepScheduler(**kwargs)


@pytest.mark.parametrize("kwargs", [{"sample_max_value": 0.5, "thresholding": True},
                                    {"dynamic_thresholding_ratio": 0.0, "thresholding": True}])
def test_thresholding_values_diffusers_accepts(kwargs):
    s = SkippedStepScheduler(**kwargs)
    s.set_timesteps(3)
    x = torch.randn(SHAPE)
    assert s.step(x, s.timesteps[0], x).prev_sample.shape == SHAPE


def test_set_timesteps_takes_exactly_one_source():
    s = SkippedStepScheduler()
    with pytest.raises(ValueError, match=r"exactly one of num_inference_steps, timesteps or sigmas"):
        s.set_timesteps(5, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"exactly one of num_inference_steps, timesteps or sigmas"):
        s.set_timesteps()
