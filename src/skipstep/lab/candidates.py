"""Candidates for the default sampler (family ``candidate``): the members of the posterior family among which
:mod:`skipstep.lab.selection` chooses, leave-one-model-out.

Each candidate is a step placement and a solver, every one with the corrector (``use_corrector=True``):

* placement ``p<P>``: the ``power`` spacing with a fixed exponent ``P`` (:func:`skipstep.timesteps.power_grid`;
  ``p1`` is the DPM-Solver family's leading grid), or ``pn<C>``: the exponent ``1 + C / n`` for ``n`` steps (more
  curvature for fewer steps);
* solver ``e<eta>-o<order>``: the constant ``eta`` and multistep order; ``ew-o<order>``: an eta window, noise
  (``eta = 1``) on the middle steps only and ``eta = 0`` on the first and last -- SA-Solver's default (tau = 1 only
  for 200 <= t <= 800) in step-index form; a ``-lof`` suffix: DPM-Solver's ``lower_order_final`` (below 15 steps
  the second-to-last step is at most second order; the last step, to clean data, is first order in every
  candidate: ``x0_hat`` of the last evaluation, i.e. it denoises to zero).

On a VP chain they are :class:`~skipstep.SkippedStepScheduler` s, on a flow model
:class:`~skipstep.SkippedStepFlowScheduler` s (whose ``power`` spacing starts at ``t = 1``, then the model's shift),
both built from the model's scheduler config with its x0 clipping.
"""

from __future__ import annotations

from typing import Callable

from ..diffusers_schedulers import SkippedStepScheduler
from ..flow_schedulers import SkippedStepFlowScheduler
from .sampler_recipes import clip_overrides, from_config_accepting, is_flow_config, register_sampler

#: placement name -> exponent of the power spacing as a function of the step count n
PLACEMENTS: dict[str, Callable[[int], float]] = {
    "p1": lambda n: 1.0,
    "p1.25": lambda n: 1.25,
    "pn2": lambda n: 1.0 + 2.0 / n,
    "pn4": lambda n: 1.0 + 4.0 / n,
}
#: solver name -> (eta, solver_order, lower_order_final); eta ``WINDOW`` is the schedule string of
#: :func:`skipstep.plan.window_schedule`
WINDOW = "window"
SOLVERS: dict[str, tuple[float | str, int, bool]] = {
    "e0-o2": (0.0, 2, False),
    "e0-o3": (0.0, 3, False),
    "e0-o3-lof": (0.0, 3, True),
    "e0.5-o2": (0.5, 2, False),
    "e0.5-o3": (0.5, 3, False),
    "e1-o2": (1.0, 2, False),
    "e1-o3": (1.0, 3, False),
    "ew-o2": (WINDOW, 2, False),
    "ew-o3": (WINDOW, 3, False),
}


PLACEMENT_TEXT = {"p1": "power spacing p=1 (the DPM-Solver family's leading grid)", "p1.25": "power spacing p=1.25",
                  "pn2": "power spacing p=1+2/n", "pn4": "power spacing p=1+4/n"}


def candidate_name(placement: str, solver: str) -> str:
    return f"cand-{placement}-{solver}"


def build_candidate(config: dict, steps: int, power: float, eta: float | str, order: int,
                    lower_order_final: bool = False):
    """The candidate's scheduler for ``steps`` steps from a model's scheduler config."""
    common = dict(eta=eta, solver_order=order, use_corrector=True, lower_order_final=lower_order_final,
                  timestep_spacing="power", spacing_power=power)
    if is_flow_config(config):
        return from_config_accepting(SkippedStepFlowScheduler, config, **common)
    return from_config_accepting(SkippedStepScheduler, config, **common, **clip_overrides(config, "clip_sample"))


def _register() -> None:
    for placement, power_of in PLACEMENTS.items():
        for solver, (eta, order, lof) in SOLVERS.items():
            def factory(config: dict, steps: int, power_of=power_of, eta=eta, order=order, lof=lof):
                return build_candidate(config, steps, power_of(steps), eta, order, lof)

            register_sampler(
                candidate_name(placement, solver), factory, family="candidate", stochastic=eta != 0,
                learned_variance=True,
                description=f"default candidate: {PLACEMENT_TEXT[placement]}, "
                            f"{'eta window (1 on the middle steps)' if eta == WINDOW else f'eta={eta:g}'}, "
                            f"order {order}, corrector{', lower_order_final' if lof else ''}",
                settings={"class": "SkippedStepScheduler / SkippedStepFlowScheduler", "timestep_spacing": "power",
                          "spacing_power": placement, "eta": eta, "solver_order": order, "use_corrector": True,
                          "lower_order_final": lof})


_register()

__all__ = ["PLACEMENTS", "SOLVERS", "WINDOW", "build_candidate", "candidate_name"]
