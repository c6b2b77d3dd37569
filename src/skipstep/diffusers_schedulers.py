"""diffusers-compatible schedulers on top of the skipstep core (no math of their own).

``SkippedStepScheduler`` follows the contract of diffusers' DDPM/DDIM schedulers, so it can replace
``pipe.scheduler`` in any pipeline that works with ``DDIMScheduler``::

    pipe.scheduler = SkippedStepScheduler.from_config(pipe.scheduler.config, eta=1.0)

How ``eta`` is chosen. The configured ``eta`` (constant, per-step list or schedule string) is authoritative.
``step()`` accepts ``eta=`` only through ``**kwargs``, which diffusers pipelines do not inspect: pipelines such as
``StableDiffusionPipeline`` pass their own call-time ``eta`` (default 0.0) only to schedulers whose ``step``
signature names ``eta``, so they cannot silently turn the configured skipped-step sampler into DDIM. A direct
caller may still pass ``step(..., eta=x)`` to override the schedule for that one step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .paths import DiscreteVPPath, flow_config_reason
from .plan import PlannedStep, plan_steps, resolve_eta_schedule
from .predictions import X0Clipping, check_prediction_type
from .steps import DEFAULT_ETA, DEFAULT_SOLVER_ORDER, StepConfig, TrajectoryStepper, canonical_variance_type
from .timesteps import SPACINGS, select_timesteps, validate_timesteps
from .tuned_schedules import scheduler_settings_from_tuned_schedule

_STEP_KWARGS = ("eta", "variance_noise", "use_clipped_model_output")


@dataclass
class SkippedStepSchedulerOutput(BaseOutput):
    """``prev_sample``: ``x_s``, the next model input; ``pred_original_sample``: the (clipped) ``x0_hat``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SkippedStepScheduler(SchedulerMixin, ConfigMixin):
    """Skipped-step posterior sampling (Xu 2025) and its DDIM family as a diffusers scheduler.

    Each step draws ``x_s ~ q(x_s | x_t, x0_hat)``, the exact DDPM posterior across the skipped steps
    (``eta = 1``), or its DDIM-family relaxation (``0 <= eta < 1``; ``eta = 0`` is DDIM). With ``eta = 1`` and
    ``variance_type="fixed_small"`` it equals ``DDPMScheduler`` run with fewer steps ("respacing"); with ``eta = 0``
    it equals ``DDIMScheduler``. The final step returns ``x0_hat`` (alpha = 1).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr:
            the model's training chain, as in diffusers.
        prediction_type: ``epsilon`` | ``v_prediction`` | ``sample``.
        variance_type: ``fixed_small``/``small`` (posterior variance), ``fixed_large``/``large`` (the jump's
            beta), ``learned_range``/``learned`` (ADM/DiT models with 2C output channels; interpolated on the
            skipped chain), ``optimal`` (Analytic-DPM; needs ``eps_mse``).
        solver_order: 1 (the posterior step), 2 or 3 (multistep posterior steps over the previous ``x0_hat``;
            still one model evaluation per step, so the class attribute ``order`` stays 1 as for diffusers'
            multistep solvers).
        eps_mse: the model's ``E||eps - eps_hat(x_t, t)||^2 / d`` per training timestep, for the optimal variance
            (:func:`skipstep.optimal_variance.estimate_eps_mse`).
        data_half_range: half-width of the data range, bounding the optimal variance (1.0 for data in [-1, 1]).
        tuned_schedule: a tuned schedule (:class:`skipstep.tuned_schedules.TunedSchedule`, its dict or a file path; stored
            as its dict). It fixes the timesteps (``set_timesteps`` accepts only its NFE and no explicit list),
            ``eta``, ``solver_order`` and ``variance_type``: config values left at their defaults are rewritten to
            the schedule's, non-default conflicting ones are refused, as is another ``num_train_timesteps``.
        eta: stochasticity in [0, 1]: a number, a list with one value per step, or a schedule string
            (``"linear:1:0"``, ``"skip-ddim:K"``, ``"ddim-skip:K"``; see :mod:`skipstep.steps`).
        timestep_spacing: ``trailing`` | ``leading`` | ``linspace`` | ``quadratic`` | ``log_snr``.
        steps_offset: added to ``leading`` timesteps, as in diffusers.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value: bounds on
            ``x0_hat``, as in diffusers.
        check_finite: raise (naming the step) when the model output holds NaN or inf.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``, but a flow-matching config (``shift``, ``use_flow_sigmas=True``,
        ``prediction_type='flow_prediction'``) is refused with the reason instead of silently becoming a default
        DDPM chain (diffusers drops the keys it does not know); use :class:`skipstep.SkippedStepFlowScheduler`."""
        if isinstance(config, dict):
            reason = flow_config_reason({**config, **kwargs})
            if reason is not None:
                raise ValueError(
                    f"SkippedStepScheduler needs a DDPM-chain (variance-preserving) scheduler config, but the config "
                    f"of {config.get('_class_name', 'this scheduler')} describes a flow-matching model: {reason}. "
                    "Use skipstep.SkippedStepFlowScheduler for flow-matching models (SD3, Flux, Wan, LTX, ...)."
                )
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
        timestep_spacing: str = "trailing",
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
    ):
        check_prediction_type(prediction_type)
        self._tuned = None
        if tuned_schedule is not None:  # it fixes eta, solver_order, variance_type and the timesteps
            self._tuned, fixed = scheduler_settings_from_tuned_schedule(tuned_schedule, num_train_timesteps, eta,
                                                                  solver_order, variance_type)
            eta, solver_order, variance_type = fixed["eta"], fixed["solver_order"], fixed["variance_type"]
            self.register_to_config(**fixed)
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
        # validate early; a per-step list is checked against the step count again in set_timesteps
        resolve_eta_schedule(eta, len(eta) if isinstance(eta, (list, tuple)) else num_train_timesteps)
        self.path = DiscreteVPPath.from_config(dict(self.config))
        self.alphas_cumprod = self.path.alphas_cumprod.float()
        self.step_config = StepConfig(
            prediction_type=prediction_type,
            variance_type=canonical_variance_type(variance_type),
            clipping=X0Clipping(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
                                sample_max_value),
            check_finite=check_finite,
            solver_order=solver_order,
            data_half_range=data_half_range,
        )
        if self.step_config.variance_type == "optimal" and eps_mse is None:
            raise ValueError("variance_type 'optimal' needs eps_mse (see skipstep.optimal_variance.estimate_eps_mse)")
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._plan: list[PlannedStep] = []
        self._index_of: dict[int, int] = {}
        self._stepper: TrajectoryStepper | None = None

    # ------------------------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ):
        """Choose the visited timesteps: ``num_inference_steps`` with the configured spacing, or an explicit
        strictly descending list ``timesteps``."""
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        if self._tuned is not None:
            ts = self._tuned.timesteps_for(num_inference_steps, timesteps)
            self.custom_timesteps = False
        elif timesteps is not None:
            ts = validate_timesteps(self.path, timesteps)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("num_inference_steps or timesteps must be given")
            T = self.config.num_train_timesteps
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or not (
                1 <= num_inference_steps <= T
            ):
                raise ValueError(f"num_inference_steps must be an integer in [1, {T}], got {num_inference_steps!r}")
            ts = select_timesteps(self.path, num_inference_steps, self.config.timestep_spacing,
                                  self.config.steps_offset)
            self.custom_timesteps = False
        self._sync_clipping_with_config()  # before every trajectory, not every step: it is config, not state
        self._plan = plan_steps(self.path, ts, self.config.eta, self.config.eps_mse,
                                 solver_order=self.step_config.solver_order)
        self._stepper = TrajectoryStepper(self._plan, self.step_config)
        self._index_of = {int(v): i for i, v in enumerate(ts.tolist())}
        self.num_inference_steps = len(ts)
        self.timesteps = ts.to(device=device)

    @property
    def eta_schedule(self) -> list[float]:
        """The per-step eta in use (after :meth:`set_timesteps`)."""
        return [p.posterior.eta for p in self._plan]

    def _planned(self, timestep) -> PlannedStep:
        if not self._plan:
            raise RuntimeError("call set_timesteps() before step()")
        key = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        try:
            return self._plan[self._index_of[key]]
        except KeyError:
            raise ValueError(
                f"timestep {key} is not one of the scheduled timesteps {self.timesteps.tolist()}"
            ) from None

    def previous_timestep(self, timestep) -> int:
        """The time the step from ``timestep`` goes to (``-1`` = clean data)."""
        return int(self._planned(timestep).s)

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

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **ddim_kwargs,
    ) -> SkippedStepSchedulerOutput | tuple:
        """One reverse step from ``timestep`` to the next scheduled time.

        ``ddim_kwargs`` accepts DDIM's ``eta`` (overrides the configured schedule for this step),
        ``variance_noise`` (the noise to inject, instead of drawing it from ``generator``) and
        ``use_clipped_model_output`` (skipstep always uses the epsilon consistent with the clipped ``x0_hat``,
        i.e. ``True``; ``False`` is refused when clipping is on, because it would break the posterior).
        """
        unknown = set(ddim_kwargs) - set(_STEP_KWARGS)
        if unknown:
            raise TypeError(f"step() got unexpected keyword arguments {sorted(unknown)}; accepted: {_STEP_KWARGS}")
        planned = self._planned(timestep)
        if ddim_kwargs.get("use_clipped_model_output") is False and self.step_config.clipping.active:
            raise ValueError("use_clipped_model_output=False with clip_sample/thresholding is not supported")
        prev_sample, x0 = self._stepper.step(planned.index, model_output, sample, generator,
                                             ddim_kwargs.get("variance_noise"), ddim_kwargs.get("eta"))
        if not return_dict:
            return prev_sample, x0
        return SkippedStepSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    # ------------------------------------------------------------------------------------------------------------
    def _alpha_sigma_like(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(timesteps).reshape(-1).cpu()
        alpha, sigma = self.path.alpha_sigma(t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        cast = dict(device=like.device, dtype=like.dtype)
        return alpha.to(**cast).reshape(shape), sigma.to(**cast).reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward marginal ``x_t = alpha_t x_0 + sigma_t eps`` (one timestep per sample, or one for all)."""
        alpha, sigma = self._alpha_sigma_like(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``v = alpha_t eps - sigma_t x_0`` (the v-prediction training target)."""
        alpha, sigma = self._alpha_sigma_like(timesteps, sample)
        return alpha * noise - sigma * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


__all__ = ["SkippedStepScheduler", "SkippedStepSchedulerOutput"]
