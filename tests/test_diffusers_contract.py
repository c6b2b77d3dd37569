"""The scheduler contract as diffusers' own scheduler tests check it (SchedulerCommonTest and the DDIM / DDPM /
DPM-Solver test files), written here from the behaviours they test -- not copied -- for SkippedStepScheduler and,
where it applies, SkippedStepFlowScheduler. Where the math must match, full loops are compared with the diffusers
scheduler on the same deterministic sample and model. Every remaining difference is intended and listed in
docs/drop_in.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)

from skipstep import SkippedStepFlowScheduler, SkippedStepScheduler

CHAIN = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
#: every diffusers class our _compatibles names that runs a VP chain (EDMEuler is refused, see test_diffusers_options)
VP_COMPATIBLES = [DDIMScheduler, DDPMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
                  HeunDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler,
                  DPMSolverSinglestepScheduler, KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler,
                  DEISMultistepScheduler, UniPCMultistepScheduler, SASolverScheduler]


def deterministic_sample(batch=4, channels=3, size=8) -> torch.Tensor:
    n = batch * channels * size * size
    return (torch.arange(n) / n).reshape(channels, size, size, batch).permute(3, 0, 1, 2).contiguous()


def toy_model(sample, t):
    """``sample * t / (t + 1)``: a deterministic model output depending on the timestep."""
    t = torch.as_tensor(t, dtype=sample.dtype)
    return sample * t / (t + 1)


def full_loop(sched, n=10, step_kwargs=None, noise=None, sample=None):
    """10 steps of the standard loop; ``noise[i]`` is passed as ``variance_noise`` when given."""
    sched.set_timesteps(n)
    x = deterministic_sample() if sample is None else sample
    for i, t in enumerate(sched.timesteps):
        kwargs = dict(step_kwargs or {})
        if noise is not None:
            kwargs["variance_noise"] = noise[i]
        x = sched.step(toy_model(x, t), t, x, **kwargs).prev_sample
    return x


def shared_noise(n, shape=(4, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------------------------
# configuration: save/load, from_pretrained, compatibles
# ---------------------------------------------------------------------------------------------------------------
CONFIGS = [
    {},
    dict(eta=0.0, solver_order=1, timestep_spacing="leading", steps_offset=1, clip_sample=True),
    dict(eta="linear:1:0", solver_order=3, solver_type="midpoint", lower_order_final=True),
    dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", prediction_type="v_prediction"),
    dict(thresholding=True, sample_max_value=0.5, dynamic_thresholding_ratio=0.0),
    dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1, timestep_spacing="linspace",
         replaced_scheduler="DPMSolverMultistepScheduler"),
    dict(trained_betas=[0.1, 0.3, 0.5], num_train_timesteps=3),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_save_config_from_pretrained_gives_the_same_step(tmp_path, kwargs):
    sched = SkippedStepScheduler(**kwargs)
    sched.save_config(tmp_path)
    again = SkippedStepScheduler.from_pretrained(tmp_path)
    n = min(10, len(sched.betas))
    outs = []
    for s in (sched, again):
        s.set_timesteps(n)
        x = deterministic_sample()
        t = s.timesteps[0]
        outs.append(s.step(0.1 * x, t, x, generator=torch.manual_seed(0)).prev_sample)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(sched.timesteps, again.timesteps)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_from_pretrained_keeps_the_config(tmp_path, kwargs):
    sched = SkippedStepScheduler(**kwargs)
    sched.save_pretrained(tmp_path)
    again = SkippedStepScheduler.from_pretrained(tmp_path)
    a, b = dict(sched.config), dict(again.config)
    a.pop("_use_default_values", None)
    b.pop("_use_default_values", None)
    assert json.loads(json.dumps(a)) == json.loads(json.dumps(b))


@pytest.mark.parametrize("compatible", VP_COMPATIBLES, ids=lambda c: c.__name__)
def test_round_trip_through_every_compatible_scheduler(compatible):
    """Ours -> a compatible class -> ours: every key of the original comes back (ours travel as diffusers'
    hidden keys), and no extra key is an __init__ argument of ours."""
    original = SkippedStepScheduler(**CHAIN, eta=0.5, solver_order=3, timestep_spacing="linspace", clip_sample=True)
    other = compatible.from_config(original.config)
    back = SkippedStepScheduler.from_config(other.config, keep_grid=True)
    for key, value in original.config.items():
        if key != "_use_default_values":
            assert back.config[key] == value, key


@pytest.mark.parametrize("source", VP_COMPATIBLES, ids=lambda c: c.__name__)
def test_from_config_of_every_compatible_scheduler_and_back(source):
    """A compatible scheduler's config -> ours keeps the training chain and the prediction type; ours -> that class
    again gives back the source's chain and prediction type."""
    kwargs = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    theirs = source(**kwargs)
    ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod.float())
    assert ours.config.prediction_type == "v_prediction"
    back = source.from_config(ours.config)
    for key, value in kwargs.items():
        assert back.config[key] == value
    assert torch.equal(back.alphas_cumprod, theirs.alphas_cumprod)


def test_public_api_and_attributes():
    sched = SkippedStepScheduler(**CHAIN, timestep_spacing="trailing")  # the grid DPM-Solver's trailing one
    for name in ("init_noise_sigma", "scale_model_input", "step", "set_timesteps", "add_noise", "order",
                 "betas", "alphas", "alphas_cumprod", "sigmas", "timesteps", "num_inference_steps", "step_index",
                 "begin_index", "set_begin_index", "previous_timestep", "index_for_timestep"):
        assert hasattr(sched, name), name
    assert sched.init_noise_sigma == 1.0 and SkippedStepScheduler.order == 1 and len(sched) == 1000
    ref = DDPMScheduler(**CHAIN)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert getattr(sched, name).dtype == torch.float32
        assert torch.equal(getattr(sched, name), getattr(ref, name)), name
    assert torch.equal(sched.timesteps, ref.timesteps)  # every training timestep until set_timesteps
    assert sched.num_inference_steps is None and sched.step_index is None and sched.begin_index is None
    x = deterministic_sample()
    assert sched.scale_model_input(x, 0.0) is x
    sched.set_timesteps(10)
    assert sched.num_inference_steps == 10 == len(sched.timesteps) and sched.timesteps.dtype == torch.int64
    # sigmas: diffusers' VE sigmas at the timesteps, then the final sigma (0: clean), as DPM-Solver's
    dpm = DPMSolverMultistepScheduler(**CHAIN, timestep_spacing="trailing")
    dpm.set_timesteps(10)
    assert torch.equal(sched.timesteps, dpm.timesteps)
    assert torch.allclose(sched.sigmas, dpm.sigmas, rtol=1e-6)
    sched.set_begin_index(3)
    assert sched.begin_index == 3
    sched.step(toy_model(x, sched.timesteps[3]), sched.timesteps[3], x, generator=torch.manual_seed(0))
    assert sched.step_index == 4
    sched.set_timesteps(10)
    assert sched.step_index is None and sched.begin_index is None


def test_getattr_behaves_like_configmixin():
    sched = SkippedStepScheduler()
    with pytest.raises(AttributeError, match="does_not_exist"):
        sched.does_not_exist
    sched.register_to_config(test_attribute=5)
    with pytest.warns(FutureWarning):
        assert sched.test_attribute == 5


# ---------------------------------------------------------------------------------------------------------------
# step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", CONFIGS[:5])
def test_step_shape_and_return_dict(kwargs):
    """Two schedulers driven alike, one returning the dataclass and one the tuple (field order)."""
    as_dict, as_tuple = SkippedStepScheduler(**kwargs), SkippedStepScheduler(**kwargs)
    # each is fed the tensor it returned (the corrector corrects only the step's own, unmodified, output)
    x = y = deterministic_sample()
    for sched in (as_dict, as_tuple):
        sched.set_timesteps(10)
    for t in as_dict.timesteps[:3]:
        out = as_dict.step(toy_model(x, t), t, x, generator=torch.manual_seed(0))
        tup = as_tuple.step(toy_model(y, t), t, y, generator=torch.manual_seed(0), return_dict=False)
        assert out.prev_sample.shape == x.shape
        assert isinstance(tup, tuple) and len(tup) == 2
        for a, b in zip(tup, out.values()):
            assert torch.equal(a, b)
        x, y = out.prev_sample, tup[0]


def test_previous_timestep_is_a_tensor_like_ddpm():
    ours, ref = SkippedStepScheduler(**CHAIN), DDPMScheduler(**CHAIN)
    custom = [100, 87, 50, 1, 0]
    ours.set_timesteps(timesteps=custom)
    ref.set_timesteps(timesteps=custom)
    assert ours.custom_timesteps and ref.custom_timesteps
    for t in custom:
        mine, theirs = ours.previous_timestep(t), ref.previous_timestep(t)
        assert isinstance(mine, torch.Tensor) and mine.item() == theirs.item()


def test_custom_timesteps_as_tensor_equal_the_spaced_run():
    spaced, custom = SkippedStepScheduler(**CHAIN), SkippedStepScheduler(**CHAIN)
    noise = shared_noise(10)
    ref = full_loop(spaced, noise=noise)
    custom.set_timesteps(num_inference_steps=None, timesteps=spaced.timesteps.clone())
    x = deterministic_sample()
    for i, t in enumerate(custom.timesteps):
        x = custom.step(toy_model(x, t), t, x, variance_noise=noise[i]).prev_sample
    assert torch.equal(x, ref)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 50, 999, 1000])
def test_any_number_of_steps(n):
    sched = SkippedStepScheduler(**CHAIN)
    sched.set_timesteps(n)
    assert len(sched.timesteps) == n == sched.num_inference_steps
    assert bool((sched.timesteps[1:] < sched.timesteps[:-1]).all())
    x = deterministic_sample()
    t = sched.timesteps[0]
    assert sched.step(toy_model(x, t), t, x, generator=torch.manual_seed(0)).prev_sample.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_add_noise_dtype_and_one_element_timesteps(dtype):
    sched = SkippedStepScheduler(**CHAIN)
    sched.set_timesteps(50)
    x = deterministic_sample().to(dtype)
    noise = torch.flip(x, [0])
    out = sched.add_noise(x, noise, sched.timesteps[5][None])
    assert out.shape == x.shape and out.dtype == dtype
    ref = DDPMScheduler(**CHAIN).add_noise(x.double(), noise.double(), sched.timesteps[5][None])
    assert torch.allclose(out.double(), ref, atol=1e-2 if dtype == torch.float16 else 1e-6)


def test_trained_betas_of_any_length(tmp_path):
    sched = SkippedStepScheduler(**CHAIN, trained_betas=np.array([0.1, 0.3]))
    sched.save_config(tmp_path)
    again = SkippedStepScheduler.from_pretrained(tmp_path)
    assert sched.betas.tolist() == again.betas.tolist() == pytest.approx([0.1, 0.3])
    assert torch.equal(sched.timesteps, torch.tensor([1, 0]))
    x = deterministic_sample()
    sched.step(toy_model(x, 1), 1, x, generator=torch.manual_seed(0))  # the table defines the chain, as in diffusers


def test_a_steep_chain_whose_float32_table_underflows_is_accepted():
    """betas 0.01 -> 0.2: float32 abar reaches 0 at t = 959; the table stays strictly falling (float64 beyond)."""
    sched = SkippedStepScheduler(beta_start=0.01, beta_end=0.2)
    ref = DDIMScheduler(beta_start=0.01, beta_end=0.2)
    assert float(ref.alphas_cumprod[959]) == 0.0
    valid = ref.alphas_cumprod >= torch.finfo(torch.float32).tiny  # normal float32 numbers
    assert torch.equal(sched.alphas_cumprod[valid], ref.alphas_cumprod[valid])  # the trained values where valid
    assert bool((sched.path.alphas_cumprod[1:] < sched.path.alphas_cumprod[:-1]).all())
    sched.set_timesteps(10)
    x = deterministic_sample()
    t = sched.timesteps[-1]
    assert torch.isfinite(sched.step(toy_model(x, t), t, x).prev_sample).all()


# ---------------------------------------------------------------------------------------------------------------
# full loops where the math must match
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_eta0_order1_equals_ddim_with_clipped_model_output(prediction_type, spacing):
    cfg = dict(CHAIN, clip_sample=True, prediction_type=prediction_type, timestep_spacing=spacing)
    ref = full_loop(DDIMScheduler(**cfg), step_kwargs=dict(eta=0.0, use_clipped_model_output=True))
    ours = full_loop(SkippedStepScheduler(**cfg, eta=0.0, solver_order=1, use_corrector=False))
    assert max_diff(ours, ref) < 1e-5
    assert float(ours.sum()) == pytest.approx(float(ref.sum()), abs=1e-3)


def test_ddim_set_alpha_to_one_false_is_final_sigmas_type_sigma_min():
    ddim = DDIMScheduler(**dict(CHAIN, beta_start=0.01), clip_sample=True, set_alpha_to_one=False,
                         timestep_spacing="leading")
    ours = SkippedStepScheduler.from_config(ddim.config, eta=0.0, solver_order=1, use_corrector=False,
                                            final_sigmas_type="sigma_min", keep_grid=True)
    ref = full_loop(ddim, step_kwargs=dict(use_clipped_model_output=True))
    assert max_diff(full_loop(ours), ref) < 1e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_eta1_order1_fixed_small_equals_ddpm_respaced(prediction_type):
    cfg = dict(CHAIN, clip_sample=True, prediction_type=prediction_type, variance_type="fixed_small",
               timestep_spacing="trailing")
    ddpm, ours = DDPMScheduler(**cfg), SkippedStepScheduler(**cfg, eta=1.0, solver_order=1, use_corrector=False)
    results = []
    for sched in (ddpm, ours):
        g = torch.Generator().manual_seed(0)
        sched.set_timesteps(10)
        x = deterministic_sample()
        for t in sched.timesteps:
            x = sched.step(toy_model(x, t), t, x, generator=g).prev_sample
        results.append(x)
    assert max_diff(results[1], results[0]) < 1e-5


def test_eta1_order1_full_chain_without_set_timesteps_equals_ddpm():
    """DDPM's test loop: no set_timesteps, every training timestep, one generator."""
    cfg = dict(CHAIN, clip_sample=True, variance_type="fixed_small")
    results = []
    for sched in (DDPMScheduler(**cfg), SkippedStepScheduler(**cfg, eta=1.0, solver_order=1, use_corrector=False)):
        g = torch.manual_seed(0)
        x = deterministic_sample()
        for t in reversed(range(len(sched))):
            x = sched.step(toy_model(x, t), t, x, generator=g).prev_sample
        results.append(x)
    assert float(results[1].sum()) == pytest.approx(float(results[0].sum()), abs=1e-2)
    assert max_diff(results[1], results[0]) < 1e-3  # 1000 float32 steps with different operation order


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_eta0_order2_midpoint_equals_dpm_solver_pp_2m(spacing, prediction_type):
    """diffusers' default DPM-Solver++(2M) (midpoint, lower_order_final) through from_config."""
    dpm = DPMSolverMultistepScheduler(**CHAIN, timestep_spacing=spacing, prediction_type=prediction_type,
                                      solver_type="midpoint", lower_order_final=True)
    ours = SkippedStepScheduler.from_config(dpm.config, eta=0.0, solver_order=2, use_corrector=False, keep_grid=True)
    assert ours.config.solver_type == "midpoint" and ours.config.solver_order == 2
    ref = full_loop(dpm)
    assert max_diff(full_loop(ours), ref) < 2e-6 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("steps", [4, 6])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_few_steps_equal_dpm_solver_pp_2m_at_extrapolation_gain_1(steps, solver_type):
    """Below 8 steps the default's extrapolation gain (1 + (3/n)^3) is no DPM-Solver step; at
    ``extrapolation_gain=1.0`` the order-2 member is DPM-Solver++(2M) again, at any step count."""
    dpm = DPMSolverMultistepScheduler(**CHAIN, timestep_spacing="linspace", solver_type=solver_type,
                                      lower_order_final=True)
    ref = full_loop(dpm, n=steps)
    common = dict(eta=0.0, solver_order=2, use_corrector=False, keep_grid=True)
    exact = SkippedStepScheduler.from_config(dpm.config, **common, extrapolation_gain=1.0)
    assert max_diff(full_loop(exact, n=steps), ref) < 2e-6 * max(1.0, float(ref.abs().max()))
    gained = SkippedStepScheduler.from_config(dpm.config, **common)
    assert max_diff(full_loop(gained, n=steps), ref) > 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_eta1_order2_equals_sde_dpm_solver_pp_2m_with_shared_noise(solver_type):
    dpm = DPMSolverMultistepScheduler(**CHAIN, timestep_spacing="linspace", algorithm_type="sde-dpmsolver++",
                                      solver_type=solver_type)
    ours = SkippedStepScheduler.from_config(dpm.config, eta=1.0, solver_order=2, use_corrector=False, keep_grid=True)
    noise = shared_noise(10)
    ref = full_loop(dpm, noise=noise)
    assert max_diff(full_loop(ours, noise=noise), ref) < 2e-6 * max(1.0, float(ref.abs().max()))


def test_thresholding_half_precision_in_and_out():
    sched = SkippedStepScheduler(**CHAIN, thresholding=True, dynamic_thresholding_ratio=0.0)
    x = full_loop(sched, sample=deterministic_sample().half())
    assert x.dtype == torch.float16


@pytest.mark.parametrize("sample_max_value", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("ratio", [0.0, 0.87, 0.995])
def test_thresholding_equals_ddim(sample_max_value, ratio):
    cfg = dict(CHAIN, thresholding=True, sample_max_value=sample_max_value, dynamic_thresholding_ratio=ratio,
               timestep_spacing="trailing")
    ref = full_loop(DDIMScheduler(**cfg), step_kwargs=dict(use_clipped_model_output=True),
                    sample=3 * deterministic_sample() - 1)
    ours = full_loop(SkippedStepScheduler(**cfg, eta=0.0, solver_order=1, use_corrector=False),
                     sample=3 * deterministic_sample() - 1)
    assert max_diff(ours, ref) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# the flow scheduler, where the contract applies
# ---------------------------------------------------------------------------------------------------------------
def test_flow_scheduler_contract(tmp_path):
    theirs = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = SkippedStepFlowScheduler.from_config(theirs.config, solver_order=2, solver_type="midpoint",
                                                timestep_spacing="linspace")  # FlowMatchEuler's own sigmas
    ours.save_config(tmp_path)
    again = SkippedStepFlowScheduler.from_pretrained(tmp_path)
    back = FlowMatchEulerDiscreteScheduler.from_config(ours.config)
    assert back.config.shift == 3.0
    for s in (ours, again, theirs):
        s.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    x = deterministic_sample()
    outs = []
    for s in (ours, again):
        out = s.step(0.1 * x, s.timesteps[0], x, generator=torch.manual_seed(0))
        tup = s.step(0.1 * x, s.timesteps[0], x, generator=torch.manual_seed(0), return_dict=False)
        assert torch.equal(out.prev_sample, tup[0]) and out.prev_sample.shape == x.shape
        outs.append(out.prev_sample)
    assert torch.equal(outs[0], outs[1])
    assert ours.step_index == 1 and ours.init_noise_sigma == 1.0 and SkippedStepFlowScheduler.order == 1
    ours.set_begin_index(2)
    assert ours.begin_index == 2


def test_flow_scheduler_eta0_equals_flow_match_euler():
    theirs = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = SkippedStepFlowScheduler.from_config(theirs.config, eta=0.0, solver_order=1, use_corrector=False,
                                                timestep_spacing="linspace")
    results = []
    for s in (theirs, ours):
        s.set_timesteps(10)
        x = deterministic_sample()
        for t in s.timesteps:
            x = s.step(0.1 * x - 0.05, t, x).prev_sample
        results.append(x)
    assert max_diff(results[1], results[0]) < 1e-5


def test_compatible_names_resolve():
    names = set(SkippedStepScheduler._compatibles)
    assert {c.__name__ for c in VP_COMPATIBLES} - {"SASolverScheduler"} <= names
    assert all(hasattr(diffusers, n) for n in names)


def test_flow_scheduler_accepts_numpy_step_counts():
    ours = SkippedStepFlowScheduler()
    ours.set_timesteps(np.int64(5))
    assert ours.num_inference_steps == 5
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        ours.set_timesteps(5.0)
