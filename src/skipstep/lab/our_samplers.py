"""skipstep's own samplers in the registry (group ``ours``), the reference sampler, and ``tuned:FILE``.

Every one of ours is built from the model's scheduler config: :class:`~skipstep.SkippedStepScheduler` for a VP
chain (trailing spacing, ``x0_hat`` clipped as the config says), :class:`~skipstep.SkippedStepFlowScheduler` for a
flow model (the sigmas of ``FlowMatchEulerDiscreteScheduler`` with the model's shift), with the same ``eta`` and
``solver_order``. A learned-variance model's variance is used (``variance_type="learned_range"`` from its config,
``use_learned_variance=True``): the members as they were defined. The default sets it aside
(``skipstep.DEFAULT_USE_LEARNED_VARIANCE``).
The ``default`` sampler is what a user gets: ``SkippedStepScheduler.from_config(model config)`` (the flow scheduler
for a flow model), nothing overridden but the lab's x0-clipping rule.

``reference-1000`` is the reference of trained models: ``T`` steps of our ``eta=1`` (every training timestep:
ancestral DDPM, with the model's learned variance if it has one) for VP models, 1000 steps of
``FlowMatchEulerDiscreteScheduler`` (the flow ODE) for flow models.
"""

from __future__ import annotations

from typing import Any, Callable

import diffusers

from ..diffusers_schedulers import SkippedStepScheduler
from ..flow_schedulers import SkippedStepFlowScheduler
from ..steps import DEFAULT_ETA, LEARNED_VARIANCE_TYPES
from ..tuned_schedules import TunedScheduleError, load_tuned_schedule, resolve_tuned_schedule_path
from .loaded_model import LoadedModel
from .sampler_recipes import (SamplerError, SamplerRecipe, clip_overrides, from_config_accepting, is_flow_config,
                              register_prefix, register_sampler)

__all__ = ["TUNED_PREFIX", "tuned_sampler"]

TUNED_PREFIX = "tuned:"


def _ours(config: dict, **kwargs):
    """SkippedStepScheduler (VP) or SkippedStepFlowScheduler (flow) from the model's config with ``kwargs``: the
    family members as they were defined (trailing spacing, or the flow scheduler's own sigmas; no corrector), not
    whatever the library's default is now."""
    kwargs = {"use_corrector": False, **kwargs}
    if is_flow_config(config):
        return from_config_accepting(SkippedStepFlowScheduler, config, **{"timestep_spacing": "linspace", **kwargs})
    if "variance_type" not in kwargs and config.get("variance_type") in LEARNED_VARIANCE_TYPES:
        kwargs["use_learned_variance"] = True
    return from_config_accepting(SkippedStepScheduler, config, **{"timestep_spacing": "trailing", **kwargs},
                                 **clip_overrides(config, "clip_sample"))


def _skipstep(eta_fn: Callable[[], Any], solver_order: int | Callable[[], int] = 1):
    def factory(config: dict, steps: int):
        order = solver_order() if callable(solver_order) else solver_order
        return _ours(config, eta=eta_fn(), solver_order=order)

    return factory


def _needs_unconditional_vp(loaded: LoadedModel) -> str | None:
    if loaded.regime != "vp":
        return "the optimal variance is a table of the VP chain's timesteps; this is a flow model"
    if loaded.conditioning is not None:
        return ("the optimal variance is estimated from the unconditional model's epsilon error on data; it is "
                "not defined for a class-conditional model under guidance")
    if loaded.real_data is None and loaded.reference is None:
        return "the optimal variance is estimated on data samples, and this model comes with none"
    return None


def _register_optimal(members: dict[str, tuple[Any, int]]) -> None:
    """``NAME-opt``: the member with the optimal (Analytic-DPM) variance instead of the posterior's."""
    for name, (eta, order) in members.items():
        def factory(config: dict, steps: int, eta=eta, order=order):
            return _ours(config, eta=eta, solver_order=order, variance_type="optimal")

        register_sampler(name, factory, family="skipstep", stochastic=True, refusal=_needs_unconditional_vp,
                         description=f"eta={eta}, order {order}, with the optimal (Analytic-DPM) variance "
                                     "estimated from the model",
                         settings={"class": "SkippedStepScheduler", "timestep_spacing": "trailing", "eta": eta,
                                   "solver_order": order, "variance": "optimal"})


def _register_higher_order(members: dict[str, Any]) -> None:
    """``NAME-o2`` / ``NAME-o3``: the same eta member with multistep (2nd/3rd-order) posterior steps."""
    for base, eta in members.items():
        for order in (2, 3):
            register_sampler(
                f"{base}-o{order}", _skipstep(lambda e=eta: e, order), family="skipstep",
                stochastic=eta != 0.0, learned_variance=True,
                description=f"{base} with order-{order} multistep posterior steps (x0_hat extrapolated in "
                            f"log-SNR; one evaluation per step)",
                settings={"class": "SkippedStepScheduler", "timestep_spacing": "trailing", "eta": eta,
                          "solver_order": order, "variance": "posterior (fixed_small)"})


def default_scheduler(config: dict, **overrides):
    """What a user gets: the scheduler's ``from_config`` of the model's config, nothing overridden (the lab's x0
    clipping rule aside, which every sampler shares) but ``overrides`` (for members that change one setting)."""
    if is_flow_config(config):
        return SkippedStepFlowScheduler.from_config(dict(config), **overrides)
    return SkippedStepScheduler.from_config(dict(config), **clip_overrides(config, "clip_sample"), **overrides)


def _default_factory(config: dict, steps: int):
    return default_scheduler(config)


def _reference_factory(config: dict, steps: int):
    if is_flow_config(config):
        return from_config_accepting(diffusers.FlowMatchEulerDiscreteScheduler, config)
    return _ours(config, eta=1.0, solver_order=1)


def _register_ours() -> None:
    common = {"class": "SkippedStepScheduler", "timestep_spacing": "trailing", "variance": "posterior (fixed_small)",
              "x0_clip": "clip_sample"}
    ours = dict(family="skipstep", learned_variance=True)
    default_settings = {"class": "SkippedStepScheduler / SkippedStepFlowScheduler", "from_config": True,
                        "eta": "DEFAULT_ETA", "solver_order": "DEFAULT_SOLVER_ORDER",
                        "use_corrector": "DEFAULT_USE_CORRECTOR", "x0_clip": "clip_sample"}
    register_sampler("default", _default_factory, stochastic=DEFAULT_ETA != 0, **ours,
                     description="skipstep's default: SkippedStepScheduler.from_config(model config) "
                                 "(SkippedStepFlowScheduler for flow models), nothing overridden but, for a "
                                 "class-conditional model, guidance_scale=w (as `skipstep sample` passes it)",
                     settings={**default_settings, "guidance_scale": "passed"})
    register_sampler("default-no-w", _default_factory, stochastic=DEFAULT_ETA != 0, **ours,
                     description="the default not told the guidance scale (a diffusers pipeline's scheduler built "
                                 "without guidance_scale=): from_config(model config), nothing overridden",
                     settings=default_settings)
    register_sampler("skipstep", _skipstep(lambda: 1.0), stochastic=True, **ours,
                     description="skipped-step posterior sampling, eta=1 (the paper's Markovian sampler)",
                     settings={**common, "eta": 1.0})
    register_sampler("skipstep-ddim", _skipstep(lambda: 0.0), **ours,
                     description="skipstep's DDIM member, eta=0 (deterministic)", settings={**common, "eta": 0.0})
    register_sampler("skipstep-eta0.5", _skipstep(lambda: 0.5), stochastic=True, **ours,
                     description="DDIM family with constant eta=0.5", settings={**common, "eta": 0.5})
    register_sampler("skipstep-linear", _skipstep(lambda: "linear:1:0"), stochastic=True, **ours,
                     description="eta ramps linearly from 1 (first step) to 0 (last step)",
                     settings={**common, "eta": "linear:1:0"})
    for frac in ("0.25", "0.5", "0.75"):
        register_sampler(f"skipstep-skip-ddim-{frac}", _skipstep(lambda f=frac: f"skip-ddim:{f}"),
                         stochastic=True, **ours,
                         description=f"skipped-step (eta=1) for the first {frac} of the steps, then DDIM",
                         settings={**common, "eta": f"skip-ddim:{frac}"})
        register_sampler(f"skipstep-ddim-skip-{frac}", _skipstep(lambda f=frac: f"ddim-skip:{f}"),
                         stochastic=True, **ours,
                         description=f"DDIM for the first {frac} of the steps, then skipped-step (eta=1)",
                         settings={**common, "eta": f"ddim-skip:{frac}"})
    _register_higher_order({"skipstep": 1.0, "skipstep-ddim": 0.0, "skipstep-eta0.5": 0.5,
                            "skipstep-linear": "linear:1:0", "skipstep-skip-ddim-0.5": "skip-ddim:0.5",
                            "skipstep-ddim-skip-0.5": "ddim-skip:0.5"})
    _register_optimal({"skipstep-opt": (1.0, 1), "skipstep-ddim-opt": (0.0, 1), "skipstep-linear-opt": ("linear:1:0", 1),
                       "skipstep-o2-opt": (1.0, 2), "skipstep-linear-o2-opt": ("linear:1:0", 2)})
    register_sampler("reference-1000", _reference_factory, fixed_steps=lambda T: T, family="reference",
                     stochastic=True, learned_variance=True,
                     description="the reference: T-step (1000) ancestral DDPM = skipstep eta=1 on every timestep "
                                 "(VP models); 1000-step FlowMatchEuler, the flow ODE (flow models)",
                     settings={**common, "eta": 1.0, "steps": "T (all training timesteps)",
                               "flow_models": "FlowMatchEulerDiscreteScheduler, T steps"})


# --------------------------------------------------------------------------------------------------------------
# tuned:PATH
# --------------------------------------------------------------------------------------------------------------
def _schedule_path_refusal(schedule_path: str):
    def refusal(loaded: LoadedModel) -> str | None:
        if loaded.regime == schedule_path:
            return None
        what = ("the tuned schedule is for a rectified-flow model" if schedule_path == "flow"
                else "the tuned schedule lists timesteps of a discrete VP chain")
        return f"{what}; this is a {loaded.regime_text} model"
    return refusal


def tuned_sampler(name: str) -> SamplerRecipe:
    """The :class:`SamplerRecipe` of ``tuned:PATH.json`` (or ``tuned:NAME`` for a shipped schedule): a
    :class:`~skipstep.SkippedStepScheduler` (:class:`~skipstep.SkippedStepFlowScheduler` for a flow schedule)
    carrying the schedule, runnable at exactly the schedule's NFE; its
    settings name the model fingerprint and T, which the bench checks."""
    ref = name[len(TUNED_PREFIX):]
    if not ref:
        raise SamplerError("a tuned sampler is named tuned:PATH.json (or tuned:NAME for a shipped schedule)")
    try:
        path = resolve_tuned_schedule_path(ref)
        schedule = load_tuned_schedule(path)
    except TunedScheduleError as err:
        raise SamplerError(f"sampler {name!r}: {err}") from None

    flow = schedule.path == "flow"

    def factory(config: dict, steps: int):
        if flow:
            return SkippedStepFlowScheduler.from_config(dict(config), **schedule.scheduler_kwargs())
        kwargs = {"timestep_spacing": "trailing", **schedule.scheduler_kwargs()}
        return from_config_accepting(SkippedStepScheduler, config, **kwargs, **clip_overrides(config, "clip_sample"))

    return SamplerRecipe(
        name=name, factory=factory, min_nfe=schedule.nfe, max_nfe=schedule.nfe, family="tuned",
        stochastic=schedule.stochastic, refusal=_schedule_path_refusal(schedule.path),
        description=f"tuned schedule {path} (NFE {schedule.nfe}, solver_order {schedule.solver_order}, corrector "
                    f"{'on' if schedule.use_corrector else 'off'})",
        settings={"class": "SkippedStepFlowScheduler" if flow else "SkippedStepScheduler", "tuned_schedule": str(path),
                  "path": schedule.path, "timesteps": schedule.timesteps,
                  "eta": schedule.eta, "solver_order": schedule.solver_order,
                  "use_corrector": schedule.use_corrector, "variance": schedule.variance_type,
                  "model_fingerprint": schedule.model_fingerprint,
                  "num_train_timesteps": schedule.num_train_timesteps,
                  "tuned_guidance_scale": schedule.guidance_scale},
        order_reason=f"a tuned schedule runs at exactly the NFE it was tuned for ({schedule.nfe})",
    )


_register_ours()
register_prefix(TUNED_PREFIX, tuned_sampler)
