"""Step rules: one reverse step from time ``t`` to the less noisy time ``s`` on any Gaussian path.

Every rule is the posterior of :func:`skipstep.posterior.gaussian_posterior` with a choice of

* ``eta`` -- the stochasticity of the step, in ``[0, 1]``: 1 is the paper's Markovian skipped-step sampler, 0 is
  DDIM, values between are the DDIM family; a per-step *eta schedule* mixes them along the trajectory
  (the paper's "integration with DDIM"), see :func:`resolve_eta_schedule`;
* the injected noise variance (``variance_type``), scaled by ``eta^2``:

  - ``small``: the exact posterior variance ``sigma_s^2 v / sigma_t^2`` (DDPM ``fixed_small``);
  - ``large``: the jump's ``v = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2`` (DDPM ``fixed_large``);
  - ``learned``: ``exp(f log v + (1 - f) log var_post)`` with ``f = (out + 1) / 2`` read from the model's extra
    channels (ADM / IDDPM / DiT ``learned_range``), interpolating on the *skipped* chain's ``v`` and ``var_post``;
  - ``optimal``: Analytic-DPM's KL-optimal variance from the model's ``E||eps - eps_hat||^2`` table (not scaled
    by ``eta^2``: it already contains ``lambda^2 = eta^2 var_post``), see :func:`optimal_noise_variance`.

  The mean is always the DDIM-family mean with ``lambda^2 = eta^2 var_post``, so at ``eta = 1`` it is the exact
  posterior mean whatever the noise variance, as in DDPM/IDDPM.

The final step (to the clean time) returns ``x0_hat`` and injects no noise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .posterior import Posterior
from .predictions import X0Clipping, predict_x0_eps, split_learned_variance

if TYPE_CHECKING:
    from .plan import PlannedStep

VARIANCE_TYPES = ("small", "large", "learned", "optimal")
# diffusers' names for the same choices
DIFFUSERS_VARIANCE_TYPES = {
    "fixed_small": "small",
    "fixed_small_log": "small",
    "fixed_large": "large",
    "fixed_large_log": "large",
    "learned_range": "learned",
}
# the smallest posterior variance taken to a log, as in diffusers (the final step's is exactly 0)
_MIN_LOG_VARIANCE = 1e-20


def canonical_variance_type(variance_type: str | None) -> str:
    """Map our names and diffusers' names onto ``small`` / ``large`` / ``learned``."""
    if variance_type is None:
        return "small"
    if variance_type in VARIANCE_TYPES:
        return variance_type
    if variance_type in DIFFUSERS_VARIANCE_TYPES:
        return DIFFUSERS_VARIANCE_TYPES[variance_type]
    allowed = VARIANCE_TYPES + tuple(DIFFUSERS_VARIANCE_TYPES)
    raise ValueError(
        f"variance_type must be one of {allowed}, got {variance_type!r} (diffusers' 'learned' -- a variance "
        "predicted directly for the full chain -- cannot be transferred to a skipped chain; 'learned_range' can)"
    )


# ----------------------------------------------------------------------------------------------------------------
# eta schedules
# ----------------------------------------------------------------------------------------------------------------
_SWITCH = re.compile(r"^(skip-ddim|ddim-skip):([0-9]*\.?[0-9]+)$")
_LINEAR = re.compile(r"^linear:([0-9]*\.?[0-9]+):([0-9]*\.?[0-9]+)$")
ETA_SCHEDULE_FORMS = (
    "a number in [0, 1] (constant)",
    "a list of numbers in [0, 1], one per step",
    "'linear:A:B' (eta ramps from A at the first step to B at the last)",
    "'skip-ddim:K' (skipped-step eta=1 for the first K steps, then DDIM eta=0; K an integer, or a fraction in (0,1) "
    "of the steps)",
    "'ddim-skip:K' (DDIM for the first K steps, then skipped-step)",
)


def _check_eta(value: float, where: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"eta must lie in [0, 1]; got {value} {where}")
    return value


def _switch_index(k_text: str, num_steps: int) -> int:
    k = float(k_text)
    if "." in k_text:
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"a fractional eta switch point must lie in [0, 1], got {k}")
        return int(round(k * num_steps))
    if k > num_steps:
        raise ValueError(f"eta switch point K={int(k)} exceeds the number of steps ({num_steps})")
    return int(k)


def resolve_eta_schedule(eta, num_steps: int) -> list[float]:
    """Per-step eta values (first step first) from any accepted form, see ``ETA_SCHEDULE_FORMS``.

    The last step goes to the clean data and injects no noise whatever its eta; it is still listed.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if isinstance(eta, bool):
        raise ValueError("eta must be a number, a list of numbers or a schedule string, not a bool")
    if isinstance(eta, (int, float)):
        return [_check_eta(eta, "(constant eta)")] * num_steps
    if isinstance(eta, str):
        text = eta.strip().replace(" ", "")
        try:
            return [_check_eta(float(text), "(constant eta)")] * num_steps
        except ValueError as exc:
            if "eta must lie" in str(exc):
                raise
        m = _LINEAR.match(text)
        if m:
            start, end = _check_eta(m.group(1), "at the start of 'linear'"), _check_eta(m.group(2), "at its end")
            if num_steps == 1:
                return [start]
            return [start + (end - start) * i / (num_steps - 1) for i in range(num_steps)]
        m = _SWITCH.match(text)
        if m:
            k = _switch_index(m.group(2), num_steps)
            first, then = (1.0, 0.0) if m.group(1) == "skip-ddim" else (0.0, 1.0)
            return [first] * k + [then] * (num_steps - k)
        raise ValueError(f"unknown eta schedule {eta!r}; accepted forms: " + "; ".join(ETA_SCHEDULE_FORMS))
    if isinstance(eta, torch.Tensor):
        eta = eta.detach().cpu().flatten().tolist()
    if isinstance(eta, Sequence):
        if len(eta) != num_steps:
            raise ValueError(f"a per-step eta schedule must have one value per step: {num_steps} values, got {len(eta)}")
        return [_check_eta(v, f"at step {i}") for i, v in enumerate(eta)]
    raise ValueError("eta must be one of: " + "; ".join(ETA_SCHEDULE_FORMS) + f"; got {type(eta).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepConfig:
    """What a step rule needs besides the plan: how to read the model, which noise to inject, which order."""

    prediction_type: str = "epsilon"
    variance_type: str = "small"
    clipping: X0Clipping = X0Clipping()
    check_finite: bool = True
    solver_order: int = 1
    #: half-width of the data range, bounding Cov[x0 | x_t] in the optimal variance (1 for data in [-1, 1])
    data_half_range: float = 1.0

    def __post_init__(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order!r}")
        if not self.data_half_range > 0:
            raise ValueError(f"data_half_range must be > 0, got {self.data_half_range}")


def needs_noise(post: Posterior, variance_type: str = "small") -> bool:
    """Whether a step injects noise (the optimal variance injects some even at eta = 0: Analytic-DDIM)."""
    if post.is_final:
        return False
    return post.eta > 0.0 or variance_type == "optimal"


def optimal_noise_variance(post: Posterior, alpha_t: float, sigma_t: float, eps_mse: float,
                           data_half_range: float = 1.0) -> float:
    """KL-optimal isotropic variance of the family step with ``lambda^2 = eta^2 var_post`` (Analytic-DPM):

        sigma*^2 = lambda^2 + coef_x0^2 * E||x_0 - x0_hat||^2 / d,
        E||x_0 - x0_hat||^2 / d = (sigma_t^2 / alpha_t^2) * M_t,     M_t = E||eps - eps_hat||^2 / d,

    with the error term clipped to ``[0, min(sigma_t^2 / alpha_t^2, R^2)]`` (R: the data's half-range), the range
    in which the true value of a perfect model must lie (Bao et al. 2022, bounds of Thm. 2).
    """
    if alpha_t == 0.0:
        error = data_half_range**2
    else:
        ratio = sigma_t * sigma_t / (alpha_t * alpha_t)
        error = min(max(ratio * eps_mse, 0.0), ratio, data_half_range**2)
    return post.noise_var + post.coef_x0 * post.coef_x0 * error


def noise_std(post: Posterior, variance_type: str, variance_values: torch.Tensor | None = None,
              optimal_var: float | None = None):
    """Standard deviation of the injected noise: a float, or a tensor for ``learned`` variance."""
    if post.is_final:
        return 0.0
    if variance_type == "optimal":
        if optimal_var is None:
            raise ValueError("variance_type 'optimal' needs the model's eps_mse table (see skipstep.analytic)")
        return math.sqrt(optimal_var)
    if post.eta == 0.0:
        return 0.0
    if variance_type == "small":
        return math.sqrt(post.noise_var)
    if variance_type == "large":
        return post.eta * math.sqrt(post.jump_variance)
    if variance_type == "learned":
        if variance_values is None:
            raise ValueError("variance_type 'learned' needs a model with 2C output channels")
        frac = (variance_values + 1.0) / 2.0
        log_small = math.log(max(post.posterior_variance, _MIN_LOG_VARIANCE))
        log_large = math.log(max(post.jump_variance, _MIN_LOG_VARIANCE))
        return post.eta * torch.exp(0.5 * (frac * log_large + (1.0 - frac) * log_small))
    raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")


def check_model_output(model_output: torch.Tensor, sample: torch.Tensor, variance_type: str, step_name: str):
    """Shape checks with messages naming the step."""
    expected_channels = 2 * sample.shape[1] if variance_type == "learned" else sample.shape[1]
    expected = (sample.shape[0], expected_channels, *sample.shape[2:])
    if tuple(model_output.shape) != expected:
        what = "2C channels (learned variance)" if variance_type == "learned" else "the sample's shape"
        raise ValueError(
            f"model output at {step_name} must have {what}: expected {expected}, got {tuple(model_output.shape)}"
        )


def check_finite(tensor: torch.Tensor, what: str, step_name: str) -> None:
    # A NaN/inf anywhere makes the sum non-finite: one reduction instead of an elementwise mask (the mask cost more
    # than the whole step on large latents). Only a finite sum overflow can false-alarm; the full check confirms.
    if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{what} at {step_name} contains NaN or inf")


def posterior_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    step: "PlannedStep",
    config: StepConfig,
    noise: torch.Tensor | None = None,
    x0_history: Sequence[torch.Tensor] = (),
    eta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step ``x_t -> x_s``; returns ``(x_s, x0_hat)`` in the sample's dtype.

    ``x_s = coef_xt x_t + coef_x0 D + std * noise`` (see :class:`~skipstep.posterior.Posterior`) with ``D`` the
    model's ``x0_hat`` (order 1) or its multistep extrapolation ``D = sum_j w_j x0_hat_j`` over ``x0_history``
    (the previous steps' ``x0_hat``, most recent first; :func:`~skipstep.posterior.multistep_x0_weights`).
    Computed in float32 (float64 for float64 inputs). ``noise`` is required when the step injects noise;
    ``eta`` overrides the planned eta for this step.
    """
    step_name = f"step {step.index} (t={step.t})"
    check_model_output(model_output, sample, config.variance_type, step_name)
    if config.check_finite:
        check_finite(model_output, "the model output", step_name)
    post = step.posterior if eta is None else step.with_eta(eta)
    out_dtype = sample.dtype
    compute_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    x_t = sample.to(compute_dtype)
    model_output = model_output.to(compute_dtype)
    variance_values = None
    if config.variance_type == "learned":
        model_output, variance_values = split_learned_variance(model_output, x_t)
    x0, _ = predict_x0_eps(model_output, x_t, step.alpha_t, step.sigma_t, config.prediction_type)
    x0 = config.clipping(x0)
    if post.is_final:
        return x0.to(out_dtype), x0.to(out_dtype)
    weights = step.x0_weights(min(config.solver_order, 1 + len(x0_history)), post.eta)
    data = x0
    if len(weights) > 1:
        data = weights[0] * x0
        for w, previous in zip(weights[1:], x0_history):
            data = data + w * previous.to(compute_dtype)
    x_s = post.coef_xt * x_t + post.coef_x0 * data
    optimal_var = None
    if config.variance_type == "optimal":
        if step.eps_mse is None:
            raise ValueError("variance_type 'optimal' needs the model's eps_mse table (see skipstep.analytic)")
        optimal_var = optimal_noise_variance(post, step.alpha_t, step.sigma_t, step.eps_mse,
                                             config.data_half_range)
    std = noise_std(post, config.variance_type, variance_values, optimal_var)
    if isinstance(std, torch.Tensor) or std > 0.0:
        if noise is None:
            raise ValueError(f"{step_name} injects noise (eta={post.eta}) but no noise tensor was given")
        x_s = x_s + std * noise.to(compute_dtype)
    return x_s.to(out_dtype), x0.to(out_dtype)


__all__ = [
    "DIFFUSERS_VARIANCE_TYPES",
    "ETA_SCHEDULE_FORMS",
    "StepConfig",
    "VARIANCE_TYPES",
    "canonical_variance_type",
    "check_finite",
    "check_model_output",
    "needs_noise",
    "noise_std",
    "optimal_noise_variance",
    "posterior_step",
    "resolve_eta_schedule",
]
