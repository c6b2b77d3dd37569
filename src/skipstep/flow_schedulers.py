"""The skipped-step posterior sampler for flow-matching models, as a drop-in for ``FlowMatchEulerDiscreteScheduler``.

``SkippedStepFlowScheduler`` follows the contract of diffusers' ``FlowMatchEulerDiscreteScheduler`` (SD3, Flux,
Wan, LTX-Video, HunyuanVideo, CogView4, ... pipelines)::

    pipe.scheduler = SkippedStepFlowScheduler.from_config(pipe.scheduler.config, eta=1.0)

What it shares with diffusers and what with skipstep's core:

* **Where it steps** -- the sigmas -- is the model's contract with its pipeline (``shift``, resolution-dependent
  ``mu`` for ``use_dynamic_shifting``, ``shift_terminal``, Karras/exponential/beta spacings, custom ``sigmas`` or
  ``timesteps``). They are computed by diffusers' own ``FlowMatchEulerDiscreteScheduler.set_timesteps`` from the same
  config keys, so they agree bit for bit (float32, ``timesteps = sigmas * num_train_timesteps``), now and as diffusers
  adds options.
* **How it steps** comes from the core, nothing else: the rectified-flow path (``alpha = 1 - sigma``,
  ``sigma = sigma``; :class:`~skipstep.paths.RectifiedFlowPath`), the ``flow`` prediction (``v = eps - x0``,
  so ``x0_hat = x_t - sigma_t v``; :func:`~skipstep.predictions.predict_x0_eps`), the step plan
  (:func:`~skipstep.plan.plan_steps`) and the posterior step (:func:`~skipstep.steps.posterior_step`) with its eta
  family and multistep orders. ``eta = 1`` draws ``x_s ~ q(x_s | x_t, x0_hat)``, the exact posterior of the flow
  path across the skipped interval; ``eta = 0`` is DDIM, which on this path *is* the Euler step of the velocity
  ODE, ``x_s = x_t + (s - t) v`` -- i.e. ``FlowMatchEulerDiscreteScheduler``. The final step goes to ``sigma = 0``
  and returns ``x0_hat``.

Step noise: pipelines built on ``FlowMatchEulerDiscreteScheduler`` (Flux, SD3, Wan, LTX, HunyuanVideo) do not pass
their ``generator`` to ``step()``, so with ``eta > 0`` the injected noise comes from torch's global generator there;
call ``torch.manual_seed(...)`` before the pipeline for reproducible results (as for diffusers' stochastic
schedulers). Direct callers can pass ``generator=`` or ``variance_noise=``.

Shapes: the scheduler cannot know a model's latent layout (Flux packs latents to ``(batch, tokens, channels)``,
SD3 uses ``(batch, channels, height, width)``, video models ``(batch, channels, frames, height, width)``), so any
rank >= 1 with a leading batch axis is accepted; ``model_output`` (and ``variance_noise``) must have exactly the
sample's shape, and a per-sample ``timestep`` tensor must hold one (equal) value per batch row. Every axis is
treated alike: the injected noise is i.i.d. per element.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .paths import RectifiedFlowPath, vp_config_reason
from .plan import (DEFAULT_EXTRAPOLATION_GAIN, PlannedStep, check_extrapolation_gain, check_solver_type, plan_steps,
                   resolve_eta_schedule, resolve_extrapolation_gain)
from .steps import (DEFAULT_FLOW_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_SPACING_POWER, DEFAULT_TIMESTEP_SPACING,
                    DEFAULT_USE_CORRECTOR, StepConfig, TrajectoryStepper)
from .timesteps import check_num_steps, check_spacing_power, select_timesteps, spacing_power_for
from .tuned_schedules import flow_scheduler_settings_from_tuned_schedule

logger = logging.getLogger(__name__)

#: keys of FlowMatchEulerDiscreteScheduler's config that choose the sigmas; passed to it verbatim
_SIGMA_KEYS = tuple(
    name for name in inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
    if name not in ("self", "stochastic_sampling", "invert_sigmas")
)
#: step() keyword arguments of FlowMatchEulerDiscreteScheduler that it ignores itself (churn is not implemented there)
_IGNORED_EULER_KWARGS = ("s_churn", "s_tmin", "s_tmax", "s_noise")
#: ``linspace``: FlowMatchEulerDiscreteScheduler's own sigmas; ``power``: see the class docstring
FLOW_SPACINGS = ("linspace", "power")
_STEP_KWARGS = ("eta", "variance_noise", "per_token_timesteps") + _IGNORED_EULER_KWARGS


@dataclass
class SkippedStepFlowSchedulerOutput(BaseOutput):
    """``prev_sample``: ``x_s``, the next model input; ``pred_original_sample``: ``x0_hat = x_t - sigma_t v``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SkippedStepFlowScheduler(SchedulerMixin, ConfigMixin):
    """Skipped-step posterior sampling on the rectified-flow path, as a diffusers flow-matching scheduler.

    Args:
        num_train_timesteps, shift, use_dynamic_shifting, base_shift, max_shift, base_image_seq_len,
        max_image_seq_len, shift_terminal, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas,
        time_shift_type: as in ``FlowMatchEulerDiscreteScheduler`` (they choose the sigmas, see the module doc).
        invert_sigmas: must be ``False`` (inverted sigmas run from data to noise; that is not a sampler).
        stochastic_sampling: accepted for config compatibility and ignored with a warning: the stochasticity of
            this scheduler is ``eta``.
        eta: stochasticity in [0, 1] (1 = the skipped-step posterior, 0 = DDIM = flow-matching Euler): a number,
            one value per step, or a schedule string (``"linear:1:0"``, ``"skip-ddim:K"``, ``"ddim-skip:K"``,
            ``"window"``, ``"snr-window:L:H"`` -- noise where the log-SNR ``2 log((1 - sigma) / sigma)`` is in
            ``[L, H]`` --, ``"below:N:LOW:HIGH"``); the default ``skipstep.DEFAULT_FLOW_ETA`` is
            ``"below:7:0:snr-window:-inf:0"``: deterministic below 7 steps; from 7 on, the posterior on the steps
            that start at ``sigma >= 1/2`` and deterministic after.
        solver_order: 1 (the posterior step), 2 or 3 (multistep posterior steps over the previous ``x0_hat``, one
            model evaluation per step; ``order`` stays 1).
        solver_type: ``heun`` (exact exponential-integrator weights) or ``midpoint`` (DPM-Solver++'s midpoint form
            of the order-2 steps), as for :class:`skipstep.SkippedStepScheduler`.
        use_corrector: the corrector of :class:`skipstep.SkippedStepScheduler` (no extra evaluation).
        extrapolation_gain: ``G`` of the order-2 steps, as for :class:`skipstep.SkippedStepScheduler`; ``None`` (the
            default) is 1 on a flow path (the flow pair's folds keep 1: the VP chains' few-step gain was worse
            against the flow models' own samples).
        lower_order_final, euler_at_final: as for :class:`skipstep.SkippedStepScheduler` (DPM-Solver's rules for
            the last steps; the last step to clean data, ``x0_hat`` of the last evaluation, is first order anyway,
            so they change an order-3 trajectory's second-to-last step only).
        timestep_spacing: ``linspace`` (FlowMatchEulerDiscreteScheduler's own sigmas) or ``power``: unshifted
            sigmas ``((n - i) / n)^p``, ``p = spacing_power >= 1``, then the config's ``shift`` / dynamic shifting as
            diffusers applies it to custom sigmas. ``spacing_power=None`` (the default) is, below 7 steps, the VP
            default's few-step grid carried to the flow path at equal log-SNR, ``sigma_i = 1 / (1 + exp(lambda_i /
            2))`` with ``lambda_i`` the log-SNRs of ``p = 1 + 4/n`` on DDPM's linear chain
            (:func:`skipstep.timesteps.reference_log_snrs`), and from 7 steps the uniform ``(n - i) / n``, both
            visited as they are: the static ``shift`` does not move them (sixteenth and seventeenth rounds,
            docs/results.md: chosen on the shift-2 and shift-3 flow models, reported on a shift-1 one); with
            dynamic shifting, ``shift_terminal`` or a sigma-spacing flag, ``p = 1 + 4/n`` / ``1 + 2/n``
            (:func:`skipstep.timesteps.spacing_power_for`) and the config's sigma rules apply.
        check_finite: raise (naming the step) when the model output holds NaN or inf.
        tuned_schedule: a flow schedule of ``skipstep tune`` (:class:`skipstep.tuned_schedules.TunedSchedule` with
            ``path="flow"``, its dict or a file path): ``set_timesteps`` then visits its sigmas as they are (the
            final sigmas: no shift, dynamic shifting or sigma conversion is applied to them, and ``mu`` is
            ignored), at exactly its NFE; it fixes ``eta``, ``solver_order``, ``use_corrector`` and
            ``extrapolation_gain`` (defaults are
            replaced, contradicting values refused); ``timesteps=`` and ``sigmas=`` other than the schedule's own
            (a Flux pipeline always passes sigmas: pass it ``sigmas=schedule.sigmas``) are refused.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        eta=DEFAULT_FLOW_ETA,
        solver_order: int = DEFAULT_SOLVER_ORDER,
        check_finite: bool = True,
        solver_type: str = "heun",
        use_corrector: bool = DEFAULT_USE_CORRECTOR,
        timestep_spacing: str = DEFAULT_TIMESTEP_SPACING,
        spacing_power: float | None = DEFAULT_SPACING_POWER,
        lower_order_final: bool = False,
        euler_at_final: bool = False,
        tuned_schedule=None,
        extrapolation_gain: float | None = DEFAULT_EXTRAPOLATION_GAIN,
    ):
        self._tuned = None
        if extrapolation_gain is not None:
            check_extrapolation_gain(extrapolation_gain)
        if tuned_schedule is not None:  # it fixes eta, solver_order, use_corrector, the gain and the sigmas
            self._tuned, fixed = flow_scheduler_settings_from_tuned_schedule(tuned_schedule, num_train_timesteps,
                                                                             eta, solver_order, extrapolation_gain)
            eta, solver_order, use_corrector = fixed["eta"], fixed["solver_order"], fixed["use_corrector"]
            self.register_to_config(**fixed)
        if invert_sigmas:
            raise ValueError(
                "invert_sigmas=True (sigmas rising from data to noise, used for inversion) is not supported by "
                "SkippedStepFlowScheduler: its steps go from noise to data"
            )
        if stochastic_sampling:
            logger.warning(
                "SkippedStepFlowScheduler ignores stochastic_sampling=True: its stochasticity is the config key "
                "`eta` (now %r)", eta,
            )
        resolve_eta_schedule(eta, len(eta) if isinstance(eta, (list, tuple)) else num_train_timesteps)
        check_solver_type(solver_type)
        for key, value in (("use_corrector", use_corrector), ("lower_order_final", lower_order_final),
                           ("euler_at_final", euler_at_final)):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be True or False, got {value!r}")
        if timestep_spacing not in FLOW_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {FLOW_SPACINGS}, got {timestep_spacing!r}")
        check_spacing_power(spacing_power)
        self.effective_eta = eta  # as SkippedStepScheduler's (which a guidance scale can change); here always eta
        self.step_config = StepConfig(prediction_type="flow", variance_type="small", check_finite=check_finite,
                                      solver_order=solver_order, use_corrector=use_corrector)
        cfg = dict(self.config)
        self._sigma_source = FlowMatchEulerDiscreteScheduler(**{k: cfg[k] for k in _SIGMA_KEYS if k in cfg})
        # sigma is the path's time; t_min only bounds what validate_time accepts (never used in a step)
        self.path = RectifiedFlowPath(t_min=1e-12, t_max=1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = self._sigma_source.timesteps.clone()
        self.sigmas = self._sigma_source.sigmas.clone()
        self.sigma_min = self._sigma_source.sigma_min
        self.sigma_max = self._sigma_source.sigma_max
        self._plan: list[PlannedStep] = []
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._stepper: TrajectoryStepper | None = None

    # -- config checks ---------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``, refusing a variance-preserving (DDPM-chain) config with the reason, and
        reading a UniPC/DPM-Solver flow config (``use_flow_sigmas=True``) with its ``flow_shift`` as ``shift``
        (note: those schedulers space their flow sigmas slightly differently; this one spaces them like
        ``FlowMatchEulerDiscreteScheduler``)."""
        if isinstance(config, dict):
            merged = {**config, **kwargs}
            reason = vp_config_reason(merged)
            if reason is not None:
                name = merged.get("_class_name", "this scheduler")
                raise ValueError(
                    f"SkippedStepFlowScheduler needs a flow-matching scheduler config, but the config of {name} "
                    f"describes a variance-preserving diffusion chain: {reason}. Use skipstep.SkippedStepScheduler "
                    "for DDPM/DDIM/PNDM/DPM-Solver (epsilon / v_prediction / sample) models."
                )
            if merged.get("use_flow_sigmas") and "shift" not in merged and "flow_shift" in merged:
                kwargs = {"shift": float(merged["flow_shift"]), **kwargs}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- properties of FlowMatchEulerDiscreteScheduler ---------------------------------------------------------
    @property
    def shift(self) -> float:
        return self._sigma_source.shift

    def set_shift(self, shift: float) -> None:
        self._sigma_source.set_shift(shift)

    @property
    def step_index(self) -> int | None:
        """Index of the next step (advances by one per :meth:`step`), as in diffusers."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where the pipeline starts in ``timesteps`` (img2img starts mid-way); as in diffusers."""
        self._begin_index = int(begin_index)

    def time_shift(self, mu: float, sigma: float, t):
        return self._sigma_source.time_shift(mu, sigma, t)

    @property
    def eta_schedule(self) -> list[float]:
        """The per-step eta in use (after :meth:`set_timesteps`)."""
        return [p.posterior.eta for p in self._plan]

    # -- timesteps -----------------------------------------------------------------------------------------------
    def _default_rule_grid(self, n, sigmas, timesteps, mu) -> bool:
        """Whether ``n`` steps take the default rule's own grid on the path (:func:`skipstep.timesteps.
        select_timesteps` with ``power=None``: the reference chain's log-SNRs below ``FEW_STEPS_BELOW`` steps,
        uniform sigmas from it), unshifted: ``power`` spacing with ``spacing_power=None``, nothing passed, and no
        config key that shapes the sigmas beyond the static ``shift`` (dynamic shifting, ``shift_terminal``,
        sigma spacings)."""
        cfg = self.config
        return (cfg.timestep_spacing == "power" and cfg.spacing_power is None and n is not None
                and sigmas is None and timesteps is None and mu is None
                and not cfg.use_dynamic_shifting and cfg.shift_terminal is None
                and not (cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas))

    def _as_given(self, noisy: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigmas with the final 0, model times sigma * T)`` for noisy sigmas visited as they are (no shift)."""
        all_sigmas = torch.cat([noisy, noisy.new_zeros(1)]).to(dtype=torch.float32, device=device)
        return all_sigmas, all_sigmas[:-1] * self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ):
        """Same arguments and the same ``sigmas``/``timesteps`` as ``FlowMatchEulerDiscreteScheduler``
        (``mu`` is required with ``use_dynamic_shifting``); then plans the posterior steps through them."""
        if num_inference_steps is not None:
            num_inference_steps = check_num_steps(num_inference_steps)  # numpy integers too, as diffusers
        if num_inference_steps is None and sigmas is None and timesteps is None:
            raise ValueError("give num_inference_steps, sigmas or timesteps")
        src = self._sigma_source
        if self._tuned is not None:
            # a pipeline that always passes sigmas (Flux) is given the schedule's own; anything else is refused
            same = sigmas is not None and len(sigmas) == self._tuned.nfe and np.allclose(
                np.asarray(sigmas, dtype=np.float64), self._tuned.sigmas, rtol=0, atol=1e-6)
            if timesteps is not None or (sigmas is not None and not same):
                raise ValueError("sigmas= (other than the tuned schedule's own, TunedSchedule.sigmas) and timesteps= "
                                 "are refused while a tuned schedule is configured (it fixes the sigmas); remove "
                                 "tuned_schedule from the config to pass your own")
            if num_inference_steps is not None:
                self._tuned.check(nfe=num_inference_steps)
            noisy = torch.tensor(self._tuned.sigmas, dtype=torch.float64)
            all_sigmas, schedule_timesteps = self._as_given(noisy, device)
        elif self._default_rule_grid(num_inference_steps, sigmas, timesteps, mu):
            # the path's own default-rule grid (skipstep.sample's too); float32 first, so the plan steps through the
            # sigmas self.sigmas shows, as on the config's grid
            noisy = select_timesteps(self.path, num_inference_steps, "power", power=None).float().double()
            all_sigmas, schedule_timesteps = self._as_given(noisy, device)
        else:
            if self.config.timestep_spacing == "power" and sigmas is None and timesteps is None:
                n = num_inference_steps
                sigmas = (((n - np.arange(n)) / n) ** spacing_power_for(n, self.config.spacing_power)).tolist()
            src.set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)
            noisy = src.sigmas[:-1].detach().cpu().double()
            all_sigmas, schedule_timesteps = src.sigmas, src.timesteps
        if noisy.numel() == 0 or not bool(torch.isfinite(noisy).all()):
            raise ValueError(f"the sigmas must be a non-empty list of finite numbers, got {noisy.tolist()}")
        if bool((noisy <= 0).any()) or bool((noisy > 1).any()):
            raise ValueError(f"flow sigmas must lie in (0, 1] (sigma = 1 is pure noise), got {noisy.tolist()}")
        if bool((noisy[1:] >= noisy[:-1]).any()):
            raise ValueError(f"flow sigmas must be strictly descending (noisiest first), got {noisy.tolist()}")
        ts = schedule_timesteps.detach().cpu()
        if bool((ts[1:] == ts[:-1]).any()):
            raise ValueError(f"timesteps must not repeat, got {ts.tolist()}")
        self._plan = plan_steps(self.path, noisy, self.effective_eta, solver_order=self.step_config.solver_order,
                                 solver_type=self.config.solver_type, use_corrector=self.step_config.use_corrector,
                                 lower_order_final=self.config.lower_order_final,
                                 euler_at_final=self.config.euler_at_final,
                                 extrapolation_gain=resolve_extrapolation_gain(self.config.extrapolation_gain,
                                                                               len(noisy), flow=True))
        self.timesteps = schedule_timesteps
        self.sigmas = all_sigmas
        self.num_inference_steps = len(self._plan)
        self._step_index, self._begin_index = None, None
        self._stepper = TrajectoryStepper(self._plan, self.step_config)

    def _timestep_value(self, timestep) -> float:
        if isinstance(timestep, torch.Tensor):
            flat = timestep.detach().reshape(-1)
            if flat.numel() == 0:
                raise ValueError("timestep is an empty tensor")
            if flat.numel() > 1 and not bool((flat == flat[0]).all()):
                raise ValueError(
                    "per-sample timesteps that differ are not supported: every row of a batch must be at the same "
                    f"timestep, got {flat.tolist()}"
                )
            return float(flat[0].float())
        return float(timestep)

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` (a value of ``timesteps``, not an index) in the schedule."""
        schedule = (self.timesteps if schedule_timesteps is None else schedule_timesteps).detach().cpu().float()
        value = torch.tensor(self._timestep_value(timestep), dtype=torch.float32)
        hits = (schedule == value).nonzero().flatten()
        if hits.numel() == 0:
            # values that went through another dtype (bf16 pipelines) or device: accept the nearest within 1e-3
            dist = (schedule - value).abs()
            nearest = int(dist.argmin())
            if float(dist[nearest]) <= 1e-3 * max(1.0, abs(float(value))):
                return nearest
            raise ValueError(
                f"timestep {float(value)} is not one of the scheduled timesteps {schedule.tolist()} (step() and "
                "scale_noise() take timestep values from scheduler.timesteps, not indices)"
            )
        return int(hits[0])

    def _index(self, timestep) -> int:
        if not self._plan:
            raise RuntimeError("call set_timesteps() before step() or scale_noise()")
        expected = self._step_index if self._step_index is not None else self._begin_index
        if expected is not None and expected < len(self._plan):
            value = self._timestep_value(timestep)
            if abs(float(self.timesteps[expected]) - value) <= 1e-3 * max(1.0, abs(value)):
                return expected
        return self.index_for_timestep(timestep)

    # -- the forward process (img2img) ------------------------------------------------------------------------
    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Forward marginal ``x_t = (1 - sigma_t) x_0 + sigma_t noise`` at ``timestep`` (one value for the whole
        batch, or one per row), as in diffusers (also honouring ``set_begin_index``)."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        if tuple(noise.shape) != tuple(sample.shape):
            raise ValueError(f"noise must have the sample's shape {tuple(sample.shape)}, got {tuple(noise.shape)}")
        ts = torch.as_tensor(timestep).reshape(-1)
        if ts.numel() not in (1, sample.shape[0]):
            raise ValueError(
                f"scale_noise takes one timestep or one per batch row ({sample.shape[0]}), got {ts.numel()}"
            )
        if self._plan and (self._begin_index is not None or self._step_index is not None):
            index = self._step_index if self._step_index is not None else self._begin_index
            sig = self.sigmas[index].reshape(1).double().cpu().expand(ts.numel())
        elif self._plan:
            sig = torch.tensor([float(self.sigmas[self.index_for_timestep(t)]) for t in ts], dtype=torch.float64)
        else:  # before set_timesteps: diffusers' training table
            sig = self.sigmas.double().cpu()[[self.index_for_timestep(t) for t in ts]]
        alpha, sigma = self.path.alpha_sigma(sig)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        cast = dict(device=sample.device, dtype=sample.dtype)
        return alpha.to(**cast).reshape(shape) * sample + sigma.to(**cast).reshape(shape) * noise

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    # -- the step --------------------------------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> SkippedStepFlowSchedulerOutput | tuple:
        """One reverse step from ``timestep`` (a value of ``timesteps``) to the next scheduled sigma.

        ``model_output`` is the velocity ``v = eps - x0`` (what flow-matching models predict). ``kwargs``: ``eta``
        (override for this step), ``variance_noise`` (the noise to inject instead of drawing it), and
        ``FlowMatchEulerDiscreteScheduler``'s ``s_churn``/``s_tmin``/``s_tmax``/``s_noise`` (ignored there too);
        ``per_token_timesteps`` is refused.
        """
        unknown = set(kwargs) - set(_STEP_KWARGS)
        if unknown:
            raise TypeError(f"step() got unexpected keyword arguments {sorted(unknown)}; accepted: {_STEP_KWARGS}")
        if kwargs.get("per_token_timesteps") is not None:
            raise ValueError("per_token_timesteps (a different noise level per token) is not supported")
        if isinstance(sample, torch.Tensor) and sample.ndim == 0:
            raise ValueError("sample must have a leading batch axis, got a 0-d tensor")
        index = self._index(timestep)
        prev_sample, x0 = self._stepper.step(index, model_output, sample, generator, kwargs.get("variance_noise"),
                                             kwargs.get("eta"))
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, x0
        return SkippedStepFlowSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


__all__ = [
    "SkippedStepFlowScheduler",
    "SkippedStepFlowSchedulerOutput",
]
