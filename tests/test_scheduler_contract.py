"""SkippedStepScheduler against the contract that diffusers' common scheduler tests check, adapted."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import SD_SCHEDULER_CONFIG

import skipstep
from skipstep import (DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_SPACING_POWER, DEFAULT_TIMESTEP_SPACING,
                      DEFAULT_USE_CORRECTOR, SkippedStepFlowScheduler, SkippedStepScheduler,
                      SkippedStepSchedulerOutput)
from skipstep.timesteps import select_timesteps, spacing_power_for

SHAPE = (2, 3, 4, 4)
_W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) / 2


def eps_model(sched):
    """Smooth, per-sample-independent epsilon model with bounded x0_hat."""

    def model(x, t):
        a = sched.alphas_cumprod[int(t)].to(torch.float32)
        return (1 - a).sqrt() * x + 0.1 * a.sqrt() * torch.tanh(x @ _W)

    return model


def run_loop(sched, n=10, seed=0, shape=SHAPE, generator=None, dtype=torch.float32):
    """The standard diffusers loop."""
    model = eps_model(sched)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    sched.set_timesteps(n)
    x = randn_tensor(shape, generator=g, dtype=torch.float32).to(dtype)
    for t in sched.timesteps:
        x = sched.step(model(x.float(), t).to(dtype), t, x, generator=g).prev_sample
    return x


SD_LIKE = SD_SCHEDULER_CONFIG


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"eta": 0.3, "timestep_spacing": "leading", "steps_offset": 1},
        {"eta": "skip-ddim:3", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"eta": [1.0, 0.5, 0.25, 0.0, 0.0], "prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
        {"variance_type": "fixed_large", "clip_sample": True, "timestep_spacing": "linspace"},
    ],
)
def test_save_config_from_pretrained_round_trip(tmp_path, kwargs):
    sched = SkippedStepScheduler(**kwargs)
    sched.save_config(tmp_path)
    loaded = SkippedStepScheduler.from_pretrained(tmp_path)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(sched.config)
    assert torch.equal(loaded.alphas_cumprod, sched.alphas_cumprod)
    n = 5
    outs = []
    for s in (sched, loaded):
        s.set_timesteps(n)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(SHAPE, generator=g)
        steps = []
        for t in s.timesteps:
            out = s.step(0.5 * x, t, x, generator=g)
            x = out.prev_sample
            steps.append(out)
        outs.append(steps)
    assert torch.equal(sched.timesteps, loaded.timesteps)
    assert sched.eta_schedule == loaded.eta_schedule
    for a, b in zip(*outs):
        assert torch.equal(a.prev_sample, b.prev_sample)
        assert torch.equal(a.pred_original_sample, b.pred_original_sample)


def test_class_attributes_and_identities():
    sched = SkippedStepScheduler(num_train_timesteps=200)
    assert sched.order == 1
    assert sched.init_noise_sigma == 1.0
    assert len(sched) == 200 == sched.config.num_train_timesteps
    x = torch.randn(SHAPE)
    sched.set_timesteps(4)
    for t in sched.timesteps:
        y = sched.scale_model_input(x, t)
        assert y is x or torch.equal(y, x)
    # the trap's precondition: pipelines inspect step()'s signature for 'eta'; it must not be there
    params = inspect.signature(sched.step).parameters
    assert "eta" not in params and "generator" in params


def test_step_output_is_dataclass_and_tuple_agrees():
    sched = SkippedStepScheduler(eta=0.7, solver_order=1)
    sched.set_timesteps(10)
    x = torch.randn(SHAPE)
    t = sched.timesteps[3]
    out = sched.step(0.3 * x, t, x, generator=torch.Generator().manual_seed(1))
    tup = sched.step(0.3 * x, t, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    assert isinstance(out, SkippedStepSchedulerOutput) and isinstance(tup, tuple) and len(tup) == 2
    assert out.prev_sample.shape == x.shape and out.pred_original_sample.shape == x.shape
    assert torch.equal(tup[0], out.prev_sample) and torch.equal(tup[1], out.pred_original_sample)
    assert torch.equal(out[0], out.prev_sample)  # BaseOutput indexing


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    eta=st.floats(0.0, 1.0),
    index=st.integers(0, 4),
    variance_type=st.sampled_from(["fixed_small", "fixed_large", "learned_range"]),
)
def test_step_shape_and_dtype_property(batch, channels, spatial, dtype, eta, index, variance_type):
    sched = SkippedStepScheduler(eta=eta, solver_order=1, variance_type=variance_type)
    sched.set_timesteps(5)
    shape = (batch, channels, *spatial)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    out_channels = 2 * channels if variance_type == "learned_range" else channels
    model_output = torch.rand((batch, out_channels, *spatial), generator=g).to(dtype) * 2 - 1
    t = sched.timesteps[index]
    out = sched.step(model_output, t, x, generator=g)
    assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == dtype
    assert out.pred_original_sample.shape == x.shape and out.pred_original_sample.dtype == dtype
    assert bool(torch.isfinite(out.prev_sample).all())


# ---------------------------------------------------------------------------------------------------------------
# forward process
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [{}, SD_LIKE, {"rescale_betas_zero_snr": True}])
def test_add_noise_and_velocity_match_ddpm(config):
    ref = DDPMScheduler.from_config(DDIMScheduler(**config).config)
    ours = SkippedStepScheduler.from_config(ref.config, keep_grid=True)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((4, 2, 3, 3), generator=g), torch.randn((4, 2, 3, 3), generator=g)
    t = torch.tensor([0, 17, 500, 999])
    expected = ref.add_noise(x0, eps, t)
    got = ours.add_noise(x0, eps, t)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    abar = ref.alphas_cumprod[t].double().reshape(-1, 1, 1, 1)
    formula = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    torch.testing.assert_close(got.double(), formula, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.get_velocity(x0, eps, t), ref.get_velocity(x0, eps, t), rtol=0, atol=1e-6)
    # one timestep for the whole batch
    torch.testing.assert_close(ours.add_noise(x0, eps, torch.tensor(250)), ref.add_noise(x0, eps, torch.tensor(250)),
                               rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# from_config swaps and compatibility
# ---------------------------------------------------------------------------------------------------------------
SOURCES = [
    DDPMScheduler(),
    DDIMScheduler(),
    PNDMScheduler(),
    DPMSolverMultistepScheduler(),
    DDIMScheduler(**SD_LIKE),
    PNDMScheduler(**{k: v for k, v in SD_LIKE.items() if k != "clip_sample"}, skip_prk_steps=True),
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: f"{type(s).__name__}-{s.config.beta_schedule}")
def test_from_config_swap_keeps_the_training_chain(source):
    ours = SkippedStepScheduler.from_config(source.config, keep_grid=True)
    assert torch.equal(ours.alphas_cumprod, source.alphas_cumprod.float())
    # diffusers' from_config carries every key the source set explicitly; keys the source left at its own
    # default (listed in `_use_default_values`) take the target's default (our timestep_spacing is
    # DEFAULT_TIMESTEP_SPACING)
    defaulted = set(source.config.get("_use_default_values", []))
    for key in ("num_train_timesteps", "beta_schedule", "prediction_type", "timestep_spacing", "steps_offset"):
        if key not in defaulted:
            assert ours.config[key] == source.config[key], key
    if "timestep_spacing" in defaulted:
        assert ours.config.timestep_spacing == DEFAULT_TIMESTEP_SPACING
    # diffusers configs carry no eta and no use_corrector: the library defaults apply
    assert ours.config.eta == DEFAULT_ETA and ours.config.use_corrector == DEFAULT_USE_CORRECTOR
    # same timesteps as the source for the spacings both have
    n = 10
    ours.set_timesteps(n)
    same_spacing = ours.config.timestep_spacing == source.config.timestep_spacing
    if isinstance(source, (DDIMScheduler, DDPMScheduler)) and same_spacing:
        source.set_timesteps(n)
        assert torch.equal(ours.timesteps, source.timesteps)
    # and back: diffusers schedulers build from our config with the same chain
    for cls in (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler):
        back = cls.from_config(ours.config)
        assert torch.equal(back.alphas_cumprod, source.alphas_cumprod), cls.__name__
        back.set_timesteps(n)
    run_loop(ours, n=n)  # the swapped scheduler samples


def test_sd_like_swap_matches_ddim_timesteps():
    ddim = DDIMScheduler(**SD_LIKE)
    ours = SkippedStepScheduler.from_config(ddim.config, keep_grid=True)
    for n in (10, 25, 50):
        ddim.set_timesteps(n)
        ours.set_timesteps(n)
        assert torch.equal(ours.timesteps, ddim.timesteps)


def test_compatibles():
    ours = SkippedStepScheduler()
    compat = set(ours.compatibles)
    for cls in (DDIMScheduler, DDPMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler):
        assert cls in compat, cls.__name__
        cls.from_config(ours.config)
    # The reverse direction is not applicable: diffusers resolves `compatibles` by name inside the diffusers
    # namespace, so no diffusers scheduler can list a third-party class. The practical equivalent -- building
    # this scheduler from any of their configs -- is tested in test_from_config_swap_keeps_the_training_chain.
    assert SkippedStepScheduler not in DDIMScheduler().compatibles


# ---------------------------------------------------------------------------------------------------------------
# timesteps
# ---------------------------------------------------------------------------------------------------------------
def test_custom_timesteps():
    sched = SkippedStepScheduler(eta=1.0, solver_order=1, timestep_spacing="trailing")
    ts = [901, 640, 333, 120, 5]
    sched.set_timesteps(timesteps=ts)
    assert sched.timesteps.tolist() == ts and sched.timesteps.dtype == torch.int64
    assert sched.num_inference_steps == len(ts) and sched.custom_timesteps
    assert [sched.previous_timestep(t) for t in ts] == ts[1:] + [-1]
    x = torch.randn(SHAPE)
    model = eps_model(sched)
    g = torch.Generator().manual_seed(0)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=g).prev_sample
    assert bool(torch.isfinite(x).all())
    # back to a spacing
    sched.set_timesteps(4)
    assert not sched.custom_timesteps and sched.timesteps.tolist() == [999, 749, 499, 249]


def test_the_defaults_are_the_library_defaults():
    """Both schedulers and sample() default to DEFAULT_ETA (DEFAULT_FLOW_ETA for the flow scheduler and a flow path),
    DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR, DEFAULT_USE_LEARNED_VARIANCE and the DEFAULT_TIMESTEP_SPACING grid
    with DEFAULT_SPACING_POWER (None: the exponent rule of spacing_power_for)."""
    expected = dict(eta=DEFAULT_ETA, solver_order=DEFAULT_SOLVER_ORDER, use_corrector=DEFAULT_USE_CORRECTOR,
                    timestep_spacing=DEFAULT_TIMESTEP_SPACING, spacing_power=DEFAULT_SPACING_POWER)
    for cls, eta in ((SkippedStepScheduler, DEFAULT_ETA), (SkippedStepFlowScheduler, skipstep.DEFAULT_FLOW_ETA)):
        config = cls().config
        assert {k: config[k] for k in expected} == {**expected, "eta": eta}, cls.__name__
    assert SkippedStepScheduler().config.use_learned_variance is skipstep.DEFAULT_USE_LEARNED_VARIANCE is False
    params = inspect.signature(skipstep.sample).parameters
    assert {k: params[k].default for k in ("solver_order", "use_corrector", "spacing_power")} == {
        k: expected[k] for k in ("solver_order", "use_corrector", "spacing_power")}
    assert params["spacing"].default == DEFAULT_TIMESTEP_SPACING
    assert params["use_learned_variance"].default is skipstep.DEFAULT_USE_LEARNED_VARIANCE
    assert params["eta"].default is None  # the path's rule: the same samples as the explicit default
    for path, eta, prediction in ((skipstep.DiscreteVPPath.from_config({}), DEFAULT_ETA, "epsilon"),
                                  (skipstep.RectifiedFlowPath(), skipstep.DEFAULT_FLOW_ETA, "flow")):
        outs = [skipstep.sample(lambda x, t: 0.5 * x, (3, 2), path=path, num_steps=12, progress=False,
                                prediction_type=prediction, generator=torch.Generator().manual_seed(0), **kw)
                for kw in ({}, {"eta": eta})]
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    sched = SkippedStepScheduler()
    for n in (4, 10):
        sched.set_timesteps(n)
        default_grid = select_timesteps(sched.path, n, DEFAULT_TIMESTEP_SPACING, power=DEFAULT_SPACING_POWER)
        assert sched.timesteps.tolist() == default_grid.tolist()
        if DEFAULT_TIMESTEP_SPACING == "power":
            explicit = select_timesteps(sched.path, n, "power", power=spacing_power_for(n, DEFAULT_SPACING_POWER))
            assert default_grid.tolist() == explicit.tolist()


def test_set_timesteps_device_argument():
    sched = SkippedStepScheduler()
    sched.set_timesteps(5, device="cpu")
    assert sched.timesteps.device.type == "cpu"


# ---------------------------------------------------------------------------------------------------------------
# the standard loop, generators and dtypes
# ---------------------------------------------------------------------------------------------------------------
def test_standard_loop_reproducible():
    sched = SkippedStepScheduler(eta=1.0, solver_order=1)
    a = run_loop(sched, seed=11)
    b = run_loop(sched, seed=11)
    c = run_loop(sched, seed=12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert bool(torch.isfinite(a).all())


@pytest.mark.parametrize("eta", [1.0, 0.5, "linear:1:0"])
def test_generator_list_gives_batch_independent_samples(eta):
    sched = SkippedStepScheduler(eta=eta, solver_order=1)
    seeds = [3, 1, 4, 1]
    batch = run_loop(sched, generator=[torch.Generator().manual_seed(s) for s in seeds], shape=(4, 3, 4, 4))
    for i, s in enumerate(seeds):
        alone = run_loop(sched, generator=[torch.Generator().manual_seed(s)], shape=(1, 3, 4, 4))
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-6)
    assert torch.allclose(batch[1], batch[3], atol=1e-6) and not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)])
def test_half_precision_computed_in_float32(dtype, tol):
    sched = SkippedStepScheduler(eta=1.0, solver_order=1)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).to(dtype)
    model_output = torch.randn(SHAPE, generator=g).to(dtype)
    t = sched.timesteps[2]
    half = sched.step(model_output, t, x, generator=torch.Generator().manual_seed(5))
    full = sched.step(model_output.float(), t, x.float(), generator=torch.Generator().manual_seed(5))
    assert half.prev_sample.dtype == dtype and half.pred_original_sample.dtype == dtype
    # one step: float32 arithmetic on the upcast inputs, rounded once to the input dtype
    assert torch.equal(half.prev_sample, full.prev_sample.to(dtype))
    assert torch.equal(half.pred_original_sample, full.pred_original_sample.to(dtype))
    # a whole trajectory stays within the dtype's rounding of the float32 one
    low = run_loop(sched, seed=9, dtype=dtype)
    ref = run_loop(sched, seed=9)
    assert low.dtype == dtype
    diff = float((low.float() - ref).abs().max())
    print(f"{dtype} trajectory vs float32: max|diff| = {diff:.3e} (|x| <= {float(ref.abs().max()):.2f})")
    assert diff < tol


# ---------------------------------------------------------------------------------------------------------------
# eta
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "eta,n,expected",
    [
        (0.25, 4, [0.25] * 4),
        ([1.0, 0.8, 0.1, 0.0], 4, [1.0, 0.8, 0.1, 0.0]),
        ("linear:1:0", 5, [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("linear:0:1", 3, [0.0, 0.5, 1.0]),
        ("skip-ddim:3", 5, [1.0, 1.0, 1.0, 0.0, 0.0]),
        ("ddim-skip:3", 5, [0.0, 0.0, 0.0, 1.0, 1.0]),
        ("skip-ddim:0.5", 10, [1.0] * 5 + [0.0] * 5),
        ("0.3", 2, [0.3, 0.3]),
        ("window", 5, [0.0, 1.0, 1.0, 1.0, 0.0]),
        ("window", 2, [0.0, 0.0]),
        ("below:8:0:window", 7, [0.0] * 7),
        ("below:8:0:window", 8, [0.0] + [1.0] * 6 + [0.0]),
        ("below:4:window:0.5", 3, [0.0, 1.0, 0.0]),
        ("below:4:window:0.5", 4, [0.5] * 4),
    ],
)
def test_eta_schedule_resolution(eta, n, expected):
    sched = SkippedStepScheduler(eta=eta, solver_order=1)
    sched.set_timesteps(n)
    assert sched.eta_schedule == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("eta,steps", [("snr-window:-inf:0", 6), ("snr-window:-3:2", 10),
                                       ("below:8:0:snr-window:-inf:0", 5), ("below:8:0:snr-window:-inf:0", 12)])
def test_snr_window_eta_is_one_where_the_step_starts_inside_the_window(eta, steps):
    """``snr-window:L:H`` reads each step's start log-SNR ``log(abar_t / (1 - abar_t))`` from the chain: the
    resolved schedule is that rule applied to the scheduler's own timesteps, and sampling with the string equals
    sampling with the explicit list."""
    sched = SkippedStepScheduler(eta=eta, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod.double()[sched.timesteps.long()]
    log_snr = torch.log(abar / (1 - abar)).tolist()
    window = eta.split("snr-window:")[1].split(":")
    low, high = float(window[0]), float(window[1])
    few = eta.startswith("below:") and steps < 8
    expected = [0.0] * steps if few else [1.0 if low <= lam <= high else 0.0 for lam in log_snr]
    assert sched.eta_schedule == expected
    assert 0 < sum(expected) < steps or few  # the window splits these trajectories
    explicit = SkippedStepScheduler(eta=expected, timestep_spacing="trailing")
    explicit.set_timesteps(steps)
    outs = []
    for s in (sched, explicit):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
        for t in s.timesteps:
            x = s.step(0.3 * x, t, x, generator=g).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_per_step_eta_list_drives_each_step():
    """eta=[0, 1, ...]: step 0 is a DDIM step, step 1 a skipped-step (DDPM) step."""
    n = 4
    ours = SkippedStepScheduler(eta=[0.0, 1.0, 0.0, 1.0], solver_order=1, use_corrector=False,
                                timestep_spacing="trailing")
    ddim = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    ddpm = DDPMScheduler(timestep_spacing="trailing", clip_sample=False)
    for s in (ours, ddim, ddpm):
        s.set_timesteps(n)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    eps = torch.randn(SHAPE, generator=g)
    t0, t1 = ours.timesteps[0], ours.timesteps[1]
    torch.testing.assert_close(ours.step(eps, t0, x).prev_sample, ddim.step(eps, t0, x, eta=0.0).prev_sample,
                               rtol=0, atol=1e-5)
    got = ours.step(eps, t1, x, variance_noise=z).prev_sample
    out = ddpm.step(eps, t1, x, generator=torch.Generator().manual_seed(0))
    ref_noise = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(0))
    var = ddpm._get_variance(t1)
    expected = out.prev_sample - var**0.5 * ref_noise + var**0.5 * z
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_call_time_eta_overrides_one_step_only():
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False, timestep_spacing="trailing")
    ddim = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    for t in ours.timesteps[:3]:
        got = ours.step(eps, t, x, eta=0.0, generator=torch.Generator().manual_seed(1))
        ref = ddim.step(eps, t, x, eta=0.0)
        torch.testing.assert_close(got.prev_sample, ref.prev_sample, rtol=0, atol=1e-5)
        # x0_hat = (x - sigma eps) / alpha is large where alpha is small: compare relatively
        torch.testing.assert_close(got.pred_original_sample, ref.pred_original_sample, rtol=1e-5, atol=1e-5)
    # the override does not stick: the configured eta=1 still injects noise on the next plain call
    assert ours.eta_schedule == [1.0] * 10
    t = ours.timesteps[1]
    a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = ours.step(eps, t, x, eta=0.0).prev_sample
    assert not torch.allclose(a, b)
    # and an intermediate eta matches DDIM's with the same noise
    z = torch.randn(SHAPE, generator=g)
    torch.testing.assert_close(ours.step(eps, t, x, eta=0.4, variance_noise=z).prev_sample,
                               ddim.step(eps, t, x, eta=0.4, variance_noise=z).prev_sample, rtol=0, atol=1e-5)
