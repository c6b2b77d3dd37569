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

from .plan import PlannedStep, check_solver_order
from .posterior import Posterior
from .predictions import X0Clipping, predict_x0, split_learned_variance
from .timesteps import FEW_STEPS_BELOW

#: The library's default sampler, chosen leave-one-model-out on selection seeds of the digits zoo and reported on
#: report seeds (docs/results.md, "The default, leave-one-model-out"): second-order multistep posterior steps, the
#: corrector, the power spacing whose exponent falls with the step count, and an eta that depends on the step
#: count -- deterministic (eta = 0) for fewer than 7 steps, the skipped-step posterior (eta = 1) from 7 steps on
#: (:func:`skipstep.plan.resolve_eta_schedule`, form ``below:N:LOW:HIGH``). ``eta=1.0, solver_order=1,
#: use_corrector=False, timestep_spacing="trailing"`` is the paper's sampler.
DEFAULT_ETA = f"below:{FEW_STEPS_BELOW}:0:1"  # "below:7:0:1": the same split as the default placement's two regimes
#: The default eta of a flow model (:class:`skipstep.SkippedStepFlowScheduler`, :func:`skipstep.sample` on a
#: :class:`~skipstep.paths.RectifiedFlowPath`): deterministic below 7 steps as ``DEFAULT_ETA``, and from 7 on the
#: skipped-step posterior only while the noise outweighs the signal (log-SNR <= 0, i.e. ``sigma >= 1/2``), then
#: deterministic. Chosen on the zoo's two flow models, one fold each, reported on the other (docs/results.md, fifth
#: round); the VP chains keep ``DEFAULT_ETA`` (the fourth round found no log-SNR rule better there).
DEFAULT_FLOW_ETA = f"below:{FEW_STEPS_BELOW}:0:snr-window:-inf:0"
DEFAULT_SOLVER_ORDER = 2
#: the corrector (:class:`TrajectoryStepper`) is on by default: it costs no evaluation
DEFAULT_USE_CORRECTOR = True
#: the default placement: the ``power`` spacing, exponent rule :func:`skipstep.timesteps.spacing_power_for` (``None``)
DEFAULT_TIMESTEP_SPACING = "power"
DEFAULT_SPACING_POWER = None

#: The classifier-free guidance scale from which the default gives way to the strong-guidance members
#: (docs/results.md, "Strong guidance"): the guided ``x0_hat`` moves far between steps and the corrector overshoots.
#: From ``STRONG_GUIDANCE_FEW_STEPS_BELOW`` steps the first-order skipped-step posterior (eta 1, order 1); below, the
#: few-step default (eta 0, order 2) without the corrector, from ``STRONG_GUIDANCE_FEW_STEPS_FROM`` on. A sampler
#: knows the scale only if told (``guidance_scale=`` of the scheduler, :func:`skipstep.sample`, the k-diffusion one).
STRONG_GUIDANCE_FROM = 6.0
STRONG_GUIDANCE_ETA = 1.0
STRONG_GUIDANCE_SOLVER_ORDER = 1
#: below this many steps strong guidance keeps the default's eta (0) and order, corrector off: the members cross
#: between 6 and 7 steps at w = 6 and 8 (selection seeds 100-101 of digits-cfg, docs/results.md)
STRONG_GUIDANCE_FEW_STEPS_BELOW = 7
#: the scale from which the few-step member applies: at w = 5 it wins every cell of NFE 3-6, at w = 4 not (digits-cfg)
STRONG_GUIDANCE_FEW_STEPS_FROM = 5.0
#: under strong guidance the placement's regimes split at 8 steps, not ``FEW_STEPS_BELOW`` (7): its 7 steps keep the
#: few-step grid, better on all three guided zoo models at w = 8 (docs/results.md, thirteenth round)
STRONG_GUIDANCE_PLACEMENT_BELOW = 8

#: Whether the noise of a learned-variance model (2C output channels, ``variance_type="learned_range"``) follows its
#: variance channels by default. It does not: the channels are read and set aside, as DPM-Solver's and UniPC's
#: schedulers do, and the noise is the posterior's own (``small``). Chosen on the zoo's two learned-variance models,
#: one fold each, reported on the other (docs/results.md, fifth round).
DEFAULT_USE_LEARNED_VARIANCE = False

VARIANCE_TYPES = ("small", "large", "learned", "optimal")
# diffusers' names for the same choices
DIFFUSERS_VARIANCE_TYPES = {
    "fixed_small": "small",
    "fixed_small_log": "small",
    "fixed_large": "large",
    "fixed_large_log": "large",
    "learned_range": "learned",
}
#: the ``variance_type`` names of a model with 2C output channels (prediction, then variance)
LEARNED_VARIANCE_TYPES = ("learned_range", "learned")
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


def noise_variance_settings(variance_type: str | None, use_learned_variance: bool) -> tuple[str, bool]:
    """``(variance_type, variance_channels)`` of a :class:`StepConfig` from a user's ``variance_type`` (ours or
    diffusers' name) and ``use_learned_variance``.

    ``variance_type='learned_range'`` (or ``'learned'``) says the model outputs 2C channels, as in diffusers'
    schedulers; the noise follows them only with ``use_learned_variance=True``, else it is the posterior's
    (``small``; the default, ``DEFAULT_USE_LEARNED_VARIANCE``)."""
    if not isinstance(use_learned_variance, bool):
        raise ValueError(f"use_learned_variance must be True or False, got {use_learned_variance!r}")
    canonical = canonical_variance_type(variance_type)
    if canonical != "learned":
        if use_learned_variance:
            raise ValueError("use_learned_variance=True needs variance_type='learned_range' (a model with 2C output "
                             f"channels: the prediction and the variance), got variance_type={variance_type!r}")
        return canonical, False
    return ("learned" if use_learned_variance else "small"), True


# ----------------------------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepConfig:
    """What a step rule needs besides the plan: how to read the model, which noise to inject, which order."""

    prediction_type: str = "epsilon"
    #: the injected noise: ``small`` / ``large`` / ``learned`` / ``optimal``
    variance_type: str = "small"
    clipping: X0Clipping = X0Clipping()
    check_finite: bool = True
    solver_order: int = 1
    #: half-width of the data range, bounding Cov[x0 | x_t] in the optimal variance (1 for data in [-1, 1])
    data_half_range: float = 1.0
    #: redo each step once the model has been evaluated at its end (the plan's corrector weights; no extra NFE)
    use_corrector: bool = False
    #: the model output carries C variance channels after its C prediction channels (a learned-variance model):
    #: they are split off, and drive the noise only with ``variance_type='learned'``
    variance_channels: bool = False

    def __post_init__(self):
        object.__setattr__(self, "solver_order", check_solver_order(self.solver_order))
        if not self.data_half_range > 0:
            raise ValueError(f"data_half_range must be > 0, got {self.data_half_range}")
        if self.variance_type == "learned":
            object.__setattr__(self, "variance_channels", True)


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
    if sample.ndim == 0:
        raise ValueError(f"sample at {step_name} must have a leading batch axis, got a 0-d tensor")
    expected_channels = 2 * sample.shape[1] if variance_type == "learned" else sample.shape[1]
    expected = (sample.shape[0], expected_channels, *sample.shape[2:])
    if tuple(model_output.shape) != expected:
        what = "2C channels (learned variance)" if variance_type == "learned" else "the sample's shape"
        hint = ""
        if variance_type == "learned" and tuple(model_output.shape) == tuple(sample.shape):
            # the C-channel output of a learned-variance model whose variance channels were cut off upstream
            hint = (" (a C-channel output: the variance channels were dropped before step(); diffusers' DiTPipeline "
                    "does that -- use skipstep.pipelines.LearnedVarianceDiTPipeline, which keeps them)")
        raise ValueError(
            f"model output at {step_name} must have {what}: expected {expected}, got {tuple(model_output.shape)}"
            + hint
        )


def check_finite(tensor: torch.Tensor, what: str, step_name: str) -> None:
    # A NaN/inf anywhere makes the sum non-finite: one reduction instead of an elementwise mask (the mask cost more
    # than the whole step on large latents). Only a finite sum overflow can false-alarm; the full check confirms.
    if not math.isfinite(tensor.sum().item()) and not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{what} at {step_name} contains NaN or inf")


@dataclass(frozen=True)
class StepCoefficients:
    """What one step multiplies, for a given eta: ``x_s = coef_xt x_t + sum_j data[j] x0_hat_j + std z``.

    ``data[k - 1]`` holds ``coef_x0 * w_j`` for order ``k`` (:meth:`~skipstep.plan.PlannedStep.x0_weights`);
    ``std`` is ``None`` for the learned variance (it depends on the model output); ``injects_noise`` says whether
    the step needs ``z``. ``corrector`` holds ``coef_x0 * w_j`` of the step's corrector (empty: none).
    """

    posterior: Posterior
    coef_xt: float
    data: tuple[tuple[float, ...], ...]
    std: float | None
    injects_noise: bool
    corrector: tuple[float, ...] = ()


def step_coefficients(step: PlannedStep, config: StepConfig, eta: float | None = None) -> StepCoefficients:
    """The coefficients of ``step`` for the planned eta (``eta=None``) or a call-time override."""
    post = step.posterior if eta is None else step.with_eta(eta)
    orders = min(config.solver_order, step.max_order())
    data = tuple(tuple(post.coef_x0 * w for w in step.x0_weights(k, post.eta)) for k in range(1, orders + 1))
    std = None
    if config.variance_type != "learned":
        optimal_var = None
        if config.variance_type == "optimal" and not post.is_final:
            if step.eps_mse is None:
                raise ValueError("variance_type 'optimal' needs the model's eps_mse table "
                                 "(see skipstep.optimal_variance)")
            optimal_var = optimal_noise_variance(post, step.alpha_t, step.sigma_t, step.eps_mse,
                                                 config.data_half_range)
        std = float(noise_std(post, config.variance_type, None, optimal_var))
    corrector = ()
    if config.use_corrector:
        corrector = tuple(post.coef_x0 * w for w in step.corrector_x0_weights(post.eta))
    return StepCoefficients(post, post.coef_xt, data, std, needs_noise(post, config.variance_type), corrector)


def _step_name(step: PlannedStep) -> str:
    return f"step {step.index} (t={step.t})"


def model_x0(model_output: torch.Tensor, sample: torch.Tensor, step: PlannedStep, config: StepConfig
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x0_hat, x_t, variance_values)`` in the compute dtype (float32; float64 for float64 inputs): the model's
    data prediction at the step's time (clipped as configured), the sample, and the learned-variance channels."""
    layout = "learned" if config.variance_channels else config.variance_type  # what the output must look like
    if model_output.shape != sample.shape and not config.variance_channels or sample.ndim == 0:
        check_model_output(model_output, sample, layout, _step_name(step))
    if model_output.device.type == "meta":
        raise ValueError(f"model_output at {_step_name(step)} is on the meta device (no data): the model's weights "
                         "were not loaded; move the model to a real device ('cpu', 'cuda', ...)")
    if config.check_finite:
        check_finite(model_output, "the model output", _step_name(step))
    compute_dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
    x_t = sample if sample.dtype == compute_dtype else sample.to(compute_dtype)
    if model_output.dtype != compute_dtype:
        model_output = model_output.to(compute_dtype)
    variance_values = None
    if config.variance_channels:
        check_model_output(model_output, sample, "learned", _step_name(step))
        model_output, variance_values = split_learned_variance(model_output, x_t)
        if config.variance_type != "learned":
            variance_values = None  # read and set aside
    x0 = predict_x0(model_output, x_t, step.alpha_t, step.sigma_t, config.prediction_type)
    if config.clipping.active:
        x0 = config.clipping(x0)
    return x0, x_t, variance_values


def _combine(x_t: torch.Tensor, coef_xt: float, data: Sequence[float], x0s: Sequence[torch.Tensor]) -> torch.Tensor:
    """``coef_xt x_t + sum_j data[j] x0s[j]`` (a new tensor; ``x0s`` may be longer than ``data``)."""
    out = x_t * coef_xt
    for c, x0 in zip(data, x0s):
        out.add_(x0, alpha=c)
    return out


def advance(x_t: torch.Tensor, x0: torch.Tensor, step: PlannedStep, coefs: StepCoefficients,
            noise: torch.Tensor | None = None, x0_history: Sequence[torch.Tensor] = (),
            variance_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x_s = coef_xt x_t + sum_j coef_x0 w_j x0_hat_j + std z`` in the compute dtype; returns ``(x_s, std z)``
    (the noise term, or ``None``: a corrector redoes the step with the same noise)."""
    data = coefs.data[min(len(coefs.data), 1 + len(x0_history)) - 1]
    x_s = _combine(x_t, coefs.coef_xt, data, [x0, *x0_history])
    std = coefs.std
    if std is None:  # learned variance: a tensor
        std = noise_std(coefs.posterior, "learned", variance_values)
    noise_term = None
    if coefs.injects_noise and (isinstance(std, torch.Tensor) or std > 0.0):
        if noise is None:
            raise ValueError(f"{_step_name(step)} injects noise (eta={coefs.posterior.eta}) but no noise tensor "
                             "was given")
        if noise.dtype != x_t.dtype:
            noise = noise.to(x_t.dtype)
        noise_term = std * noise
        x_s.add_(noise_term)
    return x_s, noise_term


def apply_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    step: PlannedStep,
    coefs: StepCoefficients,
    config: StepConfig,
    noise: torch.Tensor | None = None,
    x0_history: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_s = coef_xt x_t + sum_j coef_x0 w_j x0_hat_j + std z`` with ``coefs`` of :func:`step_coefficients`;
    returns ``(x_s, x0_hat)`` in the sample's dtype and ``x0_hat`` in the compute dtype (the next step's history).
    Computed in float32 (float64 for float64 inputs)."""
    x0, x_t, variance_values = model_x0(model_output, sample, step, config)
    out_dtype = sample.dtype
    if coefs.posterior.is_final:
        x0_out = x0 if out_dtype == x0.dtype else x0.to(out_dtype)
        return x0_out, x0_out, x0
    x_s, _ = advance(x_t, x0, step, coefs, noise, x0_history, variance_values)
    if out_dtype == x_s.dtype:
        return x_s, x0, x0
    return x_s.to(out_dtype), x0.to(out_dtype), x0


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
    ``eta`` overrides the planned eta for this step. (:class:`TrajectoryStepper` runs the same arithmetic with the
    coefficients computed once per plan.)
    """
    x_s, x0, _ = apply_step(model_output, sample, step, step_coefficients(step, config, eta), config, noise,
                            x0_history)
    return x_s, x0


def check_generator(generator, batch: int) -> None:
    """``None``, a ``torch.Generator`` or a list with one per sample (diffusers' ``randn_tensor`` convention)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(f"a list of generators must hold one torch.Generator per sample: the batch has {batch} "
                             f"samples, got {len(generator)} entries")
        return
    raise ValueError(
        f"generator must be a torch.Generator, a list of them (one per sample) or None, got "
        f"{type(generator).__name__} {generator!r} (step() takes diffusers DDPMScheduler's positional order "
        "(model_output, timestep, sample, generator); pass DDIM's eta by keyword, step(..., eta=x))"
    )


@dataclass
class _PendingCorrection:
    """What a corrector needs from the step it redoes: the state it started from, the noise it injected, its
    coefficients, and the tensor it returned (the correction applies only if that tensor comes back unchanged)."""

    x_t: torch.Tensor
    noise_term: torch.Tensor | None
    coefs: StepCoefficients
    returned: torch.Tensor
    version: int


class TrajectoryStepper:
    """Runs the steps of one plan in order, keeping what a trajectory carries between steps: the multistep
    history of ``x0_hat``, the index of the last step taken, and -- with ``use_corrector`` -- what the corrector
    needs to redo the previous step. The functional sampler and both diffusers schedulers step through this one
    object. The coefficients of every step (for the planned eta) are computed once, when the stepper is built.

    A step whose index does not follow the previous one starts a new trajectory (or enters one mid-way, as
    img2img does): the multistep history is dropped, so the step falls back to first order until it rebuilds.

    The corrector (UniPC's UniC, SA-Solver's corrector): when step ``k`` receives the model output at the state
    step ``k - 1`` returned, step ``k - 1`` is redone with the interpolating weights of its plan
    (``x0_hat`` at its end included) and the same noise, and step ``k`` starts from the corrected state; the model is
    not evaluated again. The correction applies only when the sample passed in is the tensor step ``k - 1``
    returned, unmodified (a pipeline that edits the latents between steps, e.g. inpainting, gets uncorrected steps).
    """

    def __init__(self, plan: list, config: StepConfig, coefficients: Sequence[StepCoefficients] | None = None):
        """``coefficients``: those of an earlier stepper over the same plan and config (a scheduler that
        re-plans the same timesteps reuses them), else computed here."""
        self.plan, self.config = plan, config
        self.history: list[torch.Tensor] = []  # previous x0_hat (compute dtype), most recent first
        self.last_index: int | None = None
        self._pending: _PendingCorrection | None = None
        # the predictor uses solver_order - 1 earlier x0_hat; the corrector one more (its interval's start)
        self._history_length = config.solver_order - 1 + (1 if config.use_corrector else 0)
        if coefficients is None:
            coefficients = [step_coefficients(step, config) for step in plan]
        elif len(coefficients) != len(plan):
            raise ValueError(f"coefficients must have one entry per planned step ({len(plan)}), "
                             f"got {len(coefficients)}")
        self.coefficients = list(coefficients)

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor, generator=None,
             noise: torch.Tensor | None = None, eta: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``index`` of the plan; returns ``(x_s, x0_hat)``. ``noise`` (else drawn from ``generator``) is
        the injected noise; ``eta`` overrides the planned eta for this step."""
        planned, coefs, noise = self._prepare(index, sample, generator, noise, eta)
        x0, x_t, variance_values = model_x0(model_output, sample, planned, self.config)
        return self._finish(index, x0, x_t, variance_values, sample, coefs, noise)

    def step_from_x0(self, index: int, x0_hat: torch.Tensor, sample: torch.Tensor, generator=None,
                     noise: torch.Tensor | None = None, eta: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``index`` with a data prediction given directly instead of a model output -- the closed form of the
        analytic first step (:func:`skipstep.gaussian_data.gaussian_data_x0`). It is treated as a model's
        ``x0_hat`` would be: clipped as configured, checked finite, kept in the multistep history, corrected by the
        next evaluation. A learned variance (``variance_type='learned'``, which needs the model's variance
        channels) takes the posterior's ``small`` variance on this step."""
        planned, coefs, noise = self._prepare(index, sample, generator, noise, eta)
        if tuple(x0_hat.shape) != tuple(sample.shape):
            raise ValueError(f"x0_hat at {_step_name(planned)} must have the sample's shape {tuple(sample.shape)}, "
                             f"got {tuple(x0_hat.shape)}")
        if self.config.check_finite:
            check_finite(x0_hat, "the data prediction", _step_name(planned))
        compute_dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        x_t = sample if sample.dtype == compute_dtype else sample.to(compute_dtype)
        x0 = x0_hat if x0_hat.dtype == compute_dtype else x0_hat.to(compute_dtype)
        if self.config.clipping.active:
            x0 = self.config.clipping(x0)
        variance_values = -torch.ones_like(x_t) if self.config.variance_type == "learned" else None  # 'small'
        return self._finish(index, x0, x_t, variance_values, sample, coefs, noise)

    def _prepare(self, index: int, sample: torch.Tensor, generator, noise: torch.Tensor | None,
                 eta: float | None) -> tuple[PlannedStep, StepCoefficients, torch.Tensor | None]:
        """The step's plan entry, its coefficients and its noise (drawn here when it injects some)."""
        planned = self.plan[index]
        follows = self.last_index is not None and index == self.last_index + 1
        if not follows:
            self.history, self._pending = [], None
        if noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if noise.shape != sample.shape:
                raise ValueError(f"variance_noise must have the sample's shape {tuple(sample.shape)}, "
                                 f"got {tuple(noise.shape)}")
        coefs = self.coefficients[index] if eta is None else step_coefficients(planned, self.config, eta)
        if noise is None and coefs.injects_noise:
            if sample.ndim == 0:
                raise ValueError(f"sample at {_step_name(planned)} must have a leading batch axis, got a 0-d tensor")
            check_generator(generator, sample.shape[0])
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        return planned, coefs, noise

    def _finish(self, index: int, x0: torch.Tensor, x_t: torch.Tensor, variance_values: torch.Tensor | None,
                sample: torch.Tensor, coefs: StepCoefficients, noise: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Correct the previous step with ``x0`` (if it is pending), take this one, update the history."""
        planned = self.plan[index]
        pending, self._pending = self._pending, None
        if pending is not None and pending.returned is sample and sample._version == pending.version:
            x_t = _combine(pending.x_t, pending.coefs.coef_xt, pending.coefs.corrector, [x0, *self.history])
            if pending.noise_term is not None:
                x_t.add_(pending.noise_term)
        out_dtype = sample.dtype
        if coefs.posterior.is_final:
            x_s = x0_out = x0 if out_dtype == x0.dtype else x0.to(out_dtype)
        else:
            x_s, noise_term = advance(x_t, x0, planned, coefs, noise, self.history, variance_values)
            x0_out = x0
            if out_dtype != x_s.dtype:
                x_s, x0_out = x_s.to(out_dtype), x0.to(out_dtype)
            if coefs.corrector:
                self._pending = _PendingCorrection(x_t, noise_term, coefs, x_s, x_s._version)
        if self._history_length > 0:
            self.history = [x0] + self.history[: self._history_length - 1]
        self.last_index = index
        return x_s, x0_out


def check_guidance_hint(guidance_scale) -> float | None:
    """``None`` (guidance unknown or off) or a finite number ``w >= 0``: the classifier-free guidance scale
    ``eps_u + w (eps_c - eps_u)`` the sampler will run at."""
    if guidance_scale is None:
        return None
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
            math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be None (unknown) or a finite number >= 0 (the classifier-free "
                         f"guidance scale w of eps_u + w (eps_c - eps_u)), got {guidance_scale!r}")
    return float(guidance_scale)


def placement_split(guidance_scale) -> int:
    """``few_steps_below`` of the default placement (:func:`skipstep.timesteps.spacing_power_for`) at guidance scale
    ``guidance_scale``: ``STRONG_GUIDANCE_PLACEMENT_BELOW`` from ``STRONG_GUIDANCE_FROM`` on, else ``FEW_STEPS_BELOW``."""
    w = check_guidance_hint(guidance_scale)
    return STRONG_GUIDANCE_PLACEMENT_BELOW if w is not None and w >= STRONG_GUIDANCE_FROM else FEW_STEPS_BELOW


def settings_for_guidance(guidance_scale, eta, solver_order: int, use_corrector: bool = DEFAULT_USE_CORRECTOR,
                          num_steps: int | None = None) -> tuple:
    """The ``(eta, solver_order, use_corrector)`` a sampler of ``num_steps`` steps uses at classifier-free guidance
    scale ``guidance_scale`` (``None``: unknown, nothing changes). Each setting left at its default (``DEFAULT_ETA``
    or ``DEFAULT_FLOW_ETA``, ``DEFAULT_SOLVER_ORDER``, ``DEFAULT_USE_CORRECTOR``) becomes the strong-guidance
    member's:

    * ``num_steps < STRONG_GUIDANCE_FEW_STEPS_BELOW`` and ``w >= STRONG_GUIDANCE_FEW_STEPS_FROM``: eta and order
      stay (the default's eta is 0 there), the corrector is off;
    * otherwise (and for ``num_steps=None``, unknown) and ``w >= STRONG_GUIDANCE_FROM``: ``eta = 1`` and order 1,
      the corrector unchanged;
    * below those scales nothing changes.

    An explicit choice is kept (an explicit ``solver_order=2`` or ``use_corrector=True`` cannot be told from the
    default and counts as left at it)."""
    w = check_guidance_hint(guidance_scale)
    if num_steps is not None and num_steps < STRONG_GUIDANCE_FEW_STEPS_BELOW:
        if w is None or w < STRONG_GUIDANCE_FEW_STEPS_FROM:
            return eta, solver_order, use_corrector
        return eta, solver_order, False  # the corrector is on by default; off, it stays off
    if w is None or w < STRONG_GUIDANCE_FROM:
        return eta, solver_order, use_corrector
    if isinstance(eta, str) and eta in (DEFAULT_ETA, DEFAULT_FLOW_ETA):
        eta = STRONG_GUIDANCE_ETA
    if solver_order == DEFAULT_SOLVER_ORDER:
        solver_order = STRONG_GUIDANCE_SOLVER_ORDER
    return eta, solver_order, use_corrector


__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_FLOW_ETA",
    "DEFAULT_SOLVER_ORDER",
    "DEFAULT_SPACING_POWER",
    "DEFAULT_TIMESTEP_SPACING",
    "DEFAULT_USE_CORRECTOR",
    "DEFAULT_USE_LEARNED_VARIANCE",
    "DIFFUSERS_VARIANCE_TYPES",
    "STRONG_GUIDANCE_ETA",
    "STRONG_GUIDANCE_FEW_STEPS_BELOW",
    "STRONG_GUIDANCE_FEW_STEPS_FROM",
    "STRONG_GUIDANCE_FROM",
    "STRONG_GUIDANCE_PLACEMENT_BELOW",
    "STRONG_GUIDANCE_SOLVER_ORDER",
    "StepCoefficients",
    "StepConfig",
    "VARIANCE_TYPES",
    "advance",
    "apply_step",
    "LEARNED_VARIANCE_TYPES",
    "canonical_variance_type",
    "noise_variance_settings",
    "check_finite",
    "check_guidance_hint",
    "check_generator",
    "check_model_output",
    "model_x0",
    "needs_noise",
    "noise_std",
    "optimal_noise_variance",
    "posterior_step",
    "placement_split",
    "settings_for_guidance",
    "step_coefficients",
    "TrajectoryStepper",
]
