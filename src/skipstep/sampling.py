"""``skipstep.sample``: the sampling loop over any model callable (the functional front end)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .paths import DiscreteVPPath, GaussianPath
from .plan import plan_steps
from .predictions import X0Clipping, check_prediction_type, unwrap_model_output
from .steps import DEFAULT_ETA, DEFAULT_SOLVER_ORDER, StepConfig, TrajectoryStepper, canonical_variance_type
from .timesteps import select_timesteps, validate_timesteps
from .tuned_schedules import sampling_settings_from_tuned_schedule


@torch.no_grad()
def sample(
    model: Callable,
    shape: Sequence[int] | None = None,
    *,
    path: GaussianPath | None = None,
    num_steps: int | None = 10,
    timesteps: Sequence | torch.Tensor | None = None,
    spacing: str = "trailing",
    eta=DEFAULT_ETA,
    variance_type: str = "small",
    solver_order: int = DEFAULT_SOLVER_ORDER,
    eps_mse: Sequence[float] | torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    clipping: X0Clipping | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    model_kwargs: dict | None = None,
    progress: bool = True,
    callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
    tuned_schedule=None,
) -> torch.Tensor:
    """Draw samples with the skipped-step posterior family.

    ``model(x_t, t, **model_kwargs)`` is called with ``t`` a tensor of shape ``(batch,)`` holding the current time
    (int64 on a discrete chain, float64 otherwise, on the sample's device); it returns ``epsilon``/``sample``/
    ``v_prediction``/``flow`` outputs (plus ``C`` variance channels for ``variance_type='learned'``).

    Start from ``noise`` (``x_T``) or from ``randn(shape, generator)``. ``generator`` may be a list with one
    generator per sample, which makes each sample independent of the batch it is drawn in.
    ``eta`` is a constant, a per-step list or a schedule string (:func:`skipstep.plan.resolve_eta_schedule`).
    ``solver_order`` 2 or 3 makes each step a multistep (higher-order) posterior step over the previous ``x0_hat``
    (order 1 is the plain step). ``variance_type='optimal'`` needs ``eps_mse`` (see :mod:`skipstep.optimal_variance`).
    ``callback(i, t, x_s, x0_hat)`` runs after every step. Returns ``x_0`` in ``dtype``.
    ``tuned_schedule``: a tuned schedule (:class:`skipstep.tuned_schedules.TunedSchedule` or a file path); it fixes the timesteps,
    ``eta``, ``solver_order`` and ``variance_type`` (defaults are replaced, conflicting non-defaults refused).
    """
    path = path if path is not None else DiscreteVPPath.from_config({})
    if tuned_schedule is not None:
        timesteps, eta, solver_order, variance_type = sampling_settings_from_tuned_schedule(
            tuned_schedule, path, timesteps, num_steps, eta, solver_order, variance_type)
    if timesteps is not None:
        ts = validate_timesteps(path, timesteps)
    else:
        if num_steps is None:
            raise ValueError("give num_steps or timesteps")
        ts = select_timesteps(path, num_steps, spacing)
    config = StepConfig(
        prediction_type=check_prediction_type(prediction_type),
        variance_type=canonical_variance_type(variance_type),
        clipping=clipping or X0Clipping(),
        solver_order=solver_order,
    )
    plan = plan_steps(path, ts, eta, eps_mse, solver_order=config.solver_order)
    if noise is None:
        if shape is None:
            raise ValueError("give shape or noise")
        noise = randn_tensor(tuple(shape), generator=generator, device=torch.device(device or "cpu"), dtype=torch.float32)
    elif device is not None:
        noise = noise.to(device)
    x = noise.to(torch.float32)
    batch = x.shape[0]
    time_dtype = torch.int64 if path.discrete else torch.float64
    stepper = TrajectoryStepper(plan, config)
    for step in tqdm(plan, disable=not progress, desc="sampling", leave=False):
        t_batch = torch.full((batch,), step.t, dtype=time_dtype, device=x.device)
        out = unwrap_model_output(model(x, t_batch, **(model_kwargs or {})))
        x, x0 = stepper.step(step.index, out, x, generator)
        if callback is not None:
            callback(step.index, step.t, x, x0)
    return x.to(dtype)


__all__ = ["sample"]
