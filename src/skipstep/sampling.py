"""``skipstep.sample``: the sampling loop over any model callable (the functional front end)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .gaussian_data import check_data_moments, gaussian_data_x0
from .paths import DiscreteVPPath, GaussianPath, RectifiedFlowPath
from .plan import DEFAULT_EXTRAPOLATION_GAIN, check_extrapolation_gain, plan_steps, resolve_extrapolation_gain
from .predictions import X0Clipping, check_prediction_type, unwrap_model_output
from .steps import (DEFAULT_ETA, DEFAULT_FLOW_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_SPACING_POWER,
                    DEFAULT_TIMESTEP_SPACING, DEFAULT_USE_CORRECTOR, DEFAULT_USE_LEARNED_VARIANCE, StepConfig,
                    TrajectoryStepper, check_finite, check_guidance_hint, noise_variance_settings, placement_split,
                    settings_for_guidance)
from .timesteps import analytic_first_step_grid, select_timesteps, validate_timesteps
from .tuned_schedules import sampling_settings_from_tuned_schedule


def infer_model_dtype(model: Callable) -> torch.dtype | None:
    """The floating dtype of a ``torch.nn.Module``'s parameters (also of a bound method such as ``unet.forward``);
    ``None`` for any other callable (a lambda or function hides its module: pass ``model_dtype=``)."""
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "__self__", None)
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def _check_inputs(model: Callable, shape: tuple, device: torch.device, generator) -> None:
    """Refuse, with the reason, what would otherwise fail deep inside the loop."""
    if len(shape) == 0 or shape[0] == 0:
        raise ValueError(f"a sample batch needs a leading batch dimension of at least 1, got shape {shape}")
    if isinstance(generator, (list, tuple)) and len(generator) != shape[0]:
        raise ValueError(f"generator is a list of {len(generator)} generator(s) for a batch of {shape[0]} "
                         "samples: pass one generator per sample, or a single generator")
    if device.type == "meta":
        raise ValueError("samples cannot be drawn on the meta device (it holds no data); use a real device")
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "__self__", None)
    if isinstance(module, torch.nn.Module) and any(p.device.type == "meta" for p in module.parameters()):
        raise ValueError("the model's weights are on the meta device (never loaded, e.g. built with "
                         "device='meta'): load them or move the model to a real device")


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@torch.no_grad()
def sample(
    model: Callable,
    shape: Sequence[int] | None = None,
    *,
    path: GaussianPath | None = None,
    num_steps: int | None = 10,
    timesteps: Sequence | torch.Tensor | None = None,
    spacing: str | Sequence | torch.Tensor = DEFAULT_TIMESTEP_SPACING,
    spacing_power: float | None = DEFAULT_SPACING_POWER,
    eta=None,
    variance_type: str = "small",
    solver_order: int = DEFAULT_SOLVER_ORDER,
    use_corrector: bool = DEFAULT_USE_CORRECTOR,
    eps_mse: Sequence[float] | torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    clipping: X0Clipping | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    model_dtype: torch.dtype | None = None,
    check_finite_values: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = True,
    callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
    tuned_schedule=None,
    data_mean: float | torch.Tensor | None = None,
    data_var: float | torch.Tensor | None = None,
    guidance_scale: float | None = None,
    use_learned_variance: bool = DEFAULT_USE_LEARNED_VARIANCE,
    extrapolation_gain: float | None = DEFAULT_EXTRAPOLATION_GAIN,
) -> torch.Tensor:
    """Draw samples with the skipped-step posterior family.

    ``model(x_t, t, **model_kwargs)`` is called with ``t`` a tensor of shape ``(batch,)`` holding the current time
    (int64 on a discrete chain, float64 otherwise, on the sample's device); it returns ``epsilon``/``sample``/
    ``v_prediction``/``flow`` outputs (plus ``C`` variance channels for ``variance_type='learned'``, which are set
    aside unless ``use_learned_variance=True`` -- the default injects the posterior's variance, see
    ``skipstep.DEFAULT_USE_LEARNED_VARIANCE``).

    Start from ``noise`` (``x_T``) or from ``randn(shape, generator)``. ``generator`` may be a list with one
    generator per sample (exactly one per sample), which makes each sample independent of the batch it is drawn in.
    ``spacing`` is a spacing name or an explicit descending list of timesteps (the same as ``timesteps=``);
    ``spacing_power`` is the exponent of the ``power`` spacing (:func:`skipstep.timesteps.power_grid`); ``None``
    (the default, with the default ``spacing="power"``) is the rule of :func:`skipstep.timesteps.spacing_power_for`:
    ``p = 1 + 4/n`` below 7 steps (on a discrete chain placed at the log-SNRs it gives on DDPM's linear chain,
    :func:`skipstep.timesteps.snr_matched_power_grid`), ``1 + 2/n`` from 7 on (from 8 under strong guidance).
    ``eta`` is a constant, a per-step list or a schedule string (:func:`skipstep.plan.resolve_eta_schedule`);
    ``None`` (the default) is ``skipstep.DEFAULT_ETA = "below:7:0:1"`` -- deterministic for fewer than 7 steps, the
    skipped-step posterior from 7 on -- and, on a :class:`~skipstep.paths.RectifiedFlowPath`,
    ``skipstep.DEFAULT_FLOW_ETA`` (from 7 steps on, the posterior only while ``sigma >= 1/2``).
    ``solver_order`` 2 or 3 makes each step a multistep (higher-order) posterior step over the previous ``x0_hat``
    (order 1 is the plain step); ``use_corrector`` redoes each step once the model has been evaluated at its end
    (one more interpolation node, same noise, no extra evaluation). ``extrapolation_gain``: ``G`` of the order-2
    steps, ``D = x0_0 + G w_1 (x0_1 - x0_0)``; ``None`` (the default) is ``1 + (3/n)^3`` at ``n < 7`` steps on a VP
    chain with no guidance scale above 1 given, else 1 (:func:`skipstep.plan.resolve_extrapolation_gain`).
    ``variance_type='optimal'`` needs ``eps_mse`` (see :mod:`skipstep.optimal_variance`).
    ``guidance_scale``: the classifier-free guidance scale ``w`` the ``model`` applies inside (``None``: unknown);
    settings left at their defaults become the strong-guidance member's: below 7 steps the corrector is off from
    w = 5 on, from 7 steps on ``eta`` and ``solver_order`` become ``1.0`` and ``1`` from
    ``skipstep.STRONG_GUIDANCE_FROM`` (6) on (:func:`skipstep.steps.settings_for_guidance`). ``callback(i, t, x_s, x0_hat)`` runs after every
    step. Returns ``x_0`` in ``dtype``.

    Precision: the model is called with ``x_t`` in ``model_dtype`` -- by default the dtype of its parameters when
    it is a ``torch.nn.Module`` or a bound method of one (``unet.forward``), else float32; a lambda or function
    hides the module, so ``lambda x, t: unet(x, t).sample`` around a half-precision UNet needs
    ``model_dtype=torch.float16``. The step arithmetic stays in float32 whatever the model's dtype.
    ``check_finite_values``: raise ``FloatingPointError`` naming the step when the model output or the sample
    becomes NaN or inf (one reduction per tensor and step).
    ``tuned_schedule``: a tuned schedule (:class:`skipstep.tuned_schedules.TunedSchedule` or a file path); it fixes
    the timesteps, ``eta``, ``solver_order``, ``variance_type``, ``use_corrector`` and ``extrapolation_gain``, as
    tuned (defaults are
    replaced, conflicting non-defaults refused).

    ``data_mean`` (and optionally ``data_var``, per-pixel or scalar; default 0) turn on the *analytic first step*
    (:mod:`skipstep.gaussian_data`): the first step's ``x0_hat`` is the closed form of data ``N(mu, diag(v))``,

        x0_hat = mu + alpha_t v / (alpha_t^2 v + sigma_t^2) (x_t - alpha_t mu),

    and the model is not called there; it then enters the multistep history and the corrector as a model's
    ``x0_hat`` would. Both broadcast to the sample shape (e.g. ``(C, H, W)``). With ``num_steps=n`` the model is
    called ``n`` times and the sampler takes ``n + 1`` steps: the ``spacing`` grid of ``n + 1`` steps, whose
    first time is the analytic one (:func:`skipstep.timesteps.analytic_first_step_grid`); on exactly Gaussian
    data this is the ``n + 1``-step sampler. Explicit ``timesteps`` list every visited time, the first being
    the analytic one (``len(timesteps) - 1`` evaluations). A per-step ``eta`` list has one value per step, the analytic one included. The callback also
    runs after the analytic step. Not combined with ``tuned_schedule`` (a schedule is tuned for its NFE).
    """
    path = path if path is not None else DiscreteVPPath.from_config({})
    if eta is None:
        eta = DEFAULT_FLOW_ETA if isinstance(path, RectifiedFlowPath) else DEFAULT_ETA
    check_guidance_hint(guidance_scale)  # refused even where a tuned schedule makes it moot
    if extrapolation_gain is not None:
        check_extrapolation_gain(extrapolation_gain)
    if tuned_schedule is not None:
        timesteps, eta, solver_order, variance_type, use_learned_variance, use_corrector, extrapolation_gain = \
            sampling_settings_from_tuned_schedule(tuned_schedule, path, timesteps, num_steps, eta, solver_order,
                                                  variance_type, extrapolation_gain)
    if not isinstance(spacing, str):  # an explicit list
        if timesteps is not None:
            raise ValueError("give the timesteps either as spacing=[...] or as timesteps=[...], not both")
        timesteps, spacing = spacing, "trailing"
    analytic = data_mean is not None
    if data_var is not None and not analytic:
        raise ValueError("data_var is the data variance of the analytic first step; it needs data_mean too")
    if analytic and tuned_schedule is not None:
        raise ValueError("data_mean (the analytic first step) cannot be combined with tuned_schedule: a tuned "
                         "schedule fixes the timesteps of every evaluation for its own NFE")
    if timesteps is not None:
        ts = validate_timesteps(path, timesteps)
        if analytic and len(ts) < 2:
            raise ValueError("with data_mean (the analytic first step) the timesteps list the analytic time first "
                             f"and then at least one model time: give at least 2 timesteps, got {ts.tolist()}")
    else:
        if num_steps is None:
            raise ValueError("give num_steps or timesteps")
        split = placement_split(guidance_scale)
        if analytic:
            ts = analytic_first_step_grid(
                lambda k: select_timesteps(path, k, spacing, power=spacing_power, few_steps_below=split), num_steps)
        else:
            ts = select_timesteps(path, num_steps, spacing, power=spacing_power, few_steps_below=split)
    use_corrector = _check_bool(use_corrector, "use_corrector")
    if tuned_schedule is None:  # a tuned schedule fixes eta, order and corrector whatever the guidance
        eta, solver_order, use_corrector = settings_for_guidance(guidance_scale, eta, solver_order, use_corrector,
                                                                 len(ts))
    noise_variance, variance_channels = noise_variance_settings(variance_type, use_learned_variance)
    config = StepConfig(
        prediction_type=check_prediction_type(prediction_type),
        variance_type=noise_variance,
        variance_channels=variance_channels,
        clipping=clipping or X0Clipping(),
        solver_order=solver_order,
        check_finite=check_finite_values,
        use_corrector=use_corrector,
    )
    gain = resolve_extrapolation_gain(extrapolation_gain, len(ts), flow=isinstance(path, RectifiedFlowPath),
                                      guidance_scale=check_guidance_hint(guidance_scale))
    plan = plan_steps(path, ts, eta, eps_mse, solver_order=config.solver_order, use_corrector=config.use_corrector,
                      extrapolation_gain=gain)
    if noise is None:
        if shape is None:
            raise ValueError("give shape or noise")
        shape = tuple(shape)
        _check_inputs(model, shape, torch.device(device or "cpu"), generator)  # before drawing the noise
        noise = randn_tensor(shape, generator=generator, device=torch.device(device or "cpu"), dtype=torch.float32)
    elif device is not None:
        noise = noise.to(device)
    _check_inputs(model, tuple(noise.shape), noise.device, generator)
    moments = check_data_moments(data_mean, data_var, tuple(noise.shape)) if analytic else None
    x = noise.to(torch.float32)
    batch = x.shape[0]
    model_dtype = model_dtype or infer_model_dtype(model) or torch.float32
    time_dtype = torch.int64 if path.discrete else torch.float64
    stepper = TrajectoryStepper(plan, config)
    for step in tqdm(plan, disable=not progress, desc="sampling", leave=False):
        if moments is not None and step.index == 0:  # the analytic first step: no evaluation
            x, x0 = stepper.step_from_x0(0, gaussian_data_x0(x, step.alpha_t, step.sigma_t, *moments), x, generator)
        else:
            t_batch = torch.full((batch,), step.t, dtype=time_dtype, device=x.device)
            out = unwrap_model_output(model(x.to(model_dtype), t_batch, **(model_kwargs or {})))
            if step.index == int(analytic) and isinstance(out, torch.Tensor) and out.device.type == "meta":
                raise ValueError("the model returned a tensor on the meta device: its weights were never loaded "
                                 "(e.g. built with device='meta'); load them or move the model to a real device")
            x, x0 = stepper.step(step.index, out, x, generator)
        if check_finite_values:  # the step arithmetic can overflow even when the model output is finite
            check_finite(x, "the sample", f"step {step.index} (t={step.t})")
        if callback is not None:
            callback(step.index, step.t, x, x0)
    return x.to(dtype)


__all__ = ["infer_model_dtype", "sample"]
