"""skipstep in k-diffusion's sampler convention -- the one k-diffusion, ComfyUI and the A1111/Forge WebUI use.

``sample_skipstep(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)`` is a drop-in for k-diffusion's
``sample_*`` functions:

* ``sigmas``: descending VE noise levels ``s`` of ``x = x0 + s eps`` (k-diffusion's ``get_sigmas_*`` append the
  final 0); one model evaluation per step, ``len(sigmas) - 1`` steps; a final ``s = 0`` returns the clean
  prediction, a positive final ``s`` stops at that noise level;
* ``model(x, sigma * s_in, **extra_args)`` is a *denoiser* returning ``x0_hat`` (``K.external.CompVisDenoiser``,
  ``DiscreteEpsDDPMDenoiser``, ComfyUI's model wrapper, an EDM network);
* ``callback({"x", "i", "sigma", "sigma_hat", "denoised"})`` before each update, as k-diffusion's samplers;
* ``noise_sampler(sigma, sigma_next)`` returns unit-variance noise for the step (default: ``torch.randn_like(x)``,
  k-diffusion's ``default_noise_sampler``; under ComfyUI, whose ``extra_args`` carry ``"seed"``, a generator
  seeded with it, as ComfyUI's own default noise sampler); ``s_noise`` scales it; ``disable`` turns the progress
  bar off.

How it runs on the core. The sigmas define a Gaussian path (:class:`~skipstep.paths.VESigmaPath`:
``alpha = 1/sqrt(1 + s^2)``, ``sigma_vp = s/sqrt(1 + s^2)``); each step scales ``x`` to the VP sample
``alpha_t x``, takes the posterior step of :mod:`skipstep.steps` with the denoiser's output as a ``sample``
prediction, and scales back by ``1/alpha_s``. Everything else -- ``eta`` and its schedules, ``solver_order``,
``solver_type``, the variance -- is the library's, planned once by :func:`~skipstep.plan.plan_steps`.

Equivalences (tested against the k-diffusion package with a shared noise sampler, float64; all with
``use_corrector=False``): ``eta=1,
solver_order=1`` is ``sample_euler_ancestral(eta=1)``; ``eta=0, solver_order=1`` is ``sample_euler`` (DDIM);
``solver_order=2, solver_type="heun"`` at ``eta=1`` is ``sample_dpmpp_2m_sde(eta=1, solver_type="heun")``;
``solver_type="midpoint"`` at ``eta=0`` is ``sample_dpmpp_2m`` and at ``eta=1`` ``sample_dpmpp_2m_sde(eta=1)``.
For ``0 < eta < 1`` skipstep's family (noise variance ``eta^2`` times the posterior's) and k-diffusion's SDE
family (``e^{-eta h}`` contraction) differ; they meet at 0 and 1.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import trange

from .gaussian_data import check_data_moments, gaussian_data_x0
from .paths import VESigmaPath
from .plan import DEFAULT_EXTRAPOLATION_GAIN, plan_steps, resolve_extrapolation_gain
from .steps import (DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR, StepConfig, TrajectoryStepper,
                    canonical_variance_type, settings_for_guidance)

#: the variances a denoiser (which returns x0_hat only) can use
DENOISER_VARIANCE_TYPES = ("small", "large")


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> Callable:
    """k-diffusion's default (``torch.randn_like(x)``, global generator), or ComfyUI's with a ``seed``."""
    if seed is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _check_sigmas(sigmas) -> torch.Tensor:
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas)
    values = sigmas.detach().cpu().double().reshape(-1)
    if sigmas.ndim != 1 or values.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least two noise levels (the last one the final level, "
                         f"0 for clean data), got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or bool((values[:-1] == 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0, with only the last one 0; got {values.tolist()}")
    if bool((values[1:] >= values[:-1]).any()):
        raise ValueError(f"sigmas must be strictly descending (noisiest first), got {values.tolist()}")
    return values


@torch.no_grad()
def sample_skipstep(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    eta: float | str = DEFAULT_ETA,
    solver_order: int = DEFAULT_SOLVER_ORDER,
    eta_schedule=None,
    solver_type: str = "heun",
    s_noise: float = 1.0,
    noise_sampler: Callable | None = None,
    variance_type: str = "small",
    lower_order_final: bool = False,
    use_corrector: bool = DEFAULT_USE_CORRECTOR,
    data_mean: float | torch.Tensor | None = None,
    data_var: float | torch.Tensor | None = None,
    guidance_scale: float | None = None,
    extrapolation_gain: float | None = DEFAULT_EXTRAPOLATION_GAIN,
) -> torch.Tensor:
    """Skipped-step posterior sampling in k-diffusion's convention (see the module docstring).

    ``x`` is the starting point at ``sigmas[0]`` (``noise * sigmas[0]``, as for every k-diffusion sampler).
    ``eta`` in [0, 1] or a schedule string: 1 is the skipped-step posterior, 0 is DDIM (the default,
    ``skipstep.DEFAULT_*``: ``eta="below:7:0:1"`` -- 0 for fewer than 7 steps, 1 from 7 on --, ``solver_order=2``,
    the corrector on);
    ``eta_schedule`` (a per-step list or a schedule string such as ``"linear:1:0"`` or ``"skip-ddim:3"``, see
    :func:`skipstep.plan.resolve_eta_schedule`) replaces the constant ``eta``. ``solver_order`` 1, 2 or 3;
    ``solver_type`` ``"heun"`` (exact weights) or ``"midpoint"`` (DPM-Solver++'s form); ``variance_type``
    ``"small"`` (the posterior variance) or ``"large"`` (the jump's); ``lower_order_final`` as DPM-Solver's;
    ``use_corrector`` as :class:`skipstep.SkippedStepScheduler`'s (no extra evaluation).
    ``data_mean`` (and ``data_var``, default 0; both broadcastable to ``x``'s shape) make the first step analytic
    (:mod:`skipstep.gaussian_data`): its denoised value is ``mu + v / (v + s_0^2) (x - mu)``, the exact denoiser
    of data ``N(mu, diag(v))``, and the model is not called at ``sigmas[0]`` (``len(sigmas) - 2`` evaluations;
    the callback still runs there). Put the extra, noisiest sigma in front of a schedule to keep its NFE.
    ``guidance_scale``: the classifier-free guidance scale ``w`` the ``model`` applies inside (``None``: unknown);
    settings left at their defaults become the strong-guidance member's (below 7 steps the corrector off from w = 5
    on, from 7 steps the first-order skipped-step posterior from ``skipstep.STRONG_GUIDANCE_FROM = 6`` on;
    :func:`skipstep.steps.settings_for_guidance`); an ``eta_schedule`` counts as a chosen eta.
    ``extrapolation_gain``: ``G`` of the order-2 steps (:class:`skipstep.SkippedStepScheduler`'s); ``None`` is the
    VP chains' rule, ``1 + (3/n)^3`` below 7 steps unless ``guidance_scale > 1`` (the sigmas do not say whether the
    model is a flow; pass ``1.0`` for one).
    Returns the sample at ``sigmas[-1]``.
    """
    extra_args = {} if extra_args is None else extra_args
    if eta_schedule is not None and eta != DEFAULT_ETA:
        raise ValueError(f"give either eta ({eta!r}) or eta_schedule ({eta_schedule!r}), not both")
    if eta_schedule is not None:
        eta = eta_schedule
    variance = canonical_variance_type(variance_type)
    if variance not in DENOISER_VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {DENOISER_VARIANCE_TYPES} for a denoiser (it returns x0 only), "
                         f"got {variance_type!r}")
    if not (isinstance(s_noise, (int, float)) and not isinstance(s_noise, bool) and math.isfinite(s_noise)
            and s_noise >= 0):
        raise ValueError(f"s_noise must be a number >= 0, got {s_noise!r}")
    if not isinstance(x, torch.Tensor) or x.ndim == 0:
        raise ValueError("x must be a tensor with a leading batch axis")
    values = _check_sigmas(sigmas)
    moments = None
    if data_mean is not None:
        if values.numel() < 3:
            raise ValueError("with data_mean (the analytic first step) sigmas need at least three noise levels: the "
                             f"analytic one, one for the model and the final one; got {values.tolist()}")
        moments = check_data_moments(data_mean, data_var, tuple(x.shape))
    elif data_var is not None:
        raise ValueError("data_var is the data variance of the analytic first step; it needs data_mean too")
    noisy, final = values[:-1], float(values[-1])
    path = VESigmaPath(min(float(noisy[-1]), final) if final > 0 else float(noisy[-1]), float(noisy[0]))
    if not isinstance(use_corrector, bool):
        raise ValueError(f"use_corrector must be True or False, got {use_corrector!r}")
    eta, solver_order, use_corrector = settings_for_guidance(guidance_scale, eta, solver_order, use_corrector,
                                                             len(noisy))
    gain = resolve_extrapolation_gain(extrapolation_gain, len(noisy), guidance_scale=guidance_scale)
    plan = plan_steps(path, noisy, eta, solver_order=solver_order,
                      solver_type=solver_type, final_time=final, lower_order_final=lower_order_final,
                      use_corrector=use_corrector, extrapolation_gain=gain)
    config = StepConfig(prediction_type="sample", variance_type=variance, solver_order=solver_order,
                        use_corrector=use_corrector)
    stepper = TrajectoryStepper(plan, config)
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    # the stepper works on the VP state x_vp = alpha x; it is handed back unchanged (the corrector needs that)
    x_vp = x * plan[0].alpha_t
    for i in trange(len(plan), disable=disable):
        step = plan[i]
        if i > 0:  # the model sees the caller's x at the first step, bit for bit
            x = x_vp / step.alpha_t
        analytic = moments is not None and i == 0
        if analytic:  # the exact denoiser of N(mu, diag(v)) data, in VP units: no evaluation
            denoised = gaussian_data_x0(x_vp, step.alpha_t, step.sigma_t, *moments)
        else:
            denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        noise = None
        if stepper.coefficients[i].injects_noise:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
        if analytic:
            x_vp, _ = stepper.step_from_x0(i, denoised, x_vp, noise=noise)
        else:
            x_vp, _ = stepper.step(i, denoised, x_vp, noise=noise)
    return x_vp / plan[-1].alpha_s  # back to x0 + s eps (alpha_s = 1 at the clean end)


__all__ = ["DENOISER_VARIANCE_TYPES", "default_noise_sampler", "sample_skipstep"]
