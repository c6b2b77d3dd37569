"""SkippedStepFlowScheduler: the contract of FlowMatchEulerDiscreteScheduler, its math from the core.

(a) the same sigmas/timesteps as FlowMatchEulerDiscreteScheduler from the same config (default, shift, dynamic
    shifting with mu, shift_terminal, custom sigmas);
(b) eta=0, order 1 is the flow-matching Euler step x_s = x_t + (s - t) v, over whole trajectories;
    eta=1 is the exact posterior of the flow path (checked against the closed form);
(c) on the exact mixture testbed under the flow path quality improves with NFE towards the exact distribution;
plus img2img (scale_noise, set_begin_index, entering mid-way with solver_order=2), save/load, bad input.
"""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from skipstep import RectifiedFlowPath, SkippedStepFlowScheduler, SkippedStepScheduler
from skipstep.lab.metrics import mixture_metrics, sliced_wasserstein
from skipstep.lab.testbeds.gmm import GaussianMixture, GMMDenoiser




#: FlowMatchEulerDiscreteScheduler's own sigmas (the flow scheduler's ``linspace``), for comparisons with it
EULER_GRID = dict(timestep_spacing="linspace")
#: the flow-matching Euler member: order 1, no corrector (with eta=0), on Euler's grid
EULER_MEMBER = dict(solver_order=1, use_corrector=False, **EULER_GRID)


def velocity_model(x, t):
    """A smooth nonlinear stand-in for a flow network (t is the pipeline's timestep, sigma * 1000)."""
    s = torch.as_tensor(t, dtype=torch.float32) / 1000.0
    return torch.sin(1.3 * x) * (0.5 + s) - 0.4 * x + 0.2


# ---------------------------------------------------------------------------------------------------------------
# (a) sigmas
# ---------------------------------------------------------------------------------------------------------------
SIGMA_CASES = [
    (dict(), dict(num_inference_steps=10)),
    (dict(shift=3.0), dict(num_inference_steps=10)),
    (dict(shift=3.0), dict(num_inference_steps=1)),
    (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), dict(num_inference_steps=12, mu=0.9)),
    (dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(num_inference_steps=8, mu=1.4)),
    (dict(shift=7.0), dict(num_inference_steps=20)),
    (dict(shift=2.0, shift_terminal=0.1), dict(num_inference_steps=10)),
    (dict(use_karras_sigmas=True, shift=3.0), dict(num_inference_steps=10)),
    (dict(), dict(sigmas=[1.0, 0.75, 0.5, 0.3, 0.1])),  # Flux passes sigmas (and mu)
    (dict(use_dynamic_shifting=True), dict(sigmas=[1.0, 0.8, 0.6, 0.4, 0.2], mu=1.1)),
]


@pytest.mark.parametrize("config, call", SIGMA_CASES)
def test_same_sigmas_and_timesteps_as_flow_match_euler(config, call):
    ref = FlowMatchEulerDiscreteScheduler(**config)
    ours = SkippedStepFlowScheduler.from_config(ref.config, **EULER_GRID)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)  # before set_timesteps
    ref.set_timesteps(**call)
    ours.set_timesteps(**call)
    assert torch.equal(ours.sigmas, ref.sigmas), (ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert float(ours.sigmas[-1]) == 0.0 and len(ours.sigmas) == len(ours.timesteps) + 1
    assert ours.num_inference_steps == len(ours.timesteps)
    assert ours.init_noise_sigma == 1.0 and ours.order == 1
    assert ours.shift == ref.shift and (ours.sigma_min, ours.sigma_max) == (ref.sigma_min, ref.sigma_max)


def test_dynamic_shifting_needs_mu():
    ours = SkippedStepFlowScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        ours.set_timesteps(10)


def test_save_and_load_round_trip(tmp_path):
    sched = SkippedStepFlowScheduler(shift=3.0, eta="linear:1:0", solver_order=2)
    sched.save_config(tmp_path)
    loaded = SkippedStepFlowScheduler.from_pretrained(tmp_path)
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(sched.config)
    loaded.set_timesteps(6)
    assert loaded.eta_schedule == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


def test_unipc_flow_config_is_read_with_its_flow_shift():
    """Wan ships UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=...) configs."""
    unipc = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=5.0)
    ours = SkippedStepFlowScheduler.from_config(unipc.config)
    assert ours.config.shift == 5.0
    assert torch.equal(ours.sigmas, FlowMatchEulerDiscreteScheduler(shift=5.0).sigmas)


# ---------------------------------------------------------------------------------------------------------------
# (b) the step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, call", SIGMA_CASES[:8])
def test_eta0_is_the_flow_matching_euler_step_over_a_trajectory(config, call):
    ref = FlowMatchEulerDiscreteScheduler(**config)
    ours = SkippedStepFlowScheduler.from_config(ref.config, eta=0.0, **EULER_MEMBER)
    ref.set_timesteps(**call)
    ours.set_timesteps(**call)
    x = torch.randn((3, 4, 2, 6, 6), generator=torch.Generator().manual_seed(0))  # video-shaped latents
    y = x.clone()
    for t in ours.timesteps:
        x = ref.step(velocity_model(x, t), t, x).prev_sample
        out = ours.step(velocity_model(y, t), t, y)
        y = out.prev_sample
        # and step by step: x_s = x_t + (s - t) v
        assert float((y - x).abs().max()) <= 2e-5 * max(1.0, float(x.abs().max()))
    assert float((y - x).abs().max()) <= 2e-5 * max(1.0, float(x.abs().max()))
    assert ours.step_index == len(ours.timesteps)


def test_eta1_step_is_the_flow_path_posterior():
    """x_s = (a s^2/t^2) x_t + ((1 - s) v_jump / t^2) x0_hat + sqrt(v_jump s^2 / t^2) z with a = (1-t)/(1-s),
    v_jump = t^2 - a^2 s^2 and x0_hat = x_t - t v."""
    ours = SkippedStepFlowScheduler(shift=3.0, eta=1.0, solver_order=1, use_corrector=False)  # one step at a time
    ours.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for i, tt in enumerate(ours.timesteps[:-1]):
        t, s = float(ours.sigmas[i]), float(ours.sigmas[i + 1])
        v = velocity_model(x, tt).double()
        z = torch.randn_like(x)
        got = ours.step(v, tt, x, variance_noise=z)
        a = (1 - t) / (1 - s)
        jump = t * t - a * a * s * s
        x0 = x - t * v
        expected = (a * s * s / (t * t)) * x + ((1 - s) * jump / (t * t)) * x0 + math.sqrt(jump * s * s / (t * t)) * z
        torch.testing.assert_close(got.prev_sample, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.pred_original_sample, x0, rtol=1e-12, atol=1e-12)
        x = got.prev_sample
    # the final step goes to sigma = 0 and returns x0_hat (no noise)
    tt = ours.timesteps[-1]
    v = velocity_model(x, tt).double()
    final = ours.step(v, tt, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(final.prev_sample, x - float(ours.sigmas[-2]) * v)


def test_generator_and_per_sample_generators_make_the_noise():
    ours = SkippedStepFlowScheduler(eta=1.0)
    ours.set_timesteps(4)
    x = torch.randn(3, 2, 5)
    t = ours.timesteps[1]
    a = ours.step(x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = ours.step(x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    c = ours.step(x, t, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b) and not torch.equal(a, c)
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    rows = ours.step(x, t, x, generator=gens).prev_sample
    alone = ours.step(x[1:2], t, x[1:2], generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(rows[1:2], alone)  # a sample does not depend on its batch


def test_standard_loop_with_solver_order_2_and_eta_schedule():
    ours = SkippedStepFlowScheduler(shift=3.0, eta="skip-ddim:3", solver_order=2)
    ours.set_timesteps(6)
    assert ours.eta_schedule == [1.0] * 3 + [0.0] * 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=g)
    for t in ours.timesteps:
        x = ours.step(velocity_model(x, t), t, x, generator=g).prev_sample
    assert bool(torch.isfinite(x).all())


# ---------------------------------------------------------------------------------------------------------------
# img2img: scale_noise, set_begin_index, entering mid-way
# ---------------------------------------------------------------------------------------------------------------
def test_scale_noise_matches_flow_match_euler():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = SkippedStepFlowScheduler.from_config(ref.config, **EULER_GRID)
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for sched in (ref, ours):
        sched.set_timesteps(10)
    # looked up by value
    t = ref.timesteps[4:5]
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), ref.scale_noise(x0, t, noise))
    # with a begin index (SD3/Flux img2img call set_begin_index first)
    for sched in (ref, ours):
        sched.set_begin_index(6)
    torch.testing.assert_close(ours.scale_noise(x0, ref.timesteps[6:7], noise),
                               ref.scale_noise(x0, ref.timesteps[6:7], noise))
    sigma = float(ours.sigmas[6])
    torch.testing.assert_close(ours.scale_noise(x0, ours.timesteps[6:7], noise), (1 - sigma) * x0 + sigma * noise)


@pytest.mark.parametrize("order", [1, 2])
def test_entering_mid_trajectory_like_img2img(order):
    """Start at index k (after set_begin_index(k)) == the tail of a trajectory whose history was reset at k."""
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = SkippedStepFlowScheduler.from_config(ref.config, eta=0.0, **{**EULER_MEMBER, "solver_order": order})
    for sched in (ref, ours):
        sched.set_timesteps(10)
        sched.set_begin_index(4)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    x = ours.scale_noise(x0, ours.timesteps[4:5], noise)
    y = ref.scale_noise(x0, ref.timesteps[4:5], noise)
    for t in ours.timesteps[4:]:
        x = ours.step(velocity_model(x, t), t, x).prev_sample
        y = ref.step(velocity_model(y, t), t, y).prev_sample
    assert ours.step_index == 10
    if order == 1:
        assert float((x - y).abs().max()) < 2e-5 * max(1.0, float(y.abs().max()))
    else:  # the same entry in a fresh scheduler object, stepped by value without set_begin_index
        fresh = SkippedStepFlowScheduler.from_config(ref.config, eta=0.0, **{**EULER_MEMBER, "solver_order": 2})
        fresh.set_timesteps(10)
        z = fresh.scale_noise(x0, fresh.timesteps[4:5], noise)
        for t in fresh.timesteps[4:]:
            z = fresh.step(velocity_model(z, t), t, z).prev_sample
        assert torch.equal(x, z)
        assert float((x - y).abs().max()) > 1e-4  # order 2 changed the result


# ---------------------------------------------------------------------------------------------------------------
# (c) quality on the exact mixture under the flow path
# ---------------------------------------------------------------------------------------------------------------
def test_quality_improves_with_nfe_on_the_exact_flow_mixture():
    ang = torch.arange(6, dtype=torch.float64) * 2 * math.pi / 6
    means = torch.stack([2 * torch.cos(ang), 2 * torch.sin(ang)], 1)
    std = 0.2
    mix = GaussianMixture(means, [0.3, 0.1, 0.2, 0.1, 0.2, 0.1], std)
    model = GMMDenoiser(mix, RectifiedFlowPath(), prediction_type="flow")
    n = 8000
    data, _ = mix.sample(n, generator=torch.Generator().manual_seed(7))
    noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(0))

    def run(sched, nfe):
        sched.set_timesteps(nfe)
        g = torch.Generator().manual_seed(1)
        x = noise.clone()
        for i, t in enumerate(sched.timesteps):
            v = model(x, sched.sigmas[i].double().expand(n))
            kw = {"generator": g} if isinstance(sched, SkippedStepFlowScheduler) else {}
            x = sched.step(v, t, x, **kw).prev_sample
        m = mixture_metrics(x, mix.means, mix.weights, std)
        return sliced_wasserstein(x, data, num_projections=64), m["mode_frequency_tv"], m["within_mode_spread_ratio"]

    samplers = {"eta=1": lambda: SkippedStepFlowScheduler(eta=1.0, **EULER_MEMBER),
                "eta=0": lambda: SkippedStepFlowScheduler(eta=0.0, **EULER_MEMBER),
                "euler": lambda: FlowMatchEulerDiscreteScheduler()}
    results = {name: {nfe: run(make(), nfe) for nfe in (5, 10, 20, 50)} for name, make in samplers.items()}
    for name, r in results.items():
        print("FLOW GMM", name, {k: tuple(round(v, 4) for v in vals) for k, vals in r.items()})
    for name, r in results.items():
        sw = {k: v[0] for k, v in r.items()}
        assert sw[5] > 1.4 * sw[10] and sw[10] > 1.2 * sw[50] and sw[20] < sw[5], (name, sw)
        assert r[50][1] < r[5][1] / 2.5, (name, "mode TV")
        assert abs(r[50][2] - 1) < abs(r[5][2] - 1) / 2, (name, "spread ratio")
        assert abs(r[50][2] - 1) < 0.15 and r[50][1] < 0.03
    # eta=0 *is* the Euler sampler
    for nfe in (5, 10, 20, 50):
        assert results["eta=0"][nfe] == pytest.approx(results["euler"][nfe], rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vp", [DDPMScheduler(), DDIMScheduler(beta_schedule="scaled_linear"),
                                UniPCMultistepScheduler(), SkippedStepScheduler()])
def test_vp_config_into_flow_scheduler_is_refused(vp):
    with pytest.raises(ValueError, match=r"variance-preserving.*beta_schedule.*SkippedStepScheduler"):
        SkippedStepFlowScheduler.from_config(vp.config)


@pytest.mark.parametrize("flow", [FlowMatchEulerDiscreteScheduler(shift=3.0), SkippedStepFlowScheduler(),
                                  UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")])
def test_flow_config_into_vp_scheduler_is_refused(flow):
    with pytest.raises(ValueError, match=r"flow-matching model: it has .*SkippedStepFlowScheduler"):
        SkippedStepScheduler.from_config(flow.config)


def test_bad_configs_and_calls():
    with pytest.raises(ValueError, match="invert_sigmas"):
        SkippedStepFlowScheduler(invert_sigmas=True)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        SkippedStepFlowScheduler(eta=1.5)
    with pytest.raises(ValueError, match="solver_order"):
        SkippedStepFlowScheduler(solver_order=4)
    sched = SkippedStepFlowScheduler()
    x = torch.randn(2, 4, 3, 8, 8)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ValueError, match="positive integer"):
        sched.set_timesteps(0)
    with pytest.raises(ValueError, match="strictly descending"):
        sched.set_timesteps(sigmas=[0.5, 0.8, 0.2])
    with pytest.raises(ValueError, match=r"lie in \(0, 1\]"):
        sched.set_timesteps(sigmas=[1.5, 0.5])
    sched.set_timesteps(4)
    t = sched.timesteps[0]
    with pytest.raises(ValueError, match=r"sample's shape: expected \(2, 4, 3, 8, 8\), got \(2, 4, 8, 8\)"):
        sched.step(torch.randn(2, 4, 8, 8), t, x)
    with pytest.raises(ValueError, match="not one of the scheduled timesteps"):
        sched.step(x, 123.0, x)
    with pytest.raises(ValueError, match="per-sample timesteps that differ"):
        sched.step(x, torch.tensor([float(t), float(sched.timesteps[1])]), x)
    with pytest.raises(ValueError, match="per_token_timesteps"):
        sched.step(x, t, x, per_token_timesteps=torch.ones(2, 10))
    with pytest.raises(TypeError, match="unexpected keyword"):
        sched.step(x, t, x, churn=1.0)
    with pytest.raises(ValueError, match="variance_noise must have the sample's shape"):
        sched.step(x, t, x, variance_noise=torch.randn(2, 4, 8, 8))
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        sched.step(torch.full_like(x, float("nan")), t, x)
    with pytest.raises(ValueError, match="noise must have the sample's shape"):
        sched.scale_noise(x, t, torch.randn(2, 4, 8, 8))
    # a batch of equal timesteps (pipelines expand t to the batch) is fine
    out = sched.step(x, t.expand(2), x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.shape == x.shape


@pytest.mark.parametrize("steps", [4, 9])
def test_step_count_dependent_eta_equals_its_resolved_list(steps):
    """``below:6:0:window`` is deterministic for 4 steps and the noise window for 9: the same samples as the
    explicit per-step list, on both sides of the threshold."""
    rule = SkippedStepFlowScheduler(shift=3.0, eta="below:6:0:window", solver_order=2)
    rule.set_timesteps(steps)
    assert rule.effective_eta == "below:6:0:window"  # what the plan was built from (the lab reads it)
    expected = [0.0] * steps if steps < 6 else [0.0] + [1.0] * (steps - 2) + [0.0]
    assert rule.eta_schedule == expected
    explicit = SkippedStepFlowScheduler(shift=3.0, eta=expected, solver_order=2)
    explicit.set_timesteps(steps)
    x0 = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for sched in (rule, explicit):
        g = torch.Generator().manual_seed(1)
        x = x0.clone()
        for t in sched.timesteps:
            x = sched.step(velocity_model(x, t), t, x, generator=g).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("steps", [5, 10])
def test_snr_window_on_the_flow_path_is_a_sigma_threshold(steps):
    """On the rectified-flow path ``alpha = 1 - sigma``, so ``log-SNR <= 0`` is ``sigma >= 1/2``:
    ``below:8:0:snr-window:-inf:0`` injects noise on exactly the steps that start at ``sigma >= 1/2`` from 8 steps
    on, and none below 8."""
    sched = SkippedStepFlowScheduler(shift=3.0, eta="below:8:0:snr-window:-inf:0")
    sched.set_timesteps(steps)
    sigmas = sched.sigmas[:-1].tolist()
    expected = [1.0 if sigma >= 0.5 else 0.0 for sigma in sigmas] if steps >= 8 else [0.0] * steps
    assert sched.eta_schedule == expected
    assert steps < 8 or 0 < sum(expected) < steps


def _run(sched, n, seed=0):
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, generator=g)
    for t in sched.timesteps:
        x = sched.step(velocity_model(x, t), t, x, generator=g).prev_sample
    return x


def test_lower_order_final_and_euler_at_final():
    """DPM-Solver's final-step rules on the flow path: below 15 steps lower_order_final caps the second-to-last step
    at order 2 (the last step, to clean data, is first order in every case), so it changes an order-3 trajectory and
    leaves an order-2 one exactly as it is."""
    def orders(sched, n):
        sched.set_timesteps(n)
        return [min(sched.step_config.solver_order, step.max_order()) for step in sched._plan]

    o3 = dict(shift=3.0, solver_order=3)
    plain, lowered = orders(SkippedStepFlowScheduler(**o3), 8), orders(SkippedStepFlowScheduler(**o3, lower_order_final=True), 8)
    assert plain[-1] == 1 and plain[-2] == 3 and lowered[-2] == 2 and lowered[:-2] == plain[:-2]
    assert orders(SkippedStepFlowScheduler(**o3, lower_order_final=True), 16) == orders(SkippedStepFlowScheduler(**o3), 16)
    changed = _run(SkippedStepFlowScheduler(**o3, lower_order_final=True), 8) - _run(SkippedStepFlowScheduler(**o3), 8)
    assert float(changed.abs().max()) > 1e-4
    o2 = dict(shift=3.0, solver_order=2)
    for key in ("lower_order_final", "euler_at_final"):
        assert torch.equal(_run(SkippedStepFlowScheduler(**o2, **{key: True}), 8), _run(SkippedStepFlowScheduler(**o2), 8))
    with pytest.raises(ValueError, match="lower_order_final must be True or False"):
        SkippedStepFlowScheduler(lower_order_final="yes")


def test_the_few_step_default_visits_the_reference_log_snrs_whatever_the_shift():
    """Sixteenth round: below 7 steps sigma_i = 1 / (1 + exp(lambda_i / 2)), lambda_i the log-SNRs of the VP
    default's grid on DDPM's linear chain, for every static shift; seventeenth: from 7 steps the uniform sigmas,
    unshifted; an explicit spacing_power and dynamic shifting keep the shifted power grid."""
    from skipstep.timesteps import FEW_STEPS_BELOW, reference_log_snrs, spacing_power_for

    for n in range(1, FEW_STEPS_BELOW):
        lam = reference_log_snrs(n, spacing_power_for(n)).double()
        expected = (1.0 / (1.0 + torch.exp(lam / 2))).float()
        for shift in (1.0, 2.0, 3.0):
            ours = SkippedStepFlowScheduler(shift=shift)
            ours.set_timesteps(n)
            torch.testing.assert_close(ours.sigmas[:-1], expected, rtol=0, atol=0)
            assert float(ours.sigmas[-1]) == 0.0
            torch.testing.assert_close(ours.timesteps, expected * 1000)
    # at 3 steps on a shift-1 path the old grid was 1.0, 0.388, 0.077 (((n - i)/n)^(1 + 4/3)); this starts at 0.946
    ours = SkippedStepFlowScheduler(shift=1.0)
    ours.set_timesteps(3)
    assert [round(float(s), 3) for s in ours.sigmas] == [0.946, 0.542, 0.168, 0.0]
    for n in (FEW_STEPS_BELOW, 10, 20):  # from 7 steps (seventeenth round): uniform sigmas, unshifted too
        shifted = SkippedStepFlowScheduler(shift=3.0)
        shifted.set_timesteps(n)
        torch.testing.assert_close(shifted.sigmas[:-1].double(), torch.tensor((n - np.arange(n)) / n),
                                   rtol=1e-6, atol=1e-6)
    explicit = SkippedStepFlowScheduler(shift=3.0, spacing_power=1 + 2 / 7)  # an explicit power: then the shift
    explicit.set_timesteps(7)
    s = torch.tensor(((7 - np.arange(7)) / 7) ** (1 + 2 / 7))
    torch.testing.assert_close(explicit.sigmas[:-1].double(), 3 * s / (1 + 2 * s), rtol=1e-6, atol=1e-6)
    dynamic = SkippedStepFlowScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    dynamic.set_timesteps(3, mu=0.8)  # dynamic shifting keeps the power grid and the config's time shift
    s3 = torch.tensor(((3 - np.arange(3)) / 3) ** spacing_power_for(3))
    torch.testing.assert_close(dynamic.sigmas[:-1].double(), math.exp(0.8) / (math.exp(0.8) + (1 / s3 - 1)),
                               rtol=1e-6, atol=1e-6)


def test_skipstep_sample_on_a_flow_path_places_few_steps_as_the_scheduler_does():
    from skipstep import select_timesteps

    for n in (3, 5, 6, 7, 10):
        ours = SkippedStepFlowScheduler()  # shift 1: the path's own time
        ours.set_timesteps(n)
        ts = select_timesteps(RectifiedFlowPath(), n, "power", power=None)
        torch.testing.assert_close(ts.float(), ours.sigmas[:-1], rtol=1e-6, atol=1e-6)
