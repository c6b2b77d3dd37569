"""The grids ``skipstep tune`` searches on and the plain spacings its check compares against: a discrete VP chain's
integer timesteps, or a rectified-flow model's grid of model times (:class:`FlowGrid`), with the library's plain
spacings of each (:func:`plain_spacings`, :func:`flow_plain_spacings`) and the grid of the converged reference
solution (:func:`reference_indices`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..flow_schedulers import SkippedStepFlowScheduler
from ..paths import DiscreteVPPath
from ..steps import placement_split
from ..timesteps import FEW_STEPS_BELOW, make_strictly_descending, select_timesteps, sigma_spaced_timesteps
from .sampler_recipes import from_config_accepting


#: the name of the default step rule among the plain spacings (:func:`default_rule_grid` finds it by it)
DEFAULT_RULE_LABEL = "power, the default rule"


def plain_spacings(path, n: int, steps_offset: int = 0, few_steps_below: int = FEW_STEPS_BELOW
                   ) -> dict[str, list[int]]:
    """Every plain spacing the library's scheduler offers at ``n`` steps (:mod:`skipstep.timesteps`): trailing,
    leading, linspace (and the DPM-Solver family's grids of the last two), quadratic, log-SNR, the power spacing at
    the exponents of the candidate placements (1, 1.25, 1 + 2/n, 1 + 4/n), the default rule (``power=None``: 1 + 4/n
    matched in log-SNR below 7 steps, 1 + 2/n from 7), and the sigma spacings (Karras,
    exponential, beta, Lu). Spacings that give the same timesteps are merged (``"exponential / lu"``).
    ``few_steps_below``: where the default rule's two regimes split (8 under strong guidance, as the scheduler
    told that scale places its steps: :func:`skipstep.steps.placement_split`)."""
    specs: list[tuple[str, Callable[[], Any]]] = [
        ("trailing", lambda: select_timesteps(path, n, "trailing")),
        ("leading", lambda: select_timesteps(path, n, "leading", steps_offset)),
        ("leading (DPM-Solver grid)", lambda: select_timesteps(path, n, "leading", steps_offset, grid="drop_zero")),
        ("linspace", lambda: select_timesteps(path, n, "linspace")),
        ("linspace (DPM-Solver grid)", lambda: select_timesteps(path, n, "linspace", grid="drop_zero")),
        ("quadratic", lambda: select_timesteps(path, n, "quadratic")),
        ("log-SNR", lambda: select_timesteps(path, n, "log_snr"))]
    for label, p in _power_exponents(n):
        specs.append((f"power p={label}", lambda p=p: select_timesteps(path, n, "power", power=p)))
    # the default rule: p = 1 + 4/n matched in log-SNR below few_steps_below steps, 1 + 2/n from there on
    specs.append((DEFAULT_RULE_LABEL, lambda: select_timesteps(path, n, "power", power=None,
                                                                few_steps_below=few_steps_below)))
    for kind in ("karras", "exponential", "beta", "lu"):
        specs.append((kind, lambda kind=kind: sigma_spaced_timesteps(path, n, kind)))
    return _merge_same_grids((name, lambda make=make: [int(t) for t in make().tolist()]) for name, make in specs)

def _power_exponents(n: int) -> tuple[tuple[str, float], ...]:
    """The power spacing's exponents of the candidate placements, with their labels."""
    return (("1", 1.0), ("1.25", 1.25), ("1+2/n", 1.0 + 2.0 / n), ("1+4/n", 1.0 + 4.0 / n))

def default_rule_grid(spacings: dict[str, list[int]]) -> list[int]:
    """The default rule's grid among the named ``spacings`` of :func:`plain_spacings` / :func:`flow_plain_spacings`
    (its name may be joined with others that gave the same grid); the first spacing if it could not be made."""
    for name, ts in spacings.items():
        if DEFAULT_RULE_LABEL in name.split(" / "):
            return ts
    return next(iter(spacings.values()))


def _merge_same_grids(named_grids) -> dict[str, list[int]]:
    """``{name: timesteps}`` of ``(name, make)`` pairs, names joined (``"exponential / lu"``) where the grids are
    the same; a spacing that cannot be made (``ValueError``, ``ImportError``) is left out."""
    by_ts: dict[tuple[int, ...], list[str]] = {}
    for name, make in named_grids:
        try:
            ts = tuple(make())
        except (ValueError, ImportError):  # e.g. steps_offset past T-1, beta without scipy
            continue
        by_ts.setdefault(ts, []).append(name)
    return {" / ".join(names): list(ts) for ts, names in by_ts.items()}

class FlowGrid:
    r"""The search space of a rectified-flow model: index ``k = 0..T-1`` is the model time ``t = k + 1`` (what
    ``FlowMatchEulerDiscreteScheduler`` passes the model), at

        sigma_k = (k + 1) / T,    lambda_k = 2 log((1 - sigma_k) / sigma_k)

    (``-inf`` at ``k = T - 1``, pure noise, read as a zero terminal SNR). It has the attributes of a discrete path
    the search reads (``t_max``, ``log_snr``)."""

    discrete = True

    def __init__(self, num_train_timesteps: int):
        self.T = int(num_train_timesteps)
        if self.T < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps!r}")
        self.t_min, self.t_max = 0, self.T - 1

    def sigma(self, index) -> torch.Tensor:
        return (torch.as_tensor(index, dtype=torch.float64) + 1.0) / self.T

    def model_time(self, index: int) -> int:
        """The model's time input ``t = k + 1`` (``sigma * T``) at grid index ``k``."""
        return int(index) + 1

    def log_snr(self, index) -> torch.Tensor:
        s = self.sigma(index)
        return 2.0 * (torch.log1p(-s) - torch.log(s))

    def indices(self, sigmas) -> list[int]:
        """The grid indices nearest to ``sigmas`` (strictly descending; pushed apart where two round together)."""
        k = np.round(np.asarray(sigmas, dtype=np.float64) * self.T) - 1
        return [int(v) for v in make_strictly_descending(np.clip(k, 0, self.T - 1), highest=self.T - 1)]

def tune_grid(loaded):
    """The grid the search moves on: the model's discrete VP chain, or a :class:`FlowGrid` for a flow model."""
    if loaded.regime == "flow":
        return FlowGrid(loaded.num_train_timesteps)
    return DiscreteVPPath.from_config(loaded.scheduler_config)

def schedule_timesteps(grid, indices: Sequence[int]) -> list[int]:
    """What a schedule file lists for the grid ``indices``: the VP chain's timesteps, or a flow model's times
    ``k + 1``."""
    return [grid.model_time(k) for k in indices] if isinstance(grid, FlowGrid) else [int(k) for k in indices]

def _flow_scheduler_sigmas(config: dict, n: int, **overrides) -> list[float]:
    sched = from_config_accepting(SkippedStepFlowScheduler, dict(config), **overrides)
    sched.set_timesteps(n)
    return sched.sigmas[:-1].double().tolist()

def flow_plain_spacings(config: dict, grid: FlowGrid, n: int) -> dict[str, list[int]]:
    """Every plain spacing the flow scheduler offers at ``n`` steps with the model's config (its shift):
    FlowMatchEuler's own sigmas (``linspace``), the power spacing at the exponents of :func:`plain_spacings` and
    the default rule, and the Karras, exponential and beta sigmas; snapped to ``grid``, same grids merged."""
    specs: list[tuple[str, dict]] = [("linspace (FlowMatchEuler)", {"timestep_spacing": "linspace"})]
    for label, p in _power_exponents(n):
        specs.append((f"power p={label}", {"timestep_spacing": "power", "spacing_power": p}))
    specs.append((DEFAULT_RULE_LABEL, {"timestep_spacing": "power", "spacing_power": None}))
    for kind in ("karras", "exponential", "beta"):
        specs.append((kind, {"timestep_spacing": "linspace", f"use_{kind}_sigmas": True}))
    return _merge_same_grids((name, lambda o=o: grid.indices(_flow_scheduler_sigmas(config, n, **o)))
                             for name, o in specs)

def model_plain_spacings(loaded, grid, n: int) -> dict[str, list[int]]:
    """:func:`plain_spacings` of a VP chain (the default rule placed as at ``loaded``'s guidance scale),
    :func:`flow_plain_spacings` of a flow model."""
    if isinstance(grid, FlowGrid):
        return flow_plain_spacings(loaded.scheduler_config, grid, n)
    return plain_spacings(grid, n, int(loaded.scheduler_config.get("steps_offset", 0) or 0),
                          placement_split(loaded.guidance_scale))

def reference_indices(loaded, steps: int) -> list[int]:
    """The grid of the converged deterministic solution: trailing spacing on a VP chain, FlowMatchEuler's own
    sigmas (the model's shift) snapped to the :class:`FlowGrid` on a flow model."""
    grid = tune_grid(loaded)
    if isinstance(grid, FlowGrid):
        return grid.indices(_flow_scheduler_sigmas(loaded.scheduler_config, steps, timestep_spacing="linspace"))
    return [int(t) for t in select_timesteps(grid, steps, "trailing").tolist()]


__all__ = ["DEFAULT_RULE_LABEL", "FlowGrid", "default_rule_grid", "flow_plain_spacings", "model_plain_spacings", "plain_spacings", "reference_indices",
           "schedule_timesteps", "tune_grid"]
