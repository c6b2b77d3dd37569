"""Reading another diffusers scheduler's config for ``SkippedStepScheduler.from_config``: no key is dropped silently.

diffusers' own ``from_config`` drops, without a word, every key that the target class does not take but a compatible
class does (``use_karras_sigmas``, ``algorithm_type``, ...). skipstep looks at every key the incoming config *chose*
(keys the source left at its own defaults -- ``_use_default_values`` -- are not choices, and diffusers replaces them
by the target's defaults; so does skipstep) and every keyword override, and does one of these:

* **honour** it -- it is a ``SkippedStepScheduler`` config key with diffusers' meaning (the training chain,
  ``prediction_type``, spacings, ``use_karras_sigmas``, ``final_sigmas_type``, ``solver_type``, ...);
* **accept** it without effect when its value asks for what skipstep does anyway (``use_flow_sigmas=False``,
  ``predict_x0=True``, ``timestep_type="discrete"``, ...);
* **refuse** it (``ValueError`` naming the key and what to use instead) when it changes the model's contract
  (EDM preconditioning, continuous timesteps, flow sigmas), or
* **log one warning** naming the key, its value, what skipstep does instead and the closest setting, for keys
  that describe the replaced scheduler's own algorithm (``algorithm_type``, ``skip_prk_steps``, UniPC's corrector,
  ``set_alpha_to_one=False``, ...). Those keys stay in the config as diffusers' "hidden" keys, so the config still
  converts back.

The class that was replaced is recorded as ``replaced_scheduler``: its linspace/leading grid formulas are used.

One exception to "honour": the replaced scheduler's *grid* (``timestep_spacing`` and ``steps_offset``,
:data:`REPLACED_GRID_KEYS`) is not carried from a foreign config, because it was chosen for that scheduler (DDIM's
``leading`` grid spends the last of 5 evaluations at ``t = 0``), and skipstep's default step rule applies instead;
it is logged (one warning per process and grid). ``from_config(config, keep_grid=True)`` keeps it (what the
replaced scheduler would have evaluated), and so does a keyword override, ``from_config(config,
timestep_spacing="leading")`` (with the config's ``steps_offset``). A skipstep config keeps its own, also after a
round trip through another class (it carries ``replaced_scheduler``).
"""

from __future__ import annotations

import functools
import inspect
import logging

import diffusers
from diffusers import SchedulerMixin

from .posterior import SOLVER_TYPES
from .steps import DEFAULT_ETA

logger = logging.getLogger(__name__)

#: schedulers whose linspace/leading grids take n + 1 points and drop t = 0 (timesteps.GRID_FAMILIES "drop_zero")
DROP_ZERO_GRID_SCHEDULERS = (
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "SASolverScheduler",
)
#: the one class that truncates (does not round) Karras / Lu timesteps on a squaredcos_cap_v2 chain
TRUNCATES_KARRAS_ON_COSINE = ("DPMSolverMultistepScheduler",)

_EDM = ("EDMEulerScheduler / EDMDPMSolverMultistepScheduler configs describe an EDM-preconditioned model (sigmas in "
        "[sigma_min, sigma_max], c_in/c_skip/c_out), not a DDPM chain; sample it with "
        "skipstep.k_diffusion.sample_skipstep and an EDM denoiser")
_FLOW = "use skipstep.SkippedStepFlowScheduler for flow-matching models"
#: source classes whose models are not DDPM chains, refused whatever their keys say
REFUSED_SOURCES = {
    "EDMEulerScheduler": _EDM,
    "EDMDPMSolverMultistepScheduler": _EDM,
    "CosineDPMSolverMultistepScheduler": "CosineDPMSolverMultistepScheduler configs describe a v-prediction model on "
                                         "its own sigma range (Stable Audio), not a DDPM chain; sample it with "
                                         "skipstep.k_diffusion.sample_skipstep and a denoiser wrapper",
}


def _closest_eta(value) -> str:
    stochastic = str(value).startswith("sde")
    return (f"eta={1.0 if stochastic else 0.0}" + (", solver_type='midpoint'" if "dpmsolver" in str(value) else ""))


def _algorithm_type(v, cfg):
    return ("warn", f"algorithm_type={v!r} is not used: skipstep's steps are posterior steps on the data "
                    f"prediction whose stochasticity is eta (now {cfg.get('eta', DEFAULT_ETA)!r}); the closest "
                    f"to {v!r} is {_closest_eta(v)}")


def _inert_unless(neutral, action, message):
    """A key that is accepted without effect at its ``neutral`` value(s) and warned about / refused otherwise."""
    neutral = neutral if isinstance(neutral, tuple) else (neutral,)

    def rule(v, cfg):
        if any(v == n or (v is None and n is None) for n in neutral):
            return None
        return (action, message(v) if callable(message) else message)

    return rule


def _always_warn(message):
    def rule(v, cfg):
        return ("warn", message(v) if callable(message) else message)

    return rule


def _set_alpha_to_one(v, cfg):
    if v is True or v is None or "final_sigmas_type" in cfg:  # True is skipstep's default; or the caller decided
        return None
    return ("warn", "set_alpha_to_one=False (the replaced scheduler's last step stops at abar_0, leaving "
                    "sqrt(1 - abar_0) of noise) is not reproduced: skipstep's last step goes to clean data "
                    "(final_sigmas_type='zero'); pass final_sigmas_type='sigma_min' for the replaced scheduler's "
                    "behaviour")


#: every key a diffusers VP scheduler (the KarrasDiffusionSchedulers and their relatives) takes that skipstep does
#: not: key -> rule(value, merged config) returning None (accepted, no effect), ("warn", msg) or ("refuse", msg).
FOREIGN_KEY_RULES = {
    "algorithm_type": _algorithm_type,
    "predictor_order": _always_warn(lambda v: f"predictor_order={v!r} (SA-Solver's stochastic Adams predictor) is not "
                                              "used: skipstep's multistep order is solver_order"),
    "corrector_order": _always_warn(lambda v: f"corrector_order={v!r} (SA-Solver's corrector) is not used: "
                                              "skipstep's corrector (use_corrector, on by default) adds one node to "
                                              "the solver_order predictor"),
    "tau_func": _inert_unless(None, "warn", "tau_func (SA-Solver's stochasticity per timestep) is not used: "
                                            "skipstep's per-step stochasticity is eta, which may be a list with one "
                                            "value per step"),
    "disable_corrector": _always_warn(lambda v: f"disable_corrector={v!r} (UniPC's steps without UniC) is not "
                                                "used: skipstep's corrector (use_corrector, on by default) is on at "
                                                "every step or at none"),
    "solver_p": _inert_unless(None, "warn", "solver_p (UniPC's external predictor) is not used"),
    "predict_x0": _inert_unless(True, "warn", "predict_x0=False (UniPC's noise-prediction form) is not used: skipstep "
                                              "always steps on the data prediction x0_hat"),
    "flow_shift": lambda v, cfg: None,  # only read with use_flow_sigmas=True, which is refused
    "use_flow_sigmas": _inert_unless((False, None), "refuse", "use_flow_sigmas=True describes a flow-matching model; "
                                     + _FLOW),
    "use_dynamic_shifting": _inert_unless((False, None), "refuse", "use_dynamic_shifting=True applies to flow sigmas; "
                                          + _FLOW),
    "time_shift_type": lambda v, cfg: None,  # only read with use_dynamic_shifting=True, which is refused
    "shift_terminal": _inert_unless(None, "refuse", "shift_terminal applies to flow sigmas; " + _FLOW),
    "interpolation_type": _inert_unless("linear", "warn", lambda v: (
        f"interpolation_type={v!r} (Euler's sigma interpolation) is not used: skipstep evaluates the model at integer "
        "timesteps; the closest to 'log_linear' is use_exponential_sigmas=True")),
    "timestep_type": _inert_unless("discrete", "refuse", lambda v: (
        f"timestep_type={v!r}: the model takes continuous noise levels as timesteps, which a DDPM-chain scheduler "
        "cannot feed; use skipstep.k_diffusion.sample_skipstep with a denoiser wrapper")),
    "noise_sampler_seed": _inert_unless(None, "warn", lambda v: (
        f"noise_sampler_seed={v!r} (DPMSolverSDE's Brownian tree) is not used: skipstep's step noise comes from "
        "step(generator=...) or variance_noise")),
    "original_inference_steps": _always_warn(lambda v: (
        f"original_inference_steps={v!r} (LCM/TCD's consistency-distillation grid) is not used: skipstep samples the "
        "model as a diffusion model on its own timestep spacing")),
    "timestep_scaling": _always_warn(lambda v: (
        f"timestep_scaling={v!r} (LCM/TCD's boundary-condition scaling) is not used: skipstep's steps are posterior "
        "steps without consistency-model boundary conditions")),
    "rho": lambda v, cfg: ("refuse", _EDM),
    "sigma_data": lambda v, cfg: ("refuse", _EDM),
    "sigma_schedule": lambda v, cfg: ("refuse", _EDM),
    "skip_prk_steps": _always_warn(lambda v: (
        f"skip_prk_steps={v!r} (PNDM's Runge-Kutta warm-up switch) is not used: skipstep's multistep steps warm up "
        "at first order; the closest to PNDM's PLMS is eta=0, solver_order=3")),
    "set_alpha_to_one": _set_alpha_to_one,
}


def _foreign_solver_type(value, source) -> tuple[str, str] | None:
    if value in SOLVER_TYPES:
        return None
    return ("warn", f"solver_type={value!r} ({source}'s variant) has no skipstep counterpart; using 'heun' (exact "
                    "exponential-integrator weights); 'midpoint' gives DPM-Solver++'s midpoint form")


@functools.lru_cache(maxsize=1)
def _scheduler_key_sets() -> dict[str, frozenset]:
    out = {}
    for name in dir(diffusers.schedulers):
        cls = getattr(diffusers.schedulers, name, None)
        # issubclass, not an attribute probe: a class whose optional backend is missing (CosineDPMSolver without
        # torchsde) is a diffusers dummy that raises ImportError on any attribute access
        if isinstance(cls, type) and name.endswith("Scheduler") and issubclass(cls, SchedulerMixin):
            out[name] = frozenset(set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"})
    return out


@functools.lru_cache(maxsize=1)
def diffusers_scheduler_keys() -> frozenset:
    """Every config key of diffusers' VP-chain schedulers (the KarrasDiffusionSchedulers and relatives)."""
    names = [e.name for e in diffusers.schedulers.KarrasDiffusionSchedulers] + [
        "SASolverScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler", "TCDScheduler", "LCMScheduler",
        "EDMDPMSolverMultistepScheduler"]
    sets = _scheduler_key_sets()
    return frozenset().union(*(sets[n] for n in names if n in sets))


def source_class(config: dict, own_keys: set[str], our_class: str) -> str | None:
    """The class a config belongs to: its ``_class_name`` (configs read from files, or built by ``from_config``),
    else the scheduler class whose ``__init__`` keys are exactly the config's keys (a scheduler built directly,
    ``DPMSolverMultistepScheduler(...).config``, carries no ``_class_name``), else the largest class whose keys
    the config holds (one that also carries hidden keys of other classes); ``None`` if there is none."""
    name = config.get("_class_name")
    if isinstance(name, str):
        return name
    keys = frozenset(k for k in config if not k.startswith("_"))
    if keys == frozenset(own_keys):
        return our_class
    sets = _scheduler_key_sets()
    # DDIM/DDIMParallel (DDPM/DDPMParallel, ...) share their keys and their grids: the plain class stands for both
    exact = [n for n, k in sets.items() if k == keys]
    if exact:
        return min(exact, key=len)
    if frozenset(own_keys) <= keys:
        return our_class
    held = [n for n, k in sets.items() if k <= keys and len(k) > 3]
    return max(held, key=lambda n: (len(sets[n]), -len(n))) if held else None


#: keys that describe the replaced scheduler's own timestep grid, not the model: not carried from a foreign config
REPLACED_GRID_KEYS = ("timestep_spacing", "steps_offset")
_WARNED: set[str] = set()


def _warn_once(text: str) -> None:
    """One warning per process and text: a pipeline or a benchmark rebuilds its scheduler from the same config on
    every swap or cell."""
    if text not in _WARNED:
        _WARNED.add(text)
        logger.warning("%s", text)


def _warn_grid_once(our_class: str, source, dropped: dict) -> None:
    _warn_once(f"{our_class}: the grid of {source} ("
               + ", ".join(f"{k}={v!r}" for k, v in dropped.items())
               + ") is not carried; skipstep's default step rule applies (keep_grid=True or timestep_spacing=... "
                 "keeps a grid)")


def translate_config(config: dict, overrides: dict, own_keys: set[str], our_class: str, keep_grid: bool = False
                     ) -> tuple[dict, dict]:
    """Look at every chosen key of ``config`` and every override (see the module docstring); returns the config and
    overrides to hand to diffusers' ``from_config``. ``keep_grid`` carries the replaced scheduler's grid
    (:data:`REPLACED_GRID_KEYS`). Raises ``ValueError`` for a refused key."""
    config = dict(config)
    overrides = dict(overrides)
    source = source_class(config, own_keys, our_class)
    foreign = isinstance(source, str) and source != our_class
    if foreign and source in REFUSED_SOURCES:
        raise ValueError(f"{our_class} cannot replace {source}: {REFUSED_SOURCES[source]}")
    defaults = set(config.get("_use_default_values", []) or [])
    # a config that went through skipstep and back carries replaced_scheduler (always written): its grid is ours
    if foreign and not keep_grid and "timestep_spacing" not in overrides and "replaced_scheduler" not in config:
        dropped = {k: config.pop(k) for k in REPLACED_GRID_KEYS if k in config and k not in overrides}
        if dropped.get("timestep_spacing") is not None and "timestep_spacing" not in defaults:
            _warn_grid_once(our_class, source, dropped)
    chosen = {k: v for k, v in config.items() if not k.startswith("_") and k not in defaults} if foreign else {}
    merged = {**chosen, **overrides}
    unknown = sorted(k for k in overrides if k not in own_keys and k not in FOREIGN_KEY_RULES)
    if unknown:
        raise ValueError(f"unknown {our_class} option(s) {unknown}; its config keys are {sorted(own_keys)}")
    for key in sorted(merged):
        if key in own_keys:
            continue
        rule = FOREIGN_KEY_RULES.get(key)
        if rule is None:
            if key in diffusers_scheduler_keys():
                _warn_once(f"{our_class} ignores {key}={merged[key]!r} (a key of {source or 'another scheduler'} "
                           "that skipstep does not know)")
            continue  # not a scheduler key at all: diffusers' ConfigMixin warns about it
        verdict = rule(merged[key], merged)
        _act(verdict, key, merged, overrides, source)
    if "solver_type" in merged and foreign and "solver_type" not in overrides:
        verdict = _foreign_solver_type(merged["solver_type"], source)
        if verdict is not None:
            _warn_once(f"{our_class}: {verdict[1]}")
            config.pop("solver_type", None)
    if foreign and "replaced_scheduler" not in config and "replaced_scheduler" not in overrides and hasattr(
            diffusers, source):
        overrides["replaced_scheduler"] = source
    return config, overrides


def _act(verdict, key, merged, overrides, source) -> None:
    if verdict is None:
        return
    action, *rest = verdict
    where = f" (in the config of {source})" if source and key not in overrides else ""
    if action == "refuse":
        raise ValueError(f"{key}={merged[key]!r}{where}: {rest[0]}")
    if key == "algorithm_type" and "eta" in overrides:
        return  # the caller chose eta, which is what the warning would suggest
    _warn_once(f"SkippedStepScheduler: {rest[0]}{where}")


__all__ = [
    "DROP_ZERO_GRID_SCHEDULERS",
    "FOREIGN_KEY_RULES",
    "REFUSED_SOURCES",
    "REPLACED_GRID_KEYS",
    "TRUNCATES_KARRAS_ON_COSINE",
    "diffusers_scheduler_keys",
    "source_class",
    "translate_config",
]
