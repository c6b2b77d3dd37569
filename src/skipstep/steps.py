"""Step rules: one reverse step from time ``t`` to the less noisy time ``s`` on any Gaussian path.

Every rule is the posterior of :func:`skipstep.posterior.gaussian_posterior` with a choice of

* ``eta`` -- the stochasticity of the step, in ``[0, 1]``: 1 is the paper's Markovian skipped-step sampler, 0 is
  DDIM, values between are the DDIM family; a per-step *eta schedule* mixes them along the trajectory
  (the paper's "integration with DDIM"), see :func:`skipstep.plan.resolve_eta_schedule`;
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
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from .plan import PlannedStep
from .posterior import Posterior
from .predictions import X0Clipping, predict_x0_eps, split_learned_variance

#: The library's default sampler, chosen by measurement on selection seeds disjoint from the reported ones
#: (docs/results.md, "Choosing the default"): the paper's Markovian skipped-step posterior (eta = 1) with
#: second-order multistep posterior steps. ``eta=1.0, solver_order=1`` is the paper's sampler as published.
DEFAULT_ETA = 1.0
DEFAULT_SOLVER_ORDER = 2

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
            raise ValueError("variance_type 'optimal' needs the model's eps_mse table (see skipstep.optimal_variance)")
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
    step: PlannedStep,
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
            raise ValueError("variance_type 'optimal' needs the model's eps_mse table (see skipstep.optimal_variance)")
        optimal_var = optimal_noise_variance(post, step.alpha_t, step.sigma_t, step.eps_mse,
                                             config.data_half_range)
    std = noise_std(post, config.variance_type, variance_values, optimal_var)
    if isinstance(std, torch.Tensor) or std > 0.0:
        if noise is None:
            raise ValueError(f"{step_name} injects noise (eta={post.eta}) but no noise tensor was given")
        x_s = x_s + std * noise.to(compute_dtype)
    return x_s.to(out_dtype), x0.to(out_dtype)


class TrajectoryStepper:
    """Runs the steps of one plan in order, keeping what a trajectory carries between steps: the multistep
    history of ``x0_hat`` and the index of the last step taken. The functional sampler and both diffusers
    schedulers step through this one object.

    A step whose index does not follow the previous one starts a new trajectory (or enters one mid-way, as
    img2img does): the multistep history is dropped, so the step falls back to first order until it rebuilds.
    """

    def __init__(self, plan: list, config: StepConfig):
        self.plan, self.config = plan, config
        self.history: list[torch.Tensor] = []  # previous x0_hat, most recent first
        self.last_index: int | None = None

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor, generator=None,
             noise: torch.Tensor | None = None, eta: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``index`` of the plan; returns ``(x_s, x0_hat)``. ``noise`` (else drawn from ``generator``) is
        the injected noise; ``eta`` overrides the planned eta for this step."""
        planned = self.plan[index]
        if self.last_index is None or index != self.last_index + 1:
            self.history = []
        if noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if noise is not None and tuple(noise.shape) != tuple(sample.shape):
            raise ValueError(f"variance_noise must have the sample's shape {tuple(sample.shape)}, "
                             f"got {tuple(noise.shape)}")
        post = planned.posterior if eta is None else planned.with_eta(eta)
        if noise is None and needs_noise(post, self.config.variance_type):
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        x_s, x0 = posterior_step(model_output, sample, planned, self.config, noise, self.history, eta=eta)
        if self.config.solver_order > 1:
            self.history = [x0] + self.history[: self.config.solver_order - 2]
        self.last_index = index
        return x_s, x0


__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_SOLVER_ORDER",
    "DIFFUSERS_VARIANCE_TYPES",
    "StepConfig",
    "VARIANCE_TYPES",
    "canonical_variance_type",
    "check_finite",
    "check_model_output",
    "needs_noise",
    "noise_std",
    "optimal_noise_variance",
    "posterior_step",
    "TrajectoryStepper",
]
