"""diffusers-compatible schedulers on top of the skipstep core (no math of their own).

``SkippedStepScheduler`` follows the contract of diffusers' DDPM/DDIM/DPM-Solver schedulers, so it can replace
``pipe.scheduler`` in any pipeline that works with them::

    pipe.scheduler = SkippedStepScheduler.from_config(pipe.scheduler.config, eta=1.0)

``from_config`` looks at every key of the incoming config (:mod:`skipstep.diffusers_config`): it honours diffusers'
keys with diffusers' meaning (the training chain, spacings of the replaced class, Karras/exponential/beta/Lu sigmas,
``final_sigmas_type``, ``lower_order_final``, ``solver_type``, ``lambda_min_clipped``, ...), maps, refuses, or logs
one warning for keys that describe the replaced scheduler's own algorithm. docs/drop_in.md lists every intended
difference from the scheduler being replaced.

How ``eta`` is chosen. The configured ``eta`` (constant, per-step list or schedule string) is authoritative.
``step()`` accepts ``eta=`` only through ``**kwargs``, which diffusers pipelines do not inspect: pipelines such as
``StableDiffusionPipeline`` pass their own call-time ``eta`` (default 0.0) only to schedulers whose ``step``
signature names ``eta``, so they cannot silently turn the configured skipped-step sampler into DDIM. A direct
caller may still pass ``step(..., eta=x)`` to override the schedule for that one step.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace

import diffusers
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .analytic_first_step import AnalyticFirstStepMixin
from .diffusers_config import DROP_ZERO_GRID_SCHEDULERS, TRUNCATES_KARRAS_ON_COSINE, translate_config
from .paths import DiscreteVPPath, check_num_train_timesteps, flow_config_reason, make_betas, trained_alphas_cumprod
from .plan import (DEFAULT_EXTRAPOLATION_GAIN, PlannedStep, check_extrapolation_gain, check_solver_type, plan_steps,
                   resolve_eta_schedule, resolve_extrapolation_gain)
from .predictions import X0Clipping, check_prediction_type
from .steps import (DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_SPACING_POWER, DEFAULT_TIMESTEP_SPACING,
                    DEFAULT_USE_CORRECTOR, DEFAULT_USE_LEARNED_VARIANCE, StepConfig, TrajectoryStepper,
                    check_generator, check_guidance_hint, noise_variance_settings, placement_split,
                    settings_for_guidance)
from .timesteps import (SPACINGS, analytic_first_step_grid, check_num_steps, check_spacing_power, select_timesteps,
                        sigma_spaced_timesteps, timesteps_from_sigmas, validate_timesteps, vp_sigmas)
from .tuned_schedules import scheduler_settings_from_tuned_schedule

_STEP_KWARGS = ("eta", "variance_noise", "use_clipped_model_output")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: config flag -> sigma spacing of :func:`skipstep.timesteps.sigma_spaced_timesteps`
SIGMA_SPACING_FLAGS = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential",
                       "use_beta_sigmas": "beta", "use_lu_lambdas": "lu"}


@dataclass
class SkippedStepSchedulerOutput(BaseOutput):
    """``prev_sample``: ``x_s``, the next model input; ``pred_original_sample``: the (clipped) ``x0_hat``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _schedule_text(ts: torch.Tensor) -> str:
    values = ts.tolist()
    if len(values) <= 12:
        return str(values)
    return f"[{', '.join(map(str, values[:6]))}, ..., {', '.join(map(str, values[-3:]))}] ({len(values)} timesteps)"


def _check_options(c) -> str | None:
    """Validate the keys added for diffusers' options; returns the sigma spacing in use (or None)."""
    if c.final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES} ('zero': the last step goes to clean "
                         f"data; 'sigma_min': it stops at abar_0, as DPM-Solver's), got {c.final_sigmas_type!r}")
    for key in ("lower_order_final", "euler_at_final", "check_finite", "clip_sample", "thresholding",
                "rescale_betas_zero_snr", "use_corrector", *SIGMA_SPACING_FLAGS):
        if not isinstance(getattr(c, key), (bool, np.bool_)):
            raise ValueError(f"{key} must be True or False, got {getattr(c, key)!r}")
    lmc = c.lambda_min_clipped
    if isinstance(lmc, bool) or not isinstance(lmc, (int, float)) or math.isnan(lmc):
        raise ValueError(f"lambda_min_clipped must be a number (-inf: no clipping), got {lmc!r}")
    chosen = [key for key in SIGMA_SPACING_FLAGS if getattr(c, key)]
    if len(chosen) > 1:
        raise ValueError(f"at most one of {list(SIGMA_SPACING_FLAGS)} may be True, got {chosen}")
    for key in ("sigma_min", "sigma_max"):
        v = getattr(c, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
            raise ValueError(f"{key} must be None (the chain's own) or a positive number, got {v!r}")
    if c.replaced_scheduler is not None and not (
        isinstance(c.replaced_scheduler, str) and hasattr(diffusers, c.replaced_scheduler)
    ):
        raise ValueError(f"replaced_scheduler must name a diffusers scheduler class (e.g. "
                         f"'DPMSolverMultistepScheduler') or be None, got {c.replaced_scheduler!r}")
    if c.tuned_schedule is not None and (chosen or lmc != -math.inf):
        raise ValueError("a tuned schedule fixes the timesteps: it cannot be combined with "
                         f"{chosen[0] if chosen else 'lambda_min_clipped'}")
    return SIGMA_SPACING_FLAGS[chosen[0]] if chosen else None


class SkippedStepScheduler(AnalyticFirstStepMixin, SchedulerMixin, ConfigMixin):
    """Skipped-step posterior sampling (Xu 2025) and its DDIM family as a diffusers scheduler.

    Each step draws ``x_s ~ q(x_s | x_t, x0_hat)``, the exact DDPM posterior across the skipped steps
    (``eta = 1``), or its DDIM-family relaxation (``0 <= eta < 1``; ``eta = 0`` is DDIM). With ``eta = 1``,
    ``solver_order=1`` and ``variance_type="fixed_small"`` it equals ``DDPMScheduler`` run with fewer steps
    ("respacing"); with ``eta = 0, solver_order=1`` it equals ``DDIMScheduler``; with ``solver_order=2`` and
    ``solver_type="midpoint"`` it equals DPM-Solver++(2M) (``eta=0``) and SDE-DPM-Solver++(2M) (``eta=1``).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr:
            the model's training chain, as in diffusers (``trained_betas`` of any length define the chain).
        prediction_type: ``epsilon`` | ``v_prediction`` | ``sample``.
        variance_type: ``fixed_small``/``small`` (posterior variance), ``fixed_large``/``large`` (the jump's
            beta), ``learned_range``/``learned`` (ADM/DiT models with 2C output channels: the variance channels are
            split off; see ``use_learned_variance``), ``optimal`` (Analytic-DPM; needs ``eps_mse``); ``None``
            (DPM-Solver's) = small.
        use_learned_variance: with ``variance_type="learned_range"``, inject the model's learned variance
            (interpolated on the skipped chain) instead of the posterior's. Default ``False``
            (``skipstep.DEFAULT_USE_LEARNED_VARIANCE``): the channels are read and set aside, as DPM-Solver's and
            UniPC's schedulers do -- measured better with the default's multistep steps (docs/results.md, fifth
            round). A tuned schedule fitted with the learned variance turns it on.
        eta: stochasticity in [0, 1]: a number, a list with one value per step, or a schedule string
            (``"linear:1:0"``, ``"skip-ddim:K"``, ``"ddim-skip:K"``, ``"window"``, ``"snr-window:L:H"``,
            ``"below:N:LOW:HIGH"``; see
            :func:`skipstep.plan.resolve_eta_schedule`). The default ``skipstep.DEFAULT_ETA = "below:7:0:1"``:
            deterministic for fewer than 7 steps, the skipped-step posterior from 7 on.
        solver_order: the integer 1 (the posterior step), 2 or 3 (multistep posterior steps over the previous
            ``x0_hat``; still one model evaluation per step, so the class attribute ``order`` stays 1).
        solver_type: ``heun`` (exact exponential-integrator weights) or ``midpoint`` (DPM-Solver++'s midpoint form
            of the order-2 steps; order-3 steps use the exact weights under both).
        guidance_scale: the classifier-free guidance scale ``w`` the pipeline samples at, if you know it (the
            scheduler never sees it otherwise); ``None`` (the default): unknown, the unguided rule. From
            ``skipstep.STRONG_GUIDANCE_FROM = 6`` on, settings left at their defaults become the strong-guidance
            member's (:func:`skipstep.steps.settings_for_guidance`): from 7 steps on ``eta`` and ``solver_order``
            are ``1.0`` and ``1``; below 7 steps the corrector is off, already from w = 5
            (``STRONG_GUIDANCE_FEW_STEPS_FROM``) -- the corrector and the order-2 steps overshoot under strong
            guidance. The config keeps what was passed; ``step_config`` and ``effective_eta`` hold what is
            used (for the step count of the last ``set_timesteps``; before it, the rule from 7 steps on).
        use_corrector: redo each step once the model has been evaluated at its end, interpolating ``x0_hat``
            through one more node (the new evaluation) with the same noise: the order rises by one at no extra
            evaluation (UniPC's UniC / SA-Solver's corrector for the posterior family; see
            :class:`skipstep.steps.TrajectoryStepper`).
        extrapolation_gain: ``G`` of the order-2 steps, ``D = x0_0 + G w_1 (x0_1 - x0_0)`` (1: the exact step of
            the line through the last two ``x0_hat``); ``None`` (the default): ``1 + (3/n)^3`` below 7 steps
            (2 at 3 steps, 1.42 at 4), 1 from 7 on and under a known guidance scale ``w > 1``
            (:func:`skipstep.plan.resolve_extrapolation_gain`).
        lower_order_final: DPM-Solver's rule: with fewer than 15 steps the last step is first order and the one
            before it at most second order. euler_at_final: the last step is first order. (A last step to clean
            data is always first order.)
        final_sigmas_type: ``zero`` (the last step goes to clean data and returns ``x0_hat``) or ``sigma_min``
            (it stops at ``abar_0``, DPM-Solver's ``sigma_min``, DDIM's ``set_alpha_to_one=False``).
        timestep_spacing: ``trailing`` | ``leading`` | ``linspace`` | ``quadratic`` | ``log_snr`` | ``power``;
            linspace and leading use the formulas of ``replaced_scheduler``'s family (DDIM/DDPM's, or the DPM-Solver
            family's). spacing_power: the exponent ``p >= 1`` of the ``power`` spacing,
            ``round(T n/(n+1) (1 - i/n)^p)`` (:func:`skipstep.timesteps.power_grid`); ``None`` (the default) is
            ``p = 1 + 4/n`` below 7 steps, at the log-SNRs that grid has on DDPM's linear chain
            (:func:`skipstep.timesteps.snr_matched_power_grid`; unchanged on a linear chain), and ``1 + 2/n`` from 7
            (told a strong guidance scale, from 8: ``skipstep.steps.STRONG_GUIDANCE_PLACEMENT_BELOW``).
        steps_offset: added to ``leading`` timesteps, as in diffusers. lambda_min_clipped: DPM-Solver's clipping of
            the noisiest timesteps by half-log-SNR, applied before the spacing (default ``-inf``: none).
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas, sigma_min, sigma_max: sigma
            spacings as DPMSolverMultistepScheduler computes them, converted to integer timesteps
            (:func:`skipstep.timesteps.sigma_spaced_timesteps`).
        replaced_scheduler: the diffusers class this config came from (set by ``from_config``); decides the
            linspace/leading grid formulas.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value: bounds on
            ``x0_hat``, exactly as in diffusers.
        check_finite: raise (naming the step) when the model output holds NaN or inf.
        eps_mse, data_half_range: the optimal variance's table (:func:`skipstep.optimal_variance.estimate_eps_mse`)
            and the data's half-range (1.0 for data in [-1, 1]).
        tuned_schedule: a tuned schedule (:class:`skipstep.tuned_schedules.TunedSchedule`, its dict or a file path;
            stored as its dict). It fixes the timesteps, ``eta``, ``solver_order``, ``variance_type``,
            ``use_corrector`` and ``extrapolation_gain`` (as the schedule was tuned).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, keep_grid: bool = False, **kwargs):
        """As diffusers' ``from_config``, but every key of a foreign config is honoured, mapped, refused or warned
        about once (:func:`skipstep.diffusers_config.translate_config`), and a flow-matching config (``shift``,
        ``use_flow_sigmas=True``, ``prediction_type='flow_prediction'``) is refused with the reason; use
        :class:`skipstep.SkippedStepFlowScheduler` for those. The replaced scheduler's grid (``timestep_spacing``,
        ``steps_offset``) is not carried -- skipstep's step rule applies -- unless ``keep_grid=True`` or the
        spacing is passed as a keyword."""
        if not isinstance(keep_grid, bool):
            raise ValueError(f"keep_grid must be True or False, got {keep_grid!r}")
        if isinstance(config, dict):
            reason = flow_config_reason({**config, **kwargs})
            if reason is not None:
                raise ValueError(
                    f"SkippedStepScheduler needs a DDPM-chain (variance-preserving) scheduler config, but the config "
                    f"of {config.get('_class_name', 'this scheduler')} describes a flow-matching model: {reason}. "
                    "Use skipstep.SkippedStepFlowScheduler for flow-matching models (SD3, Flux, Wan, LTX, ...)."
                )
            own = set(inspect.signature(cls.__init__).parameters) - {"self"}
            passthrough = {k: kwargs.pop(k) for k in list(kwargs) if k == "dtype" or k.startswith("_")}
            config, kwargs = translate_config(config, kwargs, own, cls.__name__, keep_grid=keep_grid)
            kwargs.update(passthrough)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        variance_type: str = "fixed_small",
        eta=DEFAULT_ETA,
        timestep_spacing: str = DEFAULT_TIMESTEP_SPACING,
        steps_offset: int = 0,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        rescale_betas_zero_snr: bool = False,
        check_finite: bool = True,
        solver_order: int = DEFAULT_SOLVER_ORDER,
        eps_mse=None,
        data_half_range: float = 1.0,
        tuned_schedule=None,
        solver_type: str = "heun",
        use_corrector: bool = DEFAULT_USE_CORRECTOR,
        spacing_power: float | None = DEFAULT_SPACING_POWER,
        guidance_scale: float | None = None,
        use_learned_variance: bool = DEFAULT_USE_LEARNED_VARIANCE,
        lower_order_final: bool = False,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -math.inf,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        replaced_scheduler: str | None = None,
        extrapolation_gain: float | None = DEFAULT_EXTRAPOLATION_GAIN,
    ):
        # replaced_scheduler is always written out, even at its default, so that a config that went through another
        # class and back keeps it (diffusers drops keys a config left at their defaults)
        used_defaults = self.config.get("_use_default_values") or []
        if "replaced_scheduler" in used_defaults:
            self.register_to_config(_use_default_values=[k for k in used_defaults if k != "replaced_scheduler"])
        check_num_train_timesteps(num_train_timesteps)
        check_prediction_type(prediction_type)
        check_solver_type(solver_type)
        self._tuned = None
        check_guidance_hint(guidance_scale)  # refused even where a tuned schedule makes it moot
        if extrapolation_gain is not None:
            check_extrapolation_gain(extrapolation_gain)
        if tuned_schedule is not None:  # it fixes eta, solver_order, variance_type, the gain and the timesteps
            self._tuned, fixed = scheduler_settings_from_tuned_schedule(tuned_schedule, num_train_timesteps, eta,
                                                                        solver_order, variance_type, extrapolation_gain)
            eta, solver_order, variance_type = fixed["eta"], fixed["solver_order"], fixed["variance_type"]
            use_corrector, use_learned_variance = fixed["use_corrector"], fixed["use_learned_variance"]
            self.register_to_config(**fixed)
        # what was asked for; a guidance scale may change it per step count (_install_plan), a tuned schedule never
        self._guidance = None if self._tuned is not None else guidance_scale
        self._asked = (eta, solver_order, bool(use_corrector))
        eta, solver_order, use_corrector = settings_for_guidance(self._guidance, eta, solver_order, bool(use_corrector))
        self.effective_eta = eta
        # before set_timesteps: the rule from FEW_STEPS_BELOW steps on (the step count is not known yet)
        self.effective_extrapolation_gain = 1.0 if extrapolation_gain is None else float(extrapolation_gain)
        if variance_type == "learned":
            # In a diffusers config 'learned' means a variance predicted directly for the full T-step chain, which
            # cannot be moved to a skipped chain; ADM/IDDPM/DiT models use 'learned_range'.
            raise ValueError(
                "variance_type 'learned' (diffusers: the model predicts the variance itself) cannot be transferred "
                "to a skipped chain; use 'learned_range' (the ADM/IDDPM/DiT interpolation) if that is what the "
                "model outputs"
            )
        if prediction_type == "flow":
            raise ValueError("prediction_type 'flow' belongs to the rectified-flow scheduler, not the VP chain")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {timestep_spacing!r}")
        self._sigma_spacing = _check_options(self.config)
        check_spacing_power(spacing_power)
        if self._sigma_spacing == "beta":
            import importlib.util

            if importlib.util.find_spec("scipy") is None:
                raise ImportError("use_beta_sigmas=True needs scipy (pip install scipy), as in diffusers")
        # validate early; a per-step list is checked against the step count again in set_timesteps
        resolve_eta_schedule(eta, len(eta) if isinstance(eta, (list, tuple)) else num_train_timesteps)
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        self.path = DiscreteVPPath(trained_alphas_cumprod(betas))
        self.betas = betas.float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = self.path.alphas_cumprod.float()
        noise_variance, variance_channels = noise_variance_settings(variance_type, use_learned_variance)
        self.step_config = StepConfig(
            prediction_type=prediction_type,
            variance_type=noise_variance,
            variance_channels=variance_channels,
            clipping=X0Clipping(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
                                sample_max_value),
            check_finite=check_finite,
            solver_order=solver_order,
            data_half_range=data_half_range,
            use_corrector=bool(use_corrector),
        )
        if self.step_config.variance_type == "optimal" and eps_mse is None:
            raise ValueError("variance_type 'optimal' needs eps_mse (see skipstep.optimal_variance.estimate_eps_mse)")
        self._vp_sigmas = vp_sigmas(self.path)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.custom_timesteps = False
        T = self.path.num_train_timesteps
        self.timesteps = torch.arange(T - 1, -1, -1, dtype=torch.int64)
        self.sigmas = torch.cat([torch.from_numpy(self._vp_sigmas[::-1].copy()), torch.zeros(1)])
        self._plan: list[PlannedStep] = []
        self._index_of: dict[int, int] = {}
        self._stepper: TrajectoryStepper | None = None
        self._cached = (None, None, None)  # (key, plan, coefficients) of the last plan
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # ------------------------------------------------------------------------------------------------------------
    # timesteps
    # ------------------------------------------------------------------------------------------------------------
    @property
    def final_time(self) -> int:
        """Where the last step goes: ``-1`` (clean data) or ``0`` (``final_sigmas_type="sigma_min"``)."""
        return 0 if self.config.final_sigmas_type == "sigma_min" else self.path.clean_time

    def spaced_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The configured grid for ``num_inference_steps`` (spacing of the replaced class, or a sigma spacing)."""
        c = self.config
        n = check_num_steps(num_inference_steps, self.path.num_train_timesteps)
        if self._sigma_spacing is not None:
            rounding = None
            if (self._sigma_spacing in ("karras", "lu") and c.beta_schedule == "squaredcos_cap_v2"
                    and c.replaced_scheduler in (None, *TRUNCATES_KARRAS_ON_COSINE)):
                rounding = "truncate"
            return sigma_spaced_timesteps(self.path, n, self._sigma_spacing, c.sigma_min, c.sigma_max, rounding)
        grid = "drop_zero" if c.replaced_scheduler in DROP_ZERO_GRID_SCHEDULERS else "points"
        return select_timesteps(self.path, n, c.timestep_spacing, c.steps_offset, grid=grid,
                                lambda_min_clipped=c.lambda_min_clipped, power=c.spacing_power,
                                few_steps_below=placement_split(self._guidance))

    def set_guidance_scale(self, guidance_scale: float | None) -> None:
        """Tell the scheduler the classifier-free guidance scale ``w`` the pipeline samples at (``None``: unknown),
        as the ``guidance_scale`` config key does; it applies from the next ``set_timesteps``. A pipeline that knows
        its scale calls this (``skipstep.pipelines.LearnedVarianceDiTPipeline`` does). Under a tuned schedule it is
        recorded and changes nothing (the schedule fixes the settings)."""
        w = check_guidance_hint(guidance_scale)
        self.register_to_config(guidance_scale=w)
        if self._tuned is None:
            self._guidance = w

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
    ):
        """Choose the visited timesteps -- exactly one of: ``num_inference_steps`` with the configured spacing, an
        explicit strictly descending list ``timesteps`` (e.g. ``AysSchedules["StableDiffusionTimesteps"]``), or
        ``sigmas``, diffusers' VE sigmas of the chain with the final sigma last (as
        ``EulerDiscreteScheduler``'s; mapped to the nearest integer timesteps, see
        :func:`skipstep.timesteps.timesteps_from_sigmas`)."""
        given = [k for k, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                ("sigmas", sigmas)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"pass exactly one of num_inference_steps, timesteps or sigmas; got {given or 'none'}")
        final = self.final_time
        if (timesteps is not None or sigmas is not None) and self._sigma_spacing is not None:
            flag = next(k for k, v in SIGMA_SPACING_FLAGS.items() if v == self._sigma_spacing)
            raise ValueError(f"{given[0]}= cannot be combined with {flag}=True (which computes the timesteps)")
        analytic = self._data_moments is not None  # set_data_moments: the first time listed is the analytic one
        if analytic and self._tuned is not None:
            raise ValueError("data moments (the analytic first step) cannot be combined with tuned_schedule: a tuned "
                             "schedule fixes the timesteps of every evaluation for its own NFE")
        if self._tuned is not None:
            if sigmas is not None:
                raise ValueError("sigmas= is refused while a tuned schedule is configured (it fixes the timesteps)")
            ts = self._tuned.timesteps_for(num_inference_steps, timesteps)
        elif timesteps is not None:
            ts = validate_timesteps(self.path, timesteps)
        elif sigmas is not None:
            ts, final = timesteps_from_sigmas(self.path, sigmas)
        elif analytic:
            ts = analytic_first_step_grid(self.spaced_timesteps, num_inference_steps)
        else:
            ts = self.spaced_timesteps(num_inference_steps)
        if final > int(ts[-1]):
            raise ValueError(f"final_sigmas_type={self.config.final_sigmas_type!r} stops at t={final}, above the last "
                             f"timestep {int(ts[-1])}")
        self._sync_clipping_with_config()  # before every trajectory, not every step: it is config, not state
        self._install_plan(ts, final)
        self._plan_has_analytic = False
        if analytic:  # the pipeline sees the model times only (skipstep.analytic_first_step)
            self._analytic_checks(ts)
            self._plan_has_analytic = True
            del self._index_of[int(ts[0])]
            ts = ts[1:]
        self.custom_timesteps = given[0] != "num_inference_steps"
        self.num_inference_steps = len(ts)
        self.timesteps = ts.to(device=device)
        final_sigma = 0.0 if final == self.path.clean_time else float(self._vp_sigmas[final])
        self.sigmas = torch.cat([torch.from_numpy(self._vp_sigmas[ts.numpy()]), torch.tensor([final_sigma])]).float()
        self._step_index, self._begin_index = None, None

    def _install_plan(self, ts: torch.Tensor, final: int) -> None:
        """Plan the trajectory (reusing the last plan when the timesteps and settings are the same)."""
        c = self.config
        eta, order, corrector = settings_for_guidance(self._guidance, *self._asked, num_steps=len(ts))
        self.effective_eta = eta
        self.effective_extrapolation_gain = resolve_extrapolation_gain(c.extrapolation_gain, len(ts),
                                                                       guidance_scale=self._guidance)
        if (order, corrector) != (self.step_config.solver_order, self.step_config.use_corrector):
            self.step_config = replace(self.step_config, solver_order=order, use_corrector=corrector)
        key = (tuple(ts.tolist()), final, repr(self.effective_eta), id(c.eps_mse), c.solver_type, c.lower_order_final,
               c.euler_at_final, self.step_config.solver_order, self.step_config.use_corrector,
               self.effective_extrapolation_gain)
        if key == self._cached[0]:
            plan, coefficients = self._cached[1], self._cached[2]
        else:
            plan = plan_steps(self.path, ts, self.effective_eta, c.eps_mse, solver_order=self.step_config.solver_order,
                              solver_type=c.solver_type, final_time=final, lower_order_final=c.lower_order_final,
                              euler_at_final=c.euler_at_final, use_corrector=self.step_config.use_corrector,
                              extrapolation_gain=self.effective_extrapolation_gain)
            coefficients = None
        self._plan = plan
        self._stepper = TrajectoryStepper(plan, self.step_config, coefficients)
        self._cached = (key, plan, self._stepper.coefficients)
        self._index_of = {int(v): i for i, v in enumerate(key[0])}

    def _ensure_plan(self) -> None:
        """``step()`` before ``set_timesteps()`` runs the full training chain (every timestep), as DDPM does."""
        if self._plan:
            return
        if self._tuned is not None:
            raise RuntimeError("call set_timesteps() before step(): the tuned schedule fixes the timesteps")
        self._sync_clipping_with_config()
        self._install_plan(self.timesteps.cpu(), self.final_time)

    @property
    def eta_schedule(self) -> list[float]:
        """The per-step eta in use (after :meth:`set_timesteps`)."""
        return [p.posterior.eta for p in self._plan]

    def _timestep_value(self, timestep) -> int:
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 0 and timestep.device.type != "meta":
            value = timestep.item()  # the loop's usual case: one element of scheduler.timesteps
        elif isinstance(timestep, torch.Tensor):
            if timestep.device.type == "meta":
                raise ValueError("timestep is a tensor on the meta device (no value); pass a value of "
                                 "scheduler.timesteps")
            flat = timestep.detach().reshape(-1)
            if flat.numel() == 0:
                raise ValueError("timestep is an empty tensor")
            if flat.numel() > 1 and not bool((flat == flat[0]).all()):
                raise ValueError(f"per-sample timesteps that differ are not supported: every row of a batch must be "
                                 f"at the same timestep, got {flat.tolist()}")
            value = flat[0].item()
        else:
            value = timestep
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"timestep must be a number or a tensor holding one, got {type(value).__name__}")
        if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and value == round(value)):
            raise ValueError(f"timestep {value} is not one of the scheduled timesteps {_schedule_text(self.timesteps)}"
                             " (timesteps of a discrete chain are integers)")
        return int(value)

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` (a value of ``timesteps``, not an index) in the schedule."""
        value = self._timestep_value(timestep)
        if schedule_timesteps is not None:
            hits = (schedule_timesteps.detach().cpu() == value).nonzero().flatten()
            if hits.numel():
                return int(hits[0])
        else:
            self._ensure_plan()
            if value in self._index_of:
                return self._index_of[value]
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        raise ValueError(f"timestep {value} is not one of the scheduled timesteps {_schedule_text(schedule)} "
                         "(step() takes values of scheduler.timesteps, and steps to the next one)")

    def previous_timestep(self, timestep) -> torch.Tensor:
        """The time the step from ``timestep`` goes to (``-1`` = clean data), as a tensor like DDPM's."""
        step = self._plan[self.index_for_timestep(timestep)]
        return torch.tensor(int(step.s), dtype=torch.int64, device=self.timesteps.device)

    @property
    def step_index(self) -> int | None:
        """Index of the next step (advances by one per :meth:`step`; ``None`` before the first), as in diffusers."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index set by :meth:`set_begin_index` (``None`` until then), as in diffusers."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Record where the pipeline starts in ``timesteps`` (img2img starts mid-way), as diffusers' pipelines call
        it. Steps are found by their timestep value (unique in every skipstep schedule) and ``add_noise`` works on
        the given timesteps, so this only sets :attr:`begin_index`."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index must be a non-negative integer, got {begin_index!r}")
        self._begin_index = int(begin_index)

    def _sync_clipping_with_config(self) -> None:
        """Follow the current config's x0 bounds. Pipelines edit a scheduler's config after construction
        (``StableDiffusionPipeline.__init__`` replaces ``_internal_dict`` to force ``clip_sample=False``) and
        diffusers' own schedulers read these keys at step time; so must we, or we would keep clipping while our
        config (and what ``save_config`` writes) says we don't."""
        c = self.config
        clipping = X0Clipping(c.clip_sample, c.clip_sample_range, c.thresholding, c.dynamic_thresholding_ratio,
                              c.sample_max_value)
        if clipping != self.step_config.clipping:
            self.step_config = replace(self.step_config, clipping=clipping)

    # ------------------------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **ddim_kwargs,
    ) -> SkippedStepSchedulerOutput | tuple:
        """One reverse step from ``timestep`` (a value of ``timesteps``) to the next scheduled time.

        DDPMScheduler's positional order. ``ddim_kwargs`` accepts DDIM's ``eta`` (overrides the configured schedule
        for this step), ``variance_noise`` (the noise to inject, instead of drawing it from ``generator``) and
        ``use_clipped_model_output`` (skipstep always uses the epsilon consistent with the clipped ``x0_hat``,
        i.e. ``True``; ``False`` is refused when clipping is on, because it would break the posterior).
        """
        unknown = set(ddim_kwargs) - set(_STEP_KWARGS)
        if unknown:
            raise TypeError(f"step() got unexpected keyword arguments {sorted(unknown)}; accepted: {_STEP_KWARGS}")
        if not isinstance(sample, torch.Tensor) or sample.ndim == 0:
            raise ValueError(f"sample must be a tensor with a leading batch axis, got "
                             f"{'a 0-d tensor' if isinstance(sample, torch.Tensor) else type(sample).__name__}")
        check_generator(generator, sample.shape[0])
        index = self.index_for_timestep(timestep)
        if ddim_kwargs.get("use_clipped_model_output") is False and self.step_config.clipping.active:
            raise ValueError("use_clipped_model_output=False with clip_sample/thresholding is not supported")
        if self._analytic_active(index):
            sample = self._analytic_start(sample)
        prev_sample, x0 = self._stepper.step(index, model_output, sample, generator,
                                             ddim_kwargs.get("variance_noise"), ddim_kwargs.get("eta"))
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, x0
        return SkippedStepSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    # ------------------------------------------------------------------------------------------------------------
    # the forward process
    # ------------------------------------------------------------------------------------------------------------
    def _alpha_sigma_like(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(timesteps).reshape(-1).cpu()
        alpha, sigma = self.path.alpha_sigma(t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        cast = dict(device=like.device, dtype=like.dtype)
        return alpha.to(**cast).reshape(shape), sigma.to(**cast).reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward marginal ``x_t = alpha_t x_0 + sigma_t eps`` (one timestep per sample, or one for all). A
        trajectory that starts here (img2img) takes no analytic first step until the next ``set_timesteps``."""
        self._entered_noised = True
        alpha, sigma = self._alpha_sigma_like(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``v = alpha_t eps - sigma_t x_0`` (the v-prediction training target)."""
        alpha, sigma = self._alpha_sigma_like(timesteps, sample)
        return alpha * noise - sigma * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


__all__ = ["FINAL_SIGMAS_TYPES", "SIGMA_SPACING_FLAGS", "SkippedStepScheduler", "SkippedStepSchedulerOutput"]
