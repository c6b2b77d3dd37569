"""Numerical oracles: SkippedStepScheduler against diffusers' own DDPM/DDIM schedulers.

Every comparison runs a whole trajectory (10 and 20 steps, several spacings) with the same timesteps, the same
initial noise and the same per-step noise (one ``torch.Generator`` seed, consumed in the same order), through a
smooth synthetic model whose ``x0`` prediction stays bounded. The measured max-abs differences are printed
(``pytest -s`` shows them as ``ORACLE ...`` lines).

Known diffusers quirk, handled explicitly below: ``DDPMScheduler.step`` injects noise whenever the *current*
timestep is > 0, also on the final step of a respaced chain (e.g. ``trailing`` ends at t=99 -> clean data). With
``fixed_small`` that noise has std 1e-10 (the clamped posterior variance) and is invisible; with ``fixed_large``
and ``learned_range`` it is the jump's std and is not. The skipped-step final step returns ``x0_hat`` without noise
(as improved-diffusion's respacing does), so for those two variance types the ``trailing`` comparison covers every
step but the last, plus the final ``x0_hat``; ``linspace``/``leading`` (which end at t=0) are compared end to end.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from skipstep import SkippedStepScheduler

TOL = 1e-5
SHAPE = (2, 3, 8, 8)
STEPS = (10, 20)
SPACINGS = ("trailing", "leading", "linspace")

_gen = torch.Generator().manual_seed(1234)
W = torch.randn(8, 8, generator=_gen) / 8**0.5
W2 = torch.randn(8, 8, generator=_gen) / 8**0.5


def _abar(sched, t) -> torch.Tensor:
    return sched.alphas_cumprod[int(t)].float()


def make_model(prediction_type: str, abar_table: torch.Tensor, learned: bool = False):
    """A smooth synthetic denoiser with bounded ``x0_hat`` for every prediction type."""

    def model(x: torch.Tensor, t) -> torch.Tensor:
        a = abar_table[int(t)].float()
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        h = torch.tanh(x @ W)
        if prediction_type == "epsilon":
            # x0_hat = (x - sigma eps)/alpha = alpha x - 0.1 sigma h: bounded even where alpha is tiny
            out = sigma * x + 0.1 * alpha * h
        elif prediction_type == "v_prediction":
            # x0_hat = alpha x - sigma v
            out = 0.5 * alpha * x - sigma * h
        elif prediction_type == "sample":
            out = torch.tanh(x @ W + 0.5 * x)
        else:
            raise AssertionError(prediction_type)
        if learned:
            out = torch.cat([out, torch.tanh(x @ W2)], dim=1)  # interpolation values in [-1, 1]
        return out

    return model


def trajectory(sched, model, num_steps=None, seed=0, timesteps=None, **step_kwargs):
    """Standard loop; returns the list of (prev_sample, pred_original_sample) per step."""
    if timesteps is not None:
        sched.set_timesteps(timesteps=timesteps)
    else:
        sched.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    out = []
    for t in sched.timesteps:
        res = sched.step(model(x, t), t, x, generator=g, **step_kwargs)
        x = res.prev_sample
        out.append((res.prev_sample, res.pred_original_sample))
    return out


def maxdiff(a, b) -> float:
    return float((a - b).abs().max())


def report(name: str, diff: float, tol: float = TOL) -> None:
    print(f"ORACLE {name}: max|diff| = {diff:.3e}")
    assert diff <= tol, f"{name}: max|diff| = {diff:.3e} > {tol}"


def compare_trajectories(name, ours, ref, skip_final_noise=False):
    assert len(ours) == len(ref)
    last = len(ours) - 1 if skip_final_noise else len(ours)
    diffs = [maxdiff(o[0], r[0]) for o, r in zip(ours[:last], ref[:last])]
    x0_diff = maxdiff(ours[-1][1], ref[-1][1])
    diff = max(diffs + [x0_diff]) if diffs else x0_diff
    report(name, diff)
    # the comparison is not vacuous: trajectories move and stay bounded
    assert float(ours[-1][0].abs().max()) < 50
    assert maxdiff(ours[0][0], ours[-1][0]) > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# eta = 1 vs DDPM respaced
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", STEPS)
def test_eta1_fixed_small_equals_ddpm(n, spacing, clip):
    ref = DDPMScheduler(variance_type="fixed_small", timestep_spacing=spacing, clip_sample=clip)
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False, variance_type="fixed_small",
                                timestep_spacing=spacing, clip_sample=clip)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n)
    assert torch.equal(ours.timesteps, ref.timesteps)
    compare_trajectories(f"eta=1 fixed_small vs DDPM n={n} {spacing} clip={clip}", a, b)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", STEPS)
def test_eta1_fixed_large_equals_ddpm(n, spacing):
    ref = DDPMScheduler(variance_type="fixed_large", timestep_spacing=spacing, clip_sample=False)
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False,
                                variance_type="fixed_large", timestep_spacing=spacing)
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n)
    compare_trajectories(f"eta=1 fixed_large vs DDPM n={n} {spacing}", a, b,
                         skip_final_noise=spacing == "trailing")


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", STEPS)
def test_learned_range_equals_ddpm(n, spacing):
    ref = DDPMScheduler(variance_type="learned_range", timestep_spacing=spacing, clip_sample=False)
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False,
                                variance_type="learned_range", use_learned_variance=True, timestep_spacing=spacing)
    model = make_model("epsilon", ref.alphas_cumprod, learned=True)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n)
    compare_trajectories(f"learned_range vs DDPM n={n} {spacing}", a, b, skip_final_noise=spacing == "trailing")


def test_ddpm_trailing_final_step_noise_is_the_only_difference():
    """Document the quirk: on ``trailing`` DDPM adds noise to its own final ``x0_hat`` (t=99 > 0)."""
    ref = DDPMScheduler(variance_type="fixed_large", timestep_spacing="trailing", clip_sample=False)
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False,
                                variance_type="fixed_large", timestep_spacing="trailing")
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, 10), trajectory(ref, model, 10)
    assert torch.equal(a[-1][0], a[-1][1])  # ours: the final sample is x0_hat
    assert maxdiff(b[-1][0], b[-1][1]) > 1e-2  # DDPM: x0_hat plus sqrt(1 - abar_99) * noise


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", STEPS)
def test_prediction_types_equal_ddpm(n, spacing, prediction_type):
    ref = DDPMScheduler(prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=False)
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False,
                                prediction_type=prediction_type, timestep_spacing=spacing)
    model = make_model(prediction_type, ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n)
    compare_trajectories(f"{prediction_type} vs DDPM n={n} {spacing}", a, b)


def test_custom_timesteps_equal_ddpm():
    ts = [950, 700, 420, 200, 60, 7]
    ref = DDPMScheduler(clip_sample=False)
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False)  # custom timesteps: no spacing
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, timesteps=ts), trajectory(ref, model, timesteps=ts)
    compare_trajectories("eta=1 vs DDPM custom timesteps", a, b)


# ---------------------------------------------------------------------------------------------------------------
# eta < 1 vs DDIM
# ---------------------------------------------------------------------------------------------------------------
def _ddim_pair(spacing, steps_offset=0, **kw):
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=True, clip_sample=False,
                        **kw)
    ours = SkippedStepScheduler.from_config(ref.config, eta=0.0, solver_order=1, use_corrector=False, keep_grid=True)
    return ours, ref


@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 0), ("leading", 1)])
@pytest.mark.parametrize("n", STEPS)
def test_eta0_equals_ddim(n, spacing, offset):
    ours, ref = _ddim_pair(spacing, offset)
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n, eta=0.0)
    assert torch.equal(ours.timesteps, ref.timesteps)
    compare_trajectories(f"eta=0 vs DDIM n={n} {spacing} offset={offset}", a, b)


@pytest.mark.parametrize("n", STEPS)
def test_eta0_equals_ddim_stable_diffusion_schedule(n):
    ours, ref = _ddim_pair("trailing", 1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n, eta=0.0)
    compare_trajectories(f"eta=0 vs DDIM n={n} scaled_linear trailing", a, b)


@pytest.mark.parametrize("n", STEPS)
def test_eta_half_equals_ddim_same_generator(n):
    ours, ref = _ddim_pair("trailing")
    ours = SkippedStepScheduler.from_config(ref.config, eta=0.5, solver_order=1, use_corrector=False, keep_grid=True)
    model = make_model("epsilon", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n, eta=0.5)
    compare_trajectories(f"eta=0.5 vs DDIM n={n} trailing (generator)", a, b)


def test_eta_half_equals_ddim_same_variance_noise():
    ours, ref = _ddim_pair("trailing")
    ours = SkippedStepScheduler.from_config(ref.config, eta=0.5, solver_order=1, use_corrector=False, keep_grid=True)
    model = make_model("epsilon", ref.alphas_cumprod)
    n = 10
    g = torch.Generator().manual_seed(7)
    noises = [torch.randn(SHAPE, generator=g) for _ in range(n)]
    x0 = torch.randn(SHAPE, generator=g)
    results = []
    for sched, kw in ((ours, {}), (ref, {"eta": 0.5})):
        sched.set_timesteps(n)
        x = x0
        for t, z in zip(sched.timesteps, noises):
            x = sched.step(model(x, t), t, x, variance_noise=z, **kw).prev_sample
        results.append(x)
    report("eta=0.5 vs DDIM n=10 trailing (variance_noise)", maxdiff(*results))


@pytest.mark.parametrize("n", STEPS)
def test_zero_terminal_snr_v_prediction_equals_ddim(n):
    ours, ref = _ddim_pair("trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert float(ref.alphas_cumprod[-1]) == 0.0
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    model = make_model("v_prediction", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n, eta=0.0)
    compare_trajectories(f"zero-SNR v_prediction eta=0 vs DDIM n={n}", a, b)


@pytest.mark.parametrize("n", STEPS)
def test_zero_terminal_snr_v_prediction_eta1_equals_ddpm(n):
    ref = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
                        clip_sample=False)
    ours = SkippedStepScheduler.from_config(ref.config, eta=1.0, solver_order=1, use_corrector=False, keep_grid=True)
    model = make_model("v_prediction", ref.alphas_cumprod)
    a, b = trajectory(ours, model, n), trajectory(ref, model, n)
    compare_trajectories(f"zero-SNR v_prediction eta=1 vs DDPM n={n}", a, b)
