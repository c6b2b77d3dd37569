"""Sampler registry: a name -> how to build a diffusers-style scheduler from a model's scheduler config, and how
many ``num_inference_steps`` a requested number of network evaluations (NFE) buys.

Every sampler -- ours and diffusers' -- is driven by the one standard loop (:func:`run_standard_loop`)::

    sched.set_timesteps(k); x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x, generator=g).prev_sample

NFE is counted honestly by wrapping the model in a :class:`CallCounter`; the benchmark records the count.

Settings shared by all samplers (stated in every benchmark output, see :data:`COMMON_SETTINGS`):
``timestep_spacing="trailing"`` (starts at ``t = T-1``), a clean final step where the scheduler offers one
(DDIM/PNDM ``set_alpha_to_one=True``; DPM-Solver/UniPC/Euler ``final_sigmas_type="zero"``), and ``x0_hat`` clipping
as the model's scheduler config says (``clip_sample``), through each scheduler's own mechanism
(:func:`clip_overrides`; Euler, Euler-ancestral and PNDM have none).

Add a sampler with :func:`register_sampler`::

    register_sampler("my-sampler", lambda config, steps: MyScheduler.from_config(config), min_nfe=2)
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..diffusers_schedulers import SkippedStepScheduler
from ..steps import DEFAULT_ETA, DEFAULT_SOLVER_ORDER
from ..tuned_schedules import (TUNED_SCHEDULES_DIR, TunedScheduleError, load_tuned_schedule,
                               resolve_tuned_schedule_path)
from .models import LoadedModel, optimal_variance_table

__all__ = [
    "COMMON_SETTINGS",
    "CallCounter",
    "clip_overrides",
    "SamplerError",
    "SamplerRecipe",
    "available_samplers",
    "build_scheduler",
    "from_config_accepting",
    "check_sampler_for_model",
    "format_sampler_list",
    "get_sampler",
    "scheduler_config_for",
    "register_sampler",
    "run_standard_loop",
    "sampler_names",
    "sampler_settings",
    "steps_for_nfe",
    "tuned_sampler",
]

COMMON_SETTINGS = {
    "timestep_spacing": "trailing (every sampler that supports it, ours included)",
    "final_step": "to clean data where supported: DDIM/PNDM set_alpha_to_one=True; DPM-Solver/UniPC/Euler "
                  "final_sigmas_type='zero'; ours and DDPM always end at alpha=1; DEIS ends at sigma(t=0) "
                  "(no option)",
    "x0_clipping": "follows the model's scheduler config (clip_sample, clip_sample_range) unless bench/sample "
                   "--clip on|off: ours, DDPM, DDIM and Heun clip x0_hat with clip_sample; DPM-Solver, UniPC and DEIS "
                   "use thresholding with sample_max_value = the range (exactly clipping for range 1); Euler, "
                   "Euler-ancestral and PNDM have no x0 clipping",
    "nfe": "counted by wrapping the model; one batched network call = 1 NFE",
}


class SamplerError(ValueError):
    """Unknown sampler name, or an NFE the sampler cannot honour (the message gives the reason)."""


Factory = Callable[[dict, int], Any]


@dataclass(frozen=True)
class SamplerRecipe:
    """How to build one sampler.

    ``factory(scheduler_config, num_inference_steps)`` returns a fresh scheduler. ``nfe_of_steps(k)`` is the NFE of
    a run with ``k`` steps (``k`` for one-evaluation-per-step samplers). ``min_nfe`` is the sampler's order: fewer
    evaluations are refused. ``fixed_steps`` (callable of ``T``) pins the step count whatever NFE is asked
    (the 1000-step reference). ``max_nfe``: more evaluations are refused (a tuned schedule runs at its own NFE).
    """

    name: str
    factory: Factory
    min_nfe: int = 1
    nfe_of_steps: Callable[[int], int] = lambda k: k
    fixed_steps: Callable[[int], int] | None = None
    family: str = "other"
    stochastic: bool = False
    description: str = ""
    settings: dict = field(default_factory=dict)
    order_reason: str = ""
    max_nfe: int | None = None


_SAMPLERS: dict[str, SamplerRecipe] = {}


def register_sampler(name: str, factory: Factory, *, min_nfe: int = 1, nfe_of_steps: Callable[[int], int] | None = None,
                     fixed_steps: Callable[[int], int] | None = None, family: str = "other", stochastic: bool = False,
                     description: str = "", settings: dict | None = None, order_reason: str = "",
                     replace: bool = False) -> SamplerRecipe:
    """Register a sampler under ``name`` (see :class:`SamplerRecipe`); refuses to shadow one unless ``replace``."""
    if name in _SAMPLERS and not replace:
        raise ValueError(f"sampler {name!r} is already registered (pass replace=True to override it)")
    recipe = SamplerRecipe(name, factory, int(min_nfe), nfe_of_steps or (lambda k: k), fixed_steps, family, stochastic,
                       description, dict(settings or {}), order_reason)
    _SAMPLERS[name] = recipe
    return recipe


def available_samplers() -> dict[str, str]:
    """Registered sampler names and their descriptions."""
    return {name: recipe.description for name, recipe in _SAMPLERS.items()}


#: Headings of the sampler families in :func:`format_sampler_list`.
FAMILY_TITLES = {"skipstep": "skipstep's samplers (group 'ours')", "diffusers": "diffusers' samplers (group 'peers')",
                 "reference": "the reference", "tuned": "tuned schedules"}


def format_sampler_list() -> str:
    """Every registered sampler with its one-line meaning, by family; then the groups and ``tuned:``."""
    width = max(len(name) for name in _SAMPLERS)
    lines = []
    for family in dict.fromkeys(recipe.family for recipe in _SAMPLERS.values()):
        lines.append(FAMILY_TITLES.get(family, family) + ":")
        for name, recipe in _SAMPLERS.items():
            if recipe.family == family:
                order = f" [NFE >= {recipe.min_nfe}]" if recipe.min_nfe > 1 else ""
                lines.append(f"  {name:<{width}}  {recipe.description}{order}")
    shipped = ", ".join(sorted(p.stem for p in TUNED_SCHEDULES_DIR.glob("*.json"))) or "none"
    lines += ["groups:", f"  {'all':<{width}}  ours and peers", f"  {'ours':<{width}}  every skipstep sampler",
              f"  {'peers':<{width}}  every diffusers sampler",
              "tuned schedules:",
              f"  {'tuned:FILE.json':<{width}}  a schedule written by `skipstep tune` (runs at exactly its NFE)",
              f"  {'tuned:NAME':<{width}}  a shipped schedule ({shipped})"]
    return "\n".join(lines)


def sampler_names(*families: str) -> list[str]:
    """Registered sampler names (in registration order), all of them or those of the given families
    (``skipstep``, ``diffusers``, ``reference``, ...)."""
    return [name for name, recipe in _SAMPLERS.items() if not families or recipe.family in families]


def get_sampler(name: str) -> SamplerRecipe:
    """A registered sampler, or ``tuned:PATH.json`` / ``tuned:NAME`` (a tuned schedule file, see
    :mod:`skipstep.tuned_schedules`)."""
    if name.startswith(TUNED_PREFIX):
        return tuned_sampler(name)
    try:
        return _SAMPLERS[name]
    except KeyError:
        raise SamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(_SAMPLERS)}") from None


def steps_for_nfe(recipe: SamplerRecipe, nfe: int, num_train_timesteps: int) -> tuple[int, int]:
    """``(num_inference_steps, expected_nfe)`` for a requested NFE: the most steps whose NFE does not exceed it.

    Raises :class:`SamplerError` (with the reason) for an NFE below the sampler's order or above ``T``.
    """
    T = int(num_train_timesteps)
    if recipe.fixed_steps is not None:
        k = recipe.fixed_steps(T)
        return k, recipe.nfe_of_steps(k)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise SamplerError(f"NFE must be a positive integer, got {nfe!r}")
    if nfe < recipe.min_nfe:
        reason = recipe.order_reason or f"it is a method of order {recipe.min_nfe}"
        raise SamplerError(f"sampler {recipe.name!r} needs NFE >= {recipe.min_nfe} ({reason}); got NFE={nfe}")
    if recipe.max_nfe is not None and nfe > recipe.max_nfe:
        raise SamplerError(f"sampler {recipe.name!r} needs NFE <= {recipe.max_nfe} ({recipe.order_reason}); got NFE={nfe}")
    if nfe > T:
        raise SamplerError(f"sampler {recipe.name!r}: NFE={nfe} exceeds the model's {T} training timesteps "
                           f"(a sampler cannot visit more than T={T} distinct noise levels)")
    k = nfe
    while k > 1 and recipe.nfe_of_steps(k) > nfe:
        k -= 1
    if recipe.nfe_of_steps(k) > nfe or k > T:
        raise SamplerError(f"sampler {recipe.name!r} cannot run with NFE={nfe}")
    return k, recipe.nfe_of_steps(k)


def check_sampler_for_model(recipe: SamplerRecipe, model_fingerprint: str, num_train_timesteps: int) -> None:
    """Refuse a sampler made for another model (its settings name ``model_fingerprint`` / ``num_train_timesteps``,
    as tuned schedules do)."""
    want_fp, want_T = recipe.settings.get("model_fingerprint"), recipe.settings.get("num_train_timesteps")
    if "model_fingerprint" in recipe.settings and want_fp is None:
        raise SamplerError(f"sampler {recipe.name!r} records no model fingerprint (model_fingerprint: null), so it "
                           f"cannot be checked against this model ({model_fingerprint}); a tuned schedule is valid "
                           "only for the model it was tuned on: tune one for this model with `skipstep tune`")
    if want_fp is not None and want_fp != model_fingerprint:
        raise SamplerError(f"sampler {recipe.name!r} was tuned for the model with fingerprint {want_fp}, not this "
                           f"model ({model_fingerprint}): a tuned schedule is not valid for another model")
    if want_T is not None and int(want_T) != int(num_train_timesteps):
        raise SamplerError(f"sampler {recipe.name!r} was made for T={want_T} training timesteps, but the model has "
                           f"T={num_train_timesteps}")


def sampler_settings(recipe: SamplerRecipe) -> dict[str, Any]:
    """The settings a run records for a sampler (the default sampler's names resolved to their values)."""
    settings = {}
    for k, v in recipe.settings.items():
        if v in ("DEFAULT_ETA", "DEFAULT_SOLVER_ORDER"):  # the 'default' sampler: record what it resolves to
            v = {"DEFAULT_ETA": DEFAULT_ETA, "DEFAULT_SOLVER_ORDER": DEFAULT_SOLVER_ORDER}[v]
        settings[k] = v
    return settings


def build_scheduler(recipe: SamplerRecipe, scheduler_config: dict, num_steps: int):
    """A fresh scheduler for ``recipe`` from the model's scheduler config (diffusers' config warnings silenced)."""
    logger = logging.getLogger("diffusers")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return recipe.factory(dict(scheduler_config), int(num_steps))
    finally:
        logger.setLevel(previous)


# --------------------------------------------------------------------------------------------------------------
# the standard loop
# --------------------------------------------------------------------------------------------------------------
class CallCounter:
    """Wrap a model ``model(x, t)`` and count its calls (one batched call = one NFE)."""

    def __init__(self, model: Callable):
        self.model = model
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@torch.no_grad()
def run_standard_loop(scheduler, model: Callable, noise: torch.Tensor, num_steps: int,
                      generator: torch.Generator | None = None, progress: bool = False,
                      desc: str = "steps") -> torch.Tensor:
    """Drive ``scheduler`` with ``model`` from ``noise`` for ``num_steps`` steps (the standard diffusers loop).

    ``model(x, t_batch)`` gets ``t`` broadcast to the batch. ``generator`` is passed to ``step`` when the
    scheduler's ``step`` accepts one (UniPC, DEIS, PNDM and Heun are deterministic and do not).
    """
    scheduler.set_timesteps(num_steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    batch = x.shape[0]
    for t in tqdm(scheduler.timesteps, disable=not progress, desc=desc, leave=False):
        t_batch = t.reshape(1).expand(batch) if isinstance(t, torch.Tensor) else torch.full((batch,), t)
        out = model(scheduler.scale_model_input(x, t), t_batch.to(x.device))
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


# --------------------------------------------------------------------------------------------------------------
# the sampler registry: tuned:PATH
# --------------------------------------------------------------------------------------------------------------
TUNED_PREFIX = "tuned:"


def tuned_sampler(name: str) -> SamplerRecipe:
    """The :class:`SamplerRecipe` of ``tuned:PATH.json`` (or ``tuned:NAME`` for a shipped schedule): a
    :class:`~skipstep.SkippedStepScheduler` carrying the schedule, runnable at exactly the schedule's NFE; its
    settings name the model fingerprint and T, which the bench checks."""
    ref = name[len(TUNED_PREFIX):]
    if not ref:
        raise SamplerError("a tuned sampler is named tuned:PATH.json (or tuned:NAME for a shipped schedule)")
    try:
        path = resolve_tuned_schedule_path(ref)
        schedule = load_tuned_schedule(path)
    except TunedScheduleError as err:
        raise SamplerError(f"sampler {name!r}: {err}") from None

    def factory(config: dict, steps: int):
        return from_config_accepting(SkippedStepScheduler, config, timestep_spacing="trailing",
                            **clip_overrides(config, "clip_sample"), **schedule.scheduler_kwargs())

    return SamplerRecipe(
        name=name, factory=factory, min_nfe=schedule.nfe, max_nfe=schedule.nfe, family="tuned",
        stochastic=schedule.stochastic,
        description=f"tuned schedule {path} (NFE {schedule.nfe}, solver_order {schedule.solver_order})",
        settings={"class": "SkippedStepScheduler", "tuned_schedule": str(path), "timesteps": schedule.timesteps,
                  "eta": schedule.eta, "solver_order": schedule.solver_order,
                  "variance": schedule.variance_type, "model_fingerprint": schedule.model_fingerprint,
                  "num_train_timesteps": schedule.num_train_timesteps},
        order_reason=f"a tuned schedule runs at exactly the NFE it was tuned for ({schedule.nfe})",
    )


# --------------------------------------------------------------------------------------------------------------
# built-in samplers
# --------------------------------------------------------------------------------------------------------------
def from_config_accepting(cls, config: dict, **overrides):
    """``cls.from_config`` with the keys ``cls`` accepts (so no 'unexpected key' noise) plus ``overrides``."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if k in accepted}
    kwargs.update({k: v for k, v in overrides.items() if k in accepted})
    if kwargs.get("trained_betas") is None:
        kwargs.pop("trained_betas", None)
    return cls.from_config(kwargs)


def clip_overrides(config: dict, how: str | None) -> dict:
    """Scheduler kwargs that clip ``x0_hat`` as the model's config says (``clip_sample``, ``clip_sample_range``).

    ``how``: ``"clip_sample"`` (ours, DDPM, DDIM, Heun), ``"thresholding"`` (DPM-Solver, UniPC, DEIS: dynamic
    thresholding with ``sample_max_value = range`` -- the threshold ``s = clamp(quantile, 1, range)`` is then 1 for
    range 1, i.e. plain clipping), or ``None`` (the scheduler cannot clip).
    """
    clip = bool(config.get("clip_sample", False))
    rng = float(config.get("clip_sample_range", 1.0) or 1.0)
    if how == "clip_sample":
        return {"clip_sample": clip, "clip_sample_range": rng, "thresholding": False}
    if how == "thresholding":
        return {"thresholding": clip, "sample_max_value": rng}
    return {}


def _skipstep(eta_fn: Callable[[], Any], solver_order: int | Callable[[], int] = 1):
    def factory(config: dict, steps: int):
        order = solver_order() if callable(solver_order) else solver_order
        return from_config_accepting(SkippedStepScheduler, config, eta=eta_fn(), solver_order=order,
                            timestep_spacing="trailing", **clip_overrides(config, "clip_sample"))

    return factory


def scheduler_config_for(sampler: SamplerRecipe, loaded: LoadedModel) -> dict:
    """The model's scheduler config, plus what this sampler needs from the model itself (the optimal-variance
    table, estimated once per model and cached; see :func:`skipstep.lab.models.optimal_variance_table`)."""
    config = loaded.scheduler_config
    if sampler.settings.get("variance") == "optimal":
        config = {**config, "eps_mse": optimal_variance_table(loaded).tolist()}
    return config


def _register_optimal(members: dict[str, tuple[Any, int]]) -> None:
    """``NAME-opt``: the member with the optimal (Analytic-DPM) variance instead of the posterior's."""
    for name, (eta, order) in members.items():
        def factory(config: dict, steps: int, eta=eta, order=order):
            return from_config_accepting(SkippedStepScheduler, config, eta=eta, solver_order=order,
                                variance_type="optimal", timestep_spacing="trailing",
                                **clip_overrides(config, "clip_sample"))

        register_sampler(name, factory, family="skipstep", stochastic=True,
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
                stochastic=eta != 0.0,
                description=f"{base} with order-{order} multistep posterior steps (x0_hat extrapolated in "
                            f"log-SNR; one evaluation per step)",
                settings={"class": "SkippedStepScheduler", "timestep_spacing": "trailing", "eta": eta,
                          "solver_order": order, "variance": "posterior (fixed_small)"})


def _default_eta():
    return DEFAULT_ETA


def _default_order():
    return DEFAULT_SOLVER_ORDER


def _register_ours() -> None:
    common = {"class": "SkippedStepScheduler", "timestep_spacing": "trailing", "variance": "posterior (fixed_small)",
              "x0_clip": "clip_sample"}
    register_sampler("default", _skipstep(_default_eta, _default_order), family="skipstep", stochastic=True,
                     description="skipstep's default sampler (skipstep.DEFAULT_ETA, skipstep.DEFAULT_SOLVER_ORDER)",
                     settings={**common, "eta": "DEFAULT_ETA", "solver_order": "DEFAULT_SOLVER_ORDER"})
    register_sampler("skipstep", _skipstep(lambda: 1.0), family="skipstep", stochastic=True,
                     description="skipped-step posterior sampling, eta=1 (the paper's Markovian sampler)",
                     settings={**common, "eta": 1.0})
    register_sampler("skipstep-ddim", _skipstep(lambda: 0.0), family="skipstep",
                     description="skipstep's DDIM member, eta=0 (deterministic)", settings={**common, "eta": 0.0})
    register_sampler("skipstep-eta0.5", _skipstep(lambda: 0.5), family="skipstep", stochastic=True,
                     description="DDIM family with constant eta=0.5", settings={**common, "eta": 0.5})
    register_sampler("skipstep-linear", _skipstep(lambda: "linear:1:0"), family="skipstep", stochastic=True,
                     description="eta ramps linearly from 1 (first step) to 0 (last step)",
                     settings={**common, "eta": "linear:1:0"})
    for frac in ("0.25", "0.5", "0.75"):
        register_sampler(f"skipstep-skip-ddim-{frac}", _skipstep(lambda f=frac: f"skip-ddim:{f}"),
                         family="skipstep", stochastic=True,
                         description=f"skipped-step (eta=1) for the first {frac} of the steps, then DDIM",
                         settings={**common, "eta": f"skip-ddim:{frac}"})
        register_sampler(f"skipstep-ddim-skip-{frac}", _skipstep(lambda f=frac: f"ddim-skip:{f}"),
                         family="skipstep", stochastic=True,
                         description=f"DDIM for the first {frac} of the steps, then skipped-step (eta=1)",
                         settings={**common, "eta": f"ddim-skip:{frac}"})
    _register_higher_order({"skipstep": 1.0, "skipstep-ddim": 0.0, "skipstep-eta0.5": 0.5,
                            "skipstep-linear": "linear:1:0", "skipstep-skip-ddim-0.5": "skip-ddim:0.5",
                            "skipstep-ddim-skip-0.5": "ddim-skip:0.5"})
    _register_optimal({"skipstep-opt": (1.0, 1), "skipstep-ddim-opt": (0.0, 1), "skipstep-linear-opt": ("linear:1:0", 1),
                       "skipstep-o2-opt": (1.0, 2), "skipstep-linear-o2-opt": ("linear:1:0", 2)})
    register_sampler("reference-1000", _skipstep(lambda: 1.0), fixed_steps=lambda T: T, family="reference",
                     stochastic=True,
                     description="the reference: T-step (1000) ancestral DDPM = skipstep eta=1 on every timestep",
                     settings={**common, "eta": 1.0, "steps": "T (all training timesteps)"})


def _register_diffusers() -> None:
    import diffusers as d

    def peer(name, cls_name, overrides, description, min_nfe=1, stochastic=False, nfe_of_steps=None,
             order_reason="", dynamic: Callable[[int], dict] | None = None, settings: dict | None = None,
             clip: str | None = None):
        def factory(config: dict, steps: int):
            cls = getattr(d, cls_name)
            extra = dynamic(steps) if dynamic is not None else {}
            return from_config_accepting(cls, config, **{**overrides, **extra, **clip_overrides(config, clip)})

        clip_text = {"clip_sample": "clip_sample", "thresholding": "thresholding (sample_max_value = clip range)",
                     None: "not available"}[clip]
        register_sampler(name, factory, min_nfe=min_nfe, nfe_of_steps=nfe_of_steps, family="diffusers",
                         stochastic=stochastic, description=description,
                         settings={"class": cls_name, **overrides, "x0_clip": clip_text, **(settings or {})},
                         order_reason=order_reason)

    trailing = {"timestep_spacing": "trailing"}
    peer("ddpm", "DDPMScheduler", {**trailing}, "diffusers DDPM, respaced (ancestral, fixed_small variance)",
         stochastic=True, clip="clip_sample")
    peer("ddim", "DDIMScheduler", {**trailing, "set_alpha_to_one": True}, "diffusers DDIM (eta=0)", clip="clip_sample")
    peer("pndm", "PNDMScheduler", {**trailing, "skip_prk_steps": True, "set_alpha_to_one": True},
         "diffusers PNDM with skip_prk_steps=True (PLMS); k steps cost k+1 NFE", min_nfe=4,
         nfe_of_steps=lambda k: k + 1,
         order_reason="PLMS is a 4th-order linear multistep method; its first step costs two evaluations")
    dpm = {**trailing, "final_sigmas_type": "zero", "lower_order_final": True}
    peer("dpmpp-2m", "DPMSolverMultistepScheduler", {**dpm, "algorithm_type": "dpmsolver++", "solver_order": 2},
         "diffusers DPM-Solver++(2M)", min_nfe=2, order_reason="it is a 2nd-order multistep method",
         clip="thresholding")
    peer("dpmpp-2m-sde", "DPMSolverMultistepScheduler",
         {**dpm, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
         "diffusers SDE-DPM-Solver++(2M)", min_nfe=2, stochastic=True,
         order_reason="it is a 2nd-order multistep method", clip="thresholding")
    peer("unipc", "UniPCMultistepScheduler",
         {**trailing, "final_sigmas_type": "zero", "solver_order": 3, "predict_x0": True, "lower_order_final": True,
          "solver_type": "bh2"},
         "diffusers UniPC-bh2, order 3 (recommended for unconditional sampling)",
         min_nfe=3, order_reason="it is run as a 3rd-order multistep method (recommended for unconditional models)",
         settings={"note": "bh1 (recommended below 10 steps) returns NaN with final_sigmas_type='zero' in "
                           "diffusers 0.42 (the final step has h = inf), so bh2 is used at every NFE"},
         clip="thresholding")
    peer("deis", "DEISMultistepScheduler", {**trailing, "solver_order": 3, "lower_order_final": True},
         "diffusers DEIS, order 3 (recommended for unconditional sampling)", min_nfe=3,
         order_reason="it is run as a 3rd-order multistep method (recommended for unconditional models)",
         clip="thresholding")
    peer("euler", "EulerDiscreteScheduler", {**trailing, "final_sigmas_type": "zero"}, "diffusers Euler (ODE)")
    peer("euler-a", "EulerAncestralDiscreteScheduler", {**trailing}, "diffusers Euler ancestral", stochastic=True)
    peer("heun", "HeunDiscreteScheduler", {**trailing},
         "diffusers Heun (2nd order); k steps cost 2k-1 NFE (the last step is an Euler step)", min_nfe=2,
         nfe_of_steps=lambda k: 2 * k - 1, order_reason="it is a 2nd-order method (2 evaluations per step)",
         clip="clip_sample")


_register_ours()
_register_diffusers()
