"""The sampler registry's mechanics: a name -> how to build a sampler from a model's scheduler config, how many
``num_inference_steps`` a requested number of network evaluations (NFE) buys, and the one loop that drives it.

Every diffusers-contract sampler -- ours and diffusers' -- is driven by the standard loop
(:func:`run_standard_loop`)::

    sched.set_timesteps(k); x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x, generator=g).prev_sample

A k-diffusion-convention peer (:mod:`skipstep.lab.kdiffusion_peers`) is not a scheduler; its factory returns an
object with ``sample_loop(model, noise, num_steps, generator)``, which the same function calls instead. NFE is
counted honestly by wrapping the model in a :class:`CallCounter`; the benchmark records the count.

The recipes themselves: :mod:`skipstep.lab.our_samplers` (skipstep's, the reference, ``tuned:FILE``),
:mod:`skipstep.lab.peer_samplers` (diffusers'), :mod:`skipstep.lab.kdiffusion_peers`; all are registered by
importing :mod:`skipstep.lab.sampler_registry`.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..plan import resolve_extrapolation_gain
from ..steps import (DEFAULT_ETA, DEFAULT_FLOW_ETA, DEFAULT_SOLVER_ORDER, DIFFUSERS_VARIANCE_TYPES,
                     STRONG_GUIDANCE_FEW_STEPS_BELOW)
from ..timesteps import FEW_STEPS_BELOW
from ..tuned_schedules import TunedScheduleWarning
from .loaded_model import LoadedModel
from .models import optimal_variance_table, training_data_moments

__all__ = [
    "CallCounter", "DATA_MOMENTS_KEY", "EFFECTIVE_KEYS", "SamplerError", "SamplerRecipe", "available_samplers", "build_scheduler",
    "check_sampler_for_model", "clip_overrides", "from_config_accepting", "get_sampler", "is_flow_config",
    "register_prefix", "register_sampler", "run_standard_loop", "sampler_names", "sampler_refusal",
    "sampler_settings", "scheduler_config_for", "steps_for_nfe",
]


class SamplerError(ValueError):
    """Unknown sampler name, or an NFE the sampler cannot honour (the message gives the reason)."""


Factory = Callable[[dict, int], Any]


@dataclass(frozen=True)
class SamplerRecipe:
    """How to build one sampler.

    ``factory(scheduler_config, num_inference_steps)`` returns a fresh scheduler (or a k-diffusion runner).
    ``nfe_of_steps(k)`` is the NFE of a run with ``k`` steps. ``min_nfe`` is the sampler's order: fewer evaluations
    are refused. ``fixed_steps`` (callable of ``T``) pins the step count whatever NFE is asked (the 1000-step
    reference). ``max_nfe``: more evaluations are refused (a tuned schedule runs at its own NFE).
    ``learned_variance``: the sampler uses a learned-variance model's variance channels (``learned_range``); the
    others get the prediction channels only. ``refusal(loaded)``: why it cannot sample that model, or ``None``.
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
    learned_variance: bool = False
    refusal: Callable[[LoadedModel], str | None] | None = None


_SAMPLERS: dict[str, SamplerRecipe] = {}
_PREFIXES: dict[str, Callable[[str], SamplerRecipe]] = {}


def register_sampler(name: str, factory: Factory, *, min_nfe: int = 1, nfe_of_steps: Callable[[int], int] | None = None,
                     fixed_steps: Callable[[int], int] | None = None, family: str = "other", stochastic: bool = False,
                     description: str = "", settings: dict | None = None, order_reason: str = "",
                     learned_variance: bool = False, refusal: Callable[[LoadedModel], str | None] | None = None,
                     replace: bool = False) -> SamplerRecipe:
    """Register a sampler under ``name`` (see :class:`SamplerRecipe`); refuses to shadow one unless ``replace``."""
    if name in _SAMPLERS and not replace:
        raise ValueError(f"sampler {name!r} is already registered (pass replace=True to override it)")
    recipe = SamplerRecipe(name, factory, int(min_nfe), nfe_of_steps or (lambda k: k), fixed_steps, family, stochastic,
                           description, dict(settings or {}), order_reason, None, learned_variance, refusal)
    _SAMPLERS[name] = recipe
    return recipe


def register_prefix(prefix: str, resolve: Callable[[str], SamplerRecipe]) -> None:
    """Names starting with ``prefix`` (``tuned:``) are resolved by ``resolve(name)`` instead of the table."""
    _PREFIXES[prefix] = resolve


def available_samplers() -> dict[str, str]:
    """Registered sampler names and their descriptions."""
    return {name: recipe.description for name, recipe in _SAMPLERS.items()}


def sampler_names(*families: str) -> list[str]:
    """Registered sampler names (in registration order), all of them or those of the given families
    (``skipstep``, ``diffusers``, ``k-diffusion``, ``reference``, ...)."""
    return [name for name, recipe in _SAMPLERS.items() if not families or recipe.family in families]


def get_sampler(name: str) -> SamplerRecipe:
    """A registered sampler, or a prefixed name (``tuned:PATH.json`` / ``tuned:NAME``)."""
    for prefix, resolve in _PREFIXES.items():
        if name.startswith(prefix):
            return resolve(name)
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


def check_sampler_for_model(recipe: SamplerRecipe, model_fingerprint: str, num_train_timesteps: int,
                            guidance_scales: Sequence[float | None] = ()) -> list[str]:
    """Refuse a sampler made for another model (its settings name ``model_fingerprint`` / ``num_train_timesteps``,
    as tuned schedules do). A tuned schedule used at a guidance scale other than the one it was tuned at
    (``tuned_guidance_scale``) is allowed with a warning (:class:`skipstep.tuned_schedules.TunedScheduleWarning`);
    the warnings are returned."""
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
    tuned_w = recipe.settings.get("tuned_guidance_scale")
    notes = []
    for w in dict.fromkeys(guidance_scales):
        if tuned_w is not None and w is not None and float(w) != float(tuned_w):
            message = (f"sampler {recipe.name!r} was tuned at guidance scale {float(tuned_w):g} and runs at "
                       f"{float(w):g}: it was fitted for the other scale (tune one with `skipstep tune "
                       f"--guidance-scale {float(w):g}`)")
            warnings.warn(message, TunedScheduleWarning, stacklevel=2)
            notes.append(message)
    return notes


def sampler_refusal(recipe: SamplerRecipe, loaded: LoadedModel) -> str | None:
    """Why ``recipe`` cannot sample ``loaded`` (its regime, conditioning, ...), or ``None``."""
    return recipe.refusal(loaded) if recipe.refusal is not None else None


def is_flow_config(config: dict) -> bool:
    """A lab scheduler config of a flow-matching model (:func:`skipstep.lab.model_dirs.lab_scheduler_config`)."""
    return config.get("prediction_type") == "flow"


# --------------------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------------------
def from_config_accepting(cls, config: dict, **overrides):
    """``cls.from_config`` with the keys ``cls`` accepts (so no 'unexpected key' noise) plus ``overrides``, passed
    as keyword overrides (so skipstep's schedulers treat them as the caller's choices, e.g. a ``timestep_spacing``
    that a config's own grid would not be)."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if k in accepted and k not in overrides}
    if kwargs.get("trained_betas") is None:
        kwargs.pop("trained_betas", None)
    return cls.from_config(kwargs, **{k: v for k, v in overrides.items() if k in accepted})


def clip_overrides(config: dict, how: str | None) -> dict:
    """Scheduler kwargs that clip ``x0_hat`` as the model's config says (``clip_sample``, ``clip_sample_range``).

    ``how``: ``"clip_sample"`` (ours, DDPM, DDIM, Heun), ``"thresholding"`` (DPM-Solver, UniPC, DEIS, SA-Solver:
    dynamic thresholding with ``sample_max_value = range`` -- the threshold ``s = clamp(quantile, 1, range)`` is
    then 1 for range 1, i.e. plain clipping), or ``None`` (the scheduler cannot clip).
    """
    clip = bool(config.get("clip_sample", False))
    rng = float(config.get("clip_sample_range", 1.0) or 1.0)
    if how == "clip_sample":
        return {"clip_sample": clip, "clip_sample_range": rng, "thresholding": False}
    if how == "thresholding":
        return {"thresholding": clip, "sample_max_value": rng}
    return {}


#: peers whose grid follows the model's spacing keys (``--peer-spacing config``) or trailing
PEER_FAMILIES = ("diffusers",)
SPACING_KEYS = ("timestep_spacing", "steps_offset")


#: the config key of the training data's moments for the analytic-first-step samplers (skipstep.lab.analytic_first)
DATA_MOMENTS_KEY = "analytic_first_step_moments"


#: the keys of a config saved by skipstep's own scheduler that describe the model (its chain, prediction and
#: clipping); the others are skipstep's sampler settings (``timestep_spacing="power"``, ``solver_type="heun"``, eta,
#: ...), which a peer must not take as the model's
CHAIN_KEYS = ("_class_name", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
              "prediction_type", "variance_type", "clip_sample", "clip_sample_range", "thresholding",
              "dynamic_thresholding_ratio", "sample_max_value", "rescale_betas_zero_snr")
#: skipstep's variance names -> diffusers' first name for each (``optimal`` is skipstep's estimate; the model was
#: trained fixed-small)
_DIFFUSERS_VARIANCE = {**{ours: theirs for theirs, ours in reversed(DIFFUSERS_VARIANCE_TYPES.items())},
                       "optimal": "fixed_small"}


def chain_of_skipstep_config(config: dict) -> dict:
    """A ``SkippedStepScheduler`` config as a peer sees it: the model's keys (:data:`CHAIN_KEYS`), the variance in
    diffusers' names, none of skipstep's settings (so a peer takes its class defaults there, as for a model file
    that leaves them out)."""
    chain = {k: v for k, v in config.items() if k in CHAIN_KEYS}
    if chain.get("variance_type") in _DIFFUSERS_VARIANCE:
        chain["variance_type"] = _DIFFUSERS_VARIANCE[chain["variance_type"]]
    return chain


def scheduler_config_for(sampler: SamplerRecipe, loaded: LoadedModel) -> dict:
    """The config ``sampler`` is built from for ``loaded``: the model's scheduler config, with

    * for diffusers' peers of a model saved with skipstep's own scheduler, only its chain
      (:func:`chain_of_skipstep_config`);
    * for diffusers' peers, the timestep spacing of ``loaded.peer_spacing``: ``config`` -- the model's own keys
      (a key the model's file left out is dropped, so the peer's class default applies, as in diffusers'
      ``from_config``) -- or ``trailing``;
    * for a learned-variance model and a sampler that cannot use the variance, ``variance_type="fixed_small"``;
    * the optimal-variance table for ``variance="optimal"`` samplers (estimated once per model and cached, see
      :func:`skipstep.lab.models.optimal_variance_table`);
    * the training split's per-pixel mean and variance (``DATA_MOMENTS_KEY``) for the analytic-first-step samplers
      (:func:`skipstep.lab.models.training_data_moments`);
    * for samplers whose settings say ``guidance_scale: "passed"`` (the ``default`` sampler), the run's guidance
      scale of a class-conditional VP model as ``guidance_scale`` (:func:`skipstep.steps.settings_for_guidance`)."""
    config = dict(loaded.scheduler_config)
    if sampler.family in PEER_FAMILIES and config.get("_class_name") == "SkippedStepScheduler":
        config = chain_of_skipstep_config(config)
    if sampler.family in PEER_FAMILIES and loaded.regime == "vp":
        if loaded.peer_spacing == "trailing":
            config["timestep_spacing"] = "trailing"
        elif loaded.config_keys_given is not None:
            for key in SPACING_KEYS:
                if key not in loaded.config_keys_given:
                    config.pop(key, None)
    if loaded.learned_variance and not sampler.learned_variance:
        config["variance_type"] = "fixed_small"
    if sampler.settings.get("variance") == "optimal":
        config["eps_mse"] = optimal_variance_table(loaded).tolist()
    if sampler.settings.get("analytic_first_step"):
        config[DATA_MOMENTS_KEY] = training_data_moments(loaded)
    if (sampler.settings.get("guidance_scale") == "passed" and loaded.conditioning is not None
            and loaded.regime == "vp"):
        config["guidance_scale"] = 1.0 if loaded.guidance_scale is None else float(loaded.guidance_scale)
    return config


def build_scheduler(recipe: SamplerRecipe, scheduler_config: dict, num_steps: int):
    """A fresh scheduler for ``recipe`` from the model's scheduler config (diffusers' config warnings silenced)."""
    logger = logging.getLogger("diffusers")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return recipe.factory(dict(scheduler_config), int(num_steps))
    finally:
        logger.setLevel(previous)


#: scheduler-config keys a run records as the sampler's effective settings (read back from the built scheduler)
EFFECTIVE_KEYS = ("timestep_spacing", "steps_offset", "final_sigmas_type", "set_alpha_to_one", "skip_prk_steps",
                  "algorithm_type", "solver_order", "solver_type", "predictor_order", "corrector_order",
                  "lower_order_final", "prediction_type", "variance_type", "clip_sample", "thresholding",
                  "sample_max_value", "use_flow_sigmas", "flow_shift", "shift", "rescale_betas_zero_snr", "eta",
                  "schedule", "sigma_min", "sigma_max", "use_karras_sigmas")


def _used_settings(sched) -> dict[str, Any]:
    return {"eta": sched.effective_eta, "solver_order": sched.step_config.solver_order,
            "use_corrector": sched.step_config.use_corrector}


def _used_gains(config: dict, flow: bool):
    """A skipstep scheduler's extrapolation gain: the configured number, or the default rule's value per step count
    where it differs from 1 (``{"3": 2.0, ...}``; ``1.0`` where it is 1 at every count)."""
    if config["extrapolation_gain"] is not None:
        return float(config["extrapolation_gain"])
    gains = {str(n): resolve_extrapolation_gain(None, n, flow=flow, guidance_scale=config.get("guidance_scale"))
             for n in range(1, FEW_STEPS_BELOW)}
    gains = {n: g for n, g in gains.items() if g != 1.0}
    return gains or 1.0


def sampler_settings(recipe: SamplerRecipe, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """The settings a run records for a sampler (the default sampler's names resolved to their values); with
    ``loaded``, also what the sampler is built with for that model (``effective``: keys read back from the built
    scheduler) and how it treats a learned variance."""
    settings = {}
    for k, v in recipe.settings.items():
        if v in ("DEFAULT_ETA", "DEFAULT_SOLVER_ORDER"):  # the 'default' sampler: record what it resolves to
            flow = loaded is not None and loaded.regime == "flow"
            v = {"DEFAULT_ETA": DEFAULT_FLOW_ETA if flow else DEFAULT_ETA,
                 "DEFAULT_SOLVER_ORDER": DEFAULT_SOLVER_ORDER}[v]
        settings[k] = v
    if loaded is None or sampler_refusal(recipe, loaded) is not None:
        return settings
    sched = build_scheduler(recipe, scheduler_config_for(recipe, loaded), 10)
    config = dict(getattr(sched, "config", {}) or {})
    settings["class"] = type(sched).__name__ if not hasattr(sched, "sample_loop") else settings.get("class")
    settings["effective"] = {k: config[k] for k in EFFECTIVE_KEYS if k in config}
    if hasattr(sched, "effective_eta"):  # a guidance scale may replace the configured eta, order and corrector
        many = _used_settings(sched)
        settings["effective"].update(many)
        if config.get("guidance_scale") is not None and config.get("tuned_schedule") is None:
            sched.set_timesteps(STRONG_GUIDANCE_FEW_STEPS_BELOW - 1)  # the step-count rule resolves here
            few = _used_settings(sched)
            if few != many:
                settings["effective"][f"below {STRONG_GUIDANCE_FEW_STEPS_BELOW} steps"] = few
    if "extrapolation_gain" in config:  # skipstep's: the gain at each step count where it is not 1
        settings["effective"]["extrapolation_gain"] = _used_gains(config, loaded.regime == "flow")
    if loaded.learned_variance:
        step_config = getattr(sched, "step_config", None)
        if not recipe.learned_variance:
            settings["learned_variance"] = "not used: the C prediction channels with its own fixed variance"
        elif step_config is not None and step_config.variance_type != "learned":
            settings["learned_variance"] = (f"read and set aside: the noise is the {step_config.variance_type!r} "
                                            "variance (use_learned_variance=False)")
        else:
            settings["learned_variance"] = "used (variance_type='learned_range')"
    return settings


# --------------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------------
class CallCounter:
    """Wrap a model ``model(x, t)`` and count its calls (one batched call = one NFE)."""

    def __init__(self, model: Callable | None = None):
        self.model = model
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)

    def counting(self, model: Callable) -> Callable:
        """``model`` with its calls counted here too (a per-batch model of a conditional network)."""
        def counted(x, t):
            self.calls += 1
            return model(x, t)

        counted.branches = getattr(model, "branches", 1)  # type: ignore[attr-defined]
        return counted


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
    scheduler's ``step`` accepts one (UniPC, DEIS, PNDM and Heun are deterministic and do not); a scheduler that
    takes a noise seed instead (DPMSolverSDE's ``noise_sampler_seed``, its Brownian tree) gets one drawn from
    ``generator``. A k-diffusion runner (``sample_loop``) runs its own loop with the same arguments.
    """
    if hasattr(scheduler, "sample_loop"):
        return scheduler.sample_loop(model, noise, num_steps, generator=generator, progress=progress)
    scheduler.set_timesteps(num_steps, device=noise.device)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatch schedulers have neither (sigma_max = 1)
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    if hasattr(scheduler, "noise_sampler_seed") and generator is not None:
        scheduler.noise_sampler_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    batch = x.shape[0]
    for t in tqdm(scheduler.timesteps, disable=not progress, desc=desc, leave=False):
        t_batch = t.reshape(1).expand(batch) if isinstance(t, torch.Tensor) else torch.full((batch,), t)
        out = model(scale(x, t), t_batch.to(x.device))
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x
