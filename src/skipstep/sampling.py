"""The sampling loop over any model callable, and the step plan shared with the diffusers schedulers."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .plan import plan_steps
from .predictions import X0Clipping, check_prediction_type
from .schedules import DiscreteVPPath, GaussianPath
from .steps import StepConfig, canonical_variance_type, needs_noise, posterior_step
from .timesteps import select_timesteps, validate_timesteps

#: The library's default sampler, chosen by measurement on selection seeds disjoint from the reported ones
#: (docs/results.md, "Choosing the default"): the paper's Markovian skipped-step posterior (eta = 1) with
#: second-order multistep posterior steps. ``eta=1.0, solver_order=1`` is the paper's sampler as published.
DEFAULT_ETA = 1.0
DEFAULT_SOLVER_ORDER = 2


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


def _unwrap_model_output(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):  # diffusers' UNet2DOutput / Transformer2DModelOutput
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model must return a tensor (or an object with .sample, or a tuple); got {type(out).__name__}")


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
    schedule=None,
) -> torch.Tensor:
    """Draw samples with the skipped-step posterior family.

    ``model(x_t, t, **model_kwargs)`` is called with ``t`` a tensor of shape ``(batch,)`` holding the current time
    (int64 on a discrete chain, float64 otherwise, on the sample's device); it returns ``epsilon``/``sample``/
    ``v_prediction``/``flow`` outputs (plus ``C`` variance channels for ``variance_type='learned'``).

    Start from ``noise`` (``x_T``) or from ``randn(shape, generator)``. ``generator`` may be a list with one
    generator per sample, which makes each sample independent of the batch it is drawn in.
    ``eta`` is a constant, a per-step list or a schedule string (:func:`skipstep.steps.resolve_eta_schedule`).
    ``solver_order`` 2 or 3 makes each step a multistep (higher-order) posterior step over the previous ``x0_hat``
    (order 1 is the plain step). ``variance_type='optimal'`` needs ``eps_mse`` (see :mod:`skipstep.analytic`).
    ``callback(i, t, x_s, x0_hat)`` runs after every step. Returns ``x_0`` in ``dtype``.
    ``schedule``: a tuned schedule (:class:`skipstep.tuning.TunedSchedule` or a file path); it fixes the timesteps,
    ``eta``, ``solver_order`` and ``variance_type`` (defaults are replaced, conflicting non-defaults refused).
    """
    path = path if path is not None else DiscreteVPPath.from_config({})
    if schedule is not None:
        from .tuning import sampling_settings_from_schedule

        timesteps, eta, solver_order, variance_type = sampling_settings_from_schedule(
            schedule, path, timesteps, num_steps, eta, solver_order, variance_type)
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
    plan = plan_steps(path, ts, eta, eps_mse)
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
        out = _unwrap_model_output(model(x, t_batch, **(model_kwargs or {})))
        x, x0 = stepper.step(step.index, out, x, generator)
        if callback is not None:
            callback(step.index, step.t, x, x0)
    return x.to(dtype)


__all__ = ["DEFAULT_ETA", "DEFAULT_SOLVER_ORDER", "TrajectoryStepper", "sample"]
