"""The sampling loop over any model callable, and the step plan shared with the diffusers schedulers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .posterior import Posterior, gaussian_posterior
from .predictions import X0Clipping, check_prediction_type
from .schedules import DiscreteVPPath, GaussianPath
from .steps import StepConfig, canonical_variance_type, needs_noise, posterior_step, resolve_eta_schedule
from .timesteps import select_timesteps, validate_timesteps

#: The library's default eta schedule (see docs/results.md for the measurement that chose it).
DEFAULT_ETA = 1.0


@dataclass(frozen=True)
class PlannedStep:
    """Step ``index`` goes from time ``t`` to ``s`` (``s`` is the clean time on the last step)."""

    index: int
    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    posterior: Posterior

    def with_eta(self, eta: float) -> Posterior:
        """This step's posterior with another ``eta`` (a call-time override)."""
        if eta == self.posterior.eta:
            return self.posterior
        return gaussian_posterior(self.alpha_t, self.sigma_t, self.alpha_s, self.sigma_s, float(eta))


def plan_steps(path: GaussianPath, timesteps: torch.Tensor, eta=DEFAULT_ETA) -> list[PlannedStep]:
    """Precompute every step's posterior coefficients (float64 scalars) for a descending list of timesteps."""
    ts = [float(v) for v in timesteps.tolist()]
    etas = resolve_eta_schedule(eta, len(ts))
    targets = ts[1:] + [float(path.clean_time)]
    alphas, sigmas = path.alpha_sigma(torch.as_tensor(ts + [float(path.clean_time)]))
    if path.discrete:
        ts, targets = [int(v) for v in ts], [int(v) for v in targets]
    plan = []
    for i, (t, s) in enumerate(zip(ts, targets)):
        a_t, s_t, a_s, s_s = float(alphas[i]), float(sigmas[i]), float(alphas[i + 1]), float(sigmas[i + 1])
        plan.append(PlannedStep(i, t, s, a_t, s_t, a_s, s_s, gaussian_posterior(a_t, s_t, a_s, s_s, etas[i])))
    return plan


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
    prediction_type: str = "epsilon",
    clipping: X0Clipping | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    model_kwargs: dict | None = None,
    progress: bool = True,
    callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Draw samples with the skipped-step posterior family.

    ``model(x_t, t, **model_kwargs)`` is called with ``t`` a tensor of shape ``(batch,)`` holding the current time
    (int64 on a discrete chain, float64 otherwise, on the sample's device); it returns ``epsilon``/``sample``/
    ``v_prediction``/``flow`` outputs (plus ``C`` variance channels for ``variance_type='learned'``).

    Start from ``noise`` (``x_T``) or from ``randn(shape, generator)``. ``generator`` may be a list with one
    generator per sample, which makes each sample independent of the batch it is drawn in.
    ``eta`` is a constant, a per-step list or a schedule string (:func:`skipstep.steps.resolve_eta_schedule`).
    ``callback(i, t, x_s, x0_hat)`` runs after every step. Returns ``x_0`` in ``dtype``.
    """
    path = path if path is not None else DiscreteVPPath.from_config({})
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
    )
    plan = plan_steps(path, ts, eta)
    if noise is None:
        if shape is None:
            raise ValueError("give shape or noise")
        noise = randn_tensor(tuple(shape), generator=generator, device=torch.device(device or "cpu"), dtype=torch.float32)
    elif device is not None:
        noise = noise.to(device)
    x = noise.to(torch.float32)
    batch = x.shape[0]
    time_dtype = torch.int64 if path.discrete else torch.float64
    for step in tqdm(plan, disable=not progress, desc="sampling", leave=False):
        t_batch = torch.full((batch,), step.t, dtype=time_dtype, device=x.device)
        out = _unwrap_model_output(model(x, t_batch, **(model_kwargs or {})))
        step_noise = None
        if needs_noise(step.posterior):
            step_noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x, x0 = posterior_step(out, x, step.alpha_t, step.sigma_t, step.posterior, config, step_noise,
                               step_name=f"step {step.index} (t={step.t})")
        if callback is not None:
            callback(step.index, step.t, x, x0)
    return x.to(dtype)


__all__ = ["DEFAULT_ETA", "PlannedStep", "plan_steps", "sample"]
