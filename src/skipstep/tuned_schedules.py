"""Tuned-schedule files: the timesteps and per-step eta of a skipstep sampler tuned for one model and one NFE.

A :class:`TunedSchedule` is a small JSON file (``skipstep tune`` writes it; see ``docs/tuning.md``) that fixes
the visited timesteps (one model evaluation each), the per-step eta, ``solver_order`` and ``variance_type`` of the
sampler it was tuned for, and records the model it was tuned on (``model_fingerprint``, ``num_train_timesteps``).
It is used by

* the diffusers scheduler: ``SkippedStepScheduler.from_config(config, **schedule.scheduler_kwargs())`` or the config
  key ``tuned_schedule`` (the schedule's dict); ``set_timesteps(schedule.nfe)`` then visits the tuned timesteps;
* the functional sampler: ``skipstep.sample(model, shape, tuned_schedule=schedule_or_path)``;
* the benchmark: ``skipstep bench --samplers tuned:PATH.json`` (or ``tuned:digits-nfe10`` for a shipped schedule).

Names (:func:`resolve_tuned_schedule_path`): a name with a ``.json`` suffix or a folder separator is a file path; a
bare ``NAME`` is the shipped schedule ``NAME`` -- and if a file ``NAME`` or ``NAME.json`` also exists in the working
directory, the name is ambiguous and refused, naming both (write ``NAME.json`` or ``./NAME.json`` for the file).
A bare name that is not shipped is the file ``NAME`` or ``NAME.json`` in the working directory.

Precedence (the same in all three). A tuned schedule fixes the timesteps, the per-step eta, ``solver_order``,
``variance_type`` and ``extrapolation_gain`` (1, the exact order-2 step, in a file older than the field) -- it was
fitted for exactly that sampler and is not valid for another. Arguments or config keys
left at their defaults are replaced by the schedule's values (the scheduler rewrites its config, so that
``save_config`` tells the truth); a non-default value that contradicts the schedule is refused with the reason, as is
an explicit ``timesteps=`` list, a step count other than the schedule's NFE, or a model / chain length other than
the one it was tuned for (model fingerprint, ``num_train_timesteps``).

Flow models. A schedule with ``path="flow"`` is tuned for a rectified-flow model (``SkippedStepFlowScheduler``):
its ``timesteps`` are the model's time input ``t = sigma * num_train_timesteps`` as integers in ``[1,
num_train_timesteps]`` (``FlowMatchEulerDiscreteScheduler``'s timesteps, on a grid of ``1 / num_train_timesteps`` in
sigma), the sigmas it visits are ``t / num_train_timesteps`` (:attr:`TunedSchedule.sigmas`) -- the final sigmas:
the config's ``shift`` is not applied to them again --, and its variance is the posterior's (``small``). A VP
scheduler refuses a flow schedule and the flow scheduler a VP one, naming the path.

Guidance. A schedule tuned on a class-conditional model records the classifier-free guidance scale it was tuned at
(``guidance_scale``; ``None``: an unconditional model, or a file older than the field). Using it at another scale
is allowed -- guidance changes the denoiser, not the chain -- but :meth:`TunedSchedule.check_guidance` warns
(:class:`TunedScheduleWarning`): the schedule was fitted for the other scale's model.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .plan import resolve_eta_schedule
from .paths import RectifiedFlowPath
from .steps import DEFAULT_ETA, DEFAULT_FLOW_ETA, DEFAULT_SOLVER_ORDER, canonical_variance_type
from .storage import atomic_write_bytes

FORMAT = "skipstep-tuned-schedule"
FORMAT_VERSION = 1
#: Schedules shipped with the package (``tuned:NAME`` in the benchmark's sampler registry).
TUNED_SCHEDULES_DIR = Path(__file__).parent / "assets" / "schedules"
#: Variance choices a schedule can carry ('optimal' needs an eps_mse table the file does not hold).
SCHEDULE_VARIANCE_TYPES = ("small", "large", "learned")
#: The noise paths a schedule is made for: a discrete VP chain (integer timesteps ``0..T-1``) or a rectified flow
#: (integer model times ``1..T``, ``sigma = t / T``).
SCHEDULE_PATHS = ("vp", "flow")
_DIFFUSERS_NAME = {"small": "fixed_small", "large": "fixed_large", "learned": "learned_range"}


class TunedScheduleError(ValueError):
    """A tuned schedule is corrupt, or does not fit the model / chain / NFE / sampler it is used with (the message
    names the file and says why)."""


class TunedScheduleWarning(UserWarning):
    """A tuned schedule is used at a guidance scale other than the one it was tuned at."""


def _jsonable(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (Path, torch.dtype)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass
class TunedSchedule:
    """A tuned few-step schedule for one model (``model_fingerprint``), one chain (``num_train_timesteps``) and one
    base sampler (``solver_order``, ``variance_type``, ``use_corrector``): ``timesteps`` strictly descending (one model
    evaluation each, so ``nfe = len(timesteps)``) and ``eta`` (one per step, in [0, 1]; the last step's is unused:
    it goes to clean data). ``metric`` is the objective it minimised on ``fit_seeds``; ``guidance_scale`` the
    classifier-free guidance scale of a class-conditional model it was tuned at (``None``: unconditional); ``path``
    ``"vp"`` (timesteps of the discrete chain, ``0..T-1``) or ``"flow"`` (model times ``1..T`` of a rectified flow,
    ``sigma = t / T``; see the module docstring); ``provenance`` records how it was made (sample counts, reference,
    objective before/after, search history, the
    final check, budget, date, versions)."""

    timesteps: list[int]
    eta: list[float]
    nfe: int
    num_train_timesteps: int
    solver_order: int = 1
    variance_type: str = "small"
    model_fingerprint: str | None = None
    metric: str = "fd"
    fit_seeds: list[int] = field(default_factory=list)
    guidance_scale: float | None = None
    use_corrector: bool = False
    provenance: dict = field(default_factory=dict)
    path: str = "vp"
    extrapolation_gain: float = 1.0

    def __post_init__(self):
        if self.path not in SCHEDULE_PATHS:
            raise TunedScheduleError(f"path must be one of {', '.join(SCHEDULE_PATHS)}, got {self.path!r}")
        if isinstance(self.timesteps, torch.Tensor):
            self.timesteps = self.timesteps.tolist()
        if isinstance(self.eta, torch.Tensor):
            self.eta = self.eta.tolist()
        if not isinstance(self.timesteps, (list, tuple)) or not self.timesteps:
            raise TunedScheduleError("timesteps must be a non-empty list of integers")
        if not all(_is_int(t) for t in self.timesteps):
            raise TunedScheduleError(f"timesteps must be integers, got {list(self.timesteps)}")
        self.timesteps = [int(t) for t in self.timesteps]
        if not _is_int(self.num_train_timesteps) or self.num_train_timesteps < 2:
            raise TunedScheduleError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        self.num_train_timesteps = int(self.num_train_timesteps)
        if not _is_int(self.nfe) or self.nfe != len(self.timesteps):
            raise TunedScheduleError(f"nfe ({self.nfe!r}) must equal the number of timesteps ({len(self.timesteps)}): "
                                "skipstep samplers spend one model evaluation per step")
        self.nfe = int(self.nfe)
        ts = self.timesteps
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise TunedScheduleError(f"timesteps must be strictly descending (noisiest first), got {ts}")
        low, high = (1, self.num_train_timesteps) if self.path == "flow" else (0, self.num_train_timesteps - 1)
        if ts[-1] < low or ts[0] > high:
            what = "model times t = sigma * T of a flow schedule" if self.path == "flow" else "timesteps"
            raise TunedScheduleError(f"{what} must lie in [{low}, {high}], got {ts}")
        if not isinstance(self.eta, (list, tuple)) or len(self.eta) != self.nfe:
            raise TunedScheduleError(f"eta must be a list with one value per step ({self.nfe}), got {self.eta!r}")
        etas = []
        for i, v in enumerate(self.eta):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise TunedScheduleError(f"eta[{i}] must be a number, got {v!r}")
            if not 0.0 <= float(v) <= 1.0:  # NaN fails too
                raise TunedScheduleError(f"eta[{i}] must lie in [0, 1], got {v!r}")
            etas.append(float(v))
        self.eta = etas
        if not _is_int(self.solver_order) or self.solver_order not in (1, 2, 3):
            raise TunedScheduleError(f"solver_order must be 1, 2 or 3, got {self.solver_order!r}")
        self.solver_order = int(self.solver_order)
        try:
            vt = canonical_variance_type(self.variance_type)
        except ValueError as err:
            raise TunedScheduleError(str(err)) from None
        if vt not in SCHEDULE_VARIANCE_TYPES:
            raise TunedScheduleError(f"variance_type must be one of {SCHEDULE_VARIANCE_TYPES}, got {self.variance_type!r}")
        self.variance_type = vt
        if self.path == "flow" and vt != "small":
            raise TunedScheduleError(f"a flow schedule's variance_type is the posterior's ('small'), got {vt!r}")
        if self.model_fingerprint is not None and not isinstance(self.model_fingerprint, str):
            raise TunedScheduleError(f"model_fingerprint must be a string, got {self.model_fingerprint!r}")
        if not isinstance(self.metric, str):
            raise TunedScheduleError(f"metric must be a string, got {self.metric!r}")
        if not isinstance(self.fit_seeds, (list, tuple)) or not all(_is_int(s) for s in self.fit_seeds):
            raise TunedScheduleError(f"fit_seeds must be a list of integers, got {self.fit_seeds!r}")
        self.fit_seeds = [int(s) for s in self.fit_seeds]
        if self.guidance_scale is not None:
            w = self.guidance_scale
            if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not (
                    math.isfinite(float(w)) and float(w) >= 0):
                raise TunedScheduleError(f"guidance_scale must be null or a finite number >= 0, got {w!r}")
            self.guidance_scale = float(w)
        if not isinstance(self.use_corrector, bool):
            raise TunedScheduleError(f"use_corrector must be true or false, got {self.use_corrector!r}")
        if not isinstance(self.provenance, dict):
            raise TunedScheduleError("provenance must be a dict")
        g = self.extrapolation_gain
        if isinstance(g, bool) or not isinstance(g, (int, float, np.floating, np.integer)) or not (
                math.isfinite(float(g)) and float(g) >= 0):
            raise TunedScheduleError(f"extrapolation_gain must be a finite number >= 0, got {g!r}")
        self.extrapolation_gain = float(g)

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the file's content, and the scheduler's ``tuned_schedule`` config value)."""
        return {"format": FORMAT, "version": FORMAT_VERSION, **json.loads(json.dumps(asdict(self), default=_jsonable))}

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "TunedSchedule":
        where = f"tuned schedule {source}" if source else "tuned schedule"
        if isinstance(data, TunedSchedule):
            return data
        if not isinstance(data, dict):
            raise TunedScheduleError(f"corrupt {where}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt, version = data.pop("format", FORMAT), data.pop("version", FORMAT_VERSION)
        if fmt != FORMAT:
            raise TunedScheduleError(f"corrupt {where}: not a skipstep tuned schedule (format {fmt!r})")
        if version != FORMAT_VERSION:
            raise TunedScheduleError(f"{where} has format version {version!r}; this skipstep reads version "
                                f"{FORMAT_VERSION}")
        required = ("timesteps", "eta", "nfe", "num_train_timesteps")
        missing = [k for k in required if k not in data]
        if missing:
            raise TunedScheduleError(f"corrupt {where}: missing {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:  # a typo would otherwise silently fall back to a default
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                     for k in unknown]
            raise TunedScheduleError(f"corrupt {where}: unknown key(s) {', '.join(hints)}; known keys: format, "
                                     f"version, {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TunedScheduleError as err:
            raise TunedScheduleError(f"corrupt {where}: {err}") from None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the schedule as JSON (atomically: a torn file cannot exist); refuses an existing file unless
        ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise TunedScheduleError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    # -- use -----------------------------------------------------------------------------------------------------
    def check(self, model_fingerprint: str | None = None, num_train_timesteps: int | None = None,
              nfe: int | None = None, source: str | None = None, path: str | None = None) -> "TunedSchedule":
        """Refuse (with the reason) a model, chain length, NFE or noise path (``"vp"``/``"flow"``) this schedule
        was not made for."""
        where = f"tuned schedule {source}" if source else "tuned schedule"
        if path is not None and path != self.path:
            kinds = {"vp": "a discrete VP chain (SkippedStepScheduler)",
                     "flow": "a rectified-flow model (SkippedStepFlowScheduler)"}
            raise TunedScheduleError(f"{where} was tuned for {kinds[self.path]}, but it is used with "
                                     f"{kinds.get(path, path)}: tune one for this model with `skipstep tune`")
        if model_fingerprint is not None and self.model_fingerprint != model_fingerprint:
            made_for = self.provenance.get("model", "?")
            raise TunedScheduleError(
                f"{where} was tuned for the model with fingerprint {self.model_fingerprint} ({made_for!s}), but this "
                f"model's fingerprint is {model_fingerprint}: a schedule tuned on one model is not valid for another "
                "(tune one for this model with `skipstep tune`)")
        if num_train_timesteps is not None and int(num_train_timesteps) != self.num_train_timesteps:
            raise TunedScheduleError(
                f"{where} was made for a chain of T={self.num_train_timesteps} training timesteps, but this "
                f"model/scheduler has T={int(num_train_timesteps)} (num_train_timesteps)")
        if nfe is not None and int(nfe) != self.nfe:
            raise TunedScheduleError(
                f"{where} was tuned for NFE={self.nfe}, but NFE={int(nfe)} was asked: a tuned schedule runs at "
                "exactly the NFE it was tuned for (tune another one for this NFE)")
        return self

    def check_guidance(self, guidance_scale: float | None, source: str | None = None) -> str | None:
        """Warn (:class:`TunedScheduleWarning`) and return the message when the schedule is used at a guidance
        scale other than the one it was tuned at; ``None`` when they agree or either is unknown (``None``)."""
        if self.guidance_scale is None or guidance_scale is None or float(guidance_scale) == self.guidance_scale:
            return None
        where = f"tuned schedule {source}" if source else "tuned schedule"
        message = (f"{where} was tuned at guidance scale {self.guidance_scale:g} and is used at "
                   f"{float(guidance_scale):g}: it was fitted for the other scale (tune one with `skipstep tune "
                   f"--guidance-scale {float(guidance_scale):g}`)")
        warnings.warn(message, TunedScheduleWarning, stacklevel=2)
        return message

    @property
    def sigmas(self) -> list[float]:
        """The sigmas a flow schedule visits, ``t / T`` (the final ones: no shift is applied to them)."""
        if self.path != "flow":
            raise TunedScheduleError("sigmas are the noise levels of a flow schedule; this one is for a VP chain "
                                     "(its timesteps index the chain)")
        return [t / self.num_train_timesteps for t in self.timesteps]

    def timesteps_for(self, num_inference_steps: int | None = None, timesteps=None) -> torch.Tensor:
        """The scheduler's ``set_timesteps`` with a tuned schedule: the tuned timesteps (int64)."""
        if timesteps is not None:
            raise TunedScheduleError("explicit timesteps are refused while a tuned schedule is configured (it fixes the "
                                "timesteps); remove tuned_schedule from the config to pass your own")
        if num_inference_steps is not None:
            self.check(nfe=num_inference_steps)
        return torch.as_tensor(self.timesteps, dtype=torch.int64)

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SkippedStepScheduler.from_config(config, **kwargs)`` (``SkippedStepFlowScheduler``
        for a flow schedule): the config keys the schedule fixes (a schedule fitted with the learned variance uses
        it)."""
        common = {"tuned_schedule": self.to_dict(), "eta": list(self.eta), "solver_order": self.solver_order,
                  "use_corrector": self.use_corrector, "extrapolation_gain": self.extrapolation_gain}
        if self.path == "flow":
            return common
        return {**common, "variance_type": _DIFFUSERS_NAME[self.variance_type],
                "use_learned_variance": self.variance_type == "learned"}

    @property
    def stochastic(self) -> bool:
        return any(e > 0 for e in self.eta[:-1])


def resolve_tuned_schedule_path(name_or_path: str | Path) -> Path:
    """The file a schedule name means (the rule is in the module docstring): a path as given (a ``Path``, or a
    name with a ``.json`` suffix or a folder separator); for a bare ``NAME``, the shipped schedule
    ``assets/schedules/NAME.json``, refused as ambiguous if ``NAME`` or ``NAME.json`` also exists here."""
    text = str(name_or_path)
    p = Path(text)
    if isinstance(name_or_path, Path) or p.suffix == ".json" or os.sep in text or "/" in text:
        return p
    shipped = TUNED_SCHEDULES_DIR / f"{text}.json"
    local = [c for c in (p, Path(f"{text}.json")) if c.is_file()]
    if shipped.is_file() and local:
        raise TunedScheduleError(
            f"tuned schedule name {text!r} is ambiguous: the shipped schedule {shipped} and the file "
            f"./{local[0]} in the working directory both match it; name the file as a path (./{local[0]}), or "
            "rename the file to use the shipped schedule")
    if shipped.is_file() or not local:
        return shipped  # a missing one is reported by load_tuned_schedule, with the shipped names
    return local[0]


def load_tuned_schedule(path: str | Path, model_fingerprint: str | None = None, num_train_timesteps: int | None = None,
                  nfe: int | None = None) -> TunedSchedule:
    """Read and validate a schedule file; refuse (with the reason) one made for another model (fingerprint), chain
    length ``T`` or NFE. A missing or corrupt file raises :class:`TunedScheduleError` naming the file."""
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.stem for p in TUNED_SCHEDULES_DIR.glob("*.json"))
        raise TunedScheduleError(f"tuned schedule file not found: {path}"
                            + (f" (shipped schedules: {', '.join(shipped)})" if shipped else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TunedScheduleError(f"corrupt tuned schedule file {path}: {err}") from None
    schedule = TunedSchedule.from_dict(data, source=f"file {path}")
    return schedule.check(model_fingerprint, num_train_timesteps, nfe, source=f"file {path}")


def _as_tuned_schedule(schedule, num_train_timesteps: int | None = None,
                       noise_path: str | None = None) -> tuple[TunedSchedule, str]:
    if isinstance(schedule, TunedSchedule):
        source = "(given)"
    elif isinstance(schedule, dict):
        schedule, source = TunedSchedule.from_dict(schedule, source="(config)"), "(config)"
    elif isinstance(schedule, (str, Path)):
        path = resolve_tuned_schedule_path(schedule)
        schedule, source = load_tuned_schedule(path), f"file {path}"
    else:
        raise TunedScheduleError(f"a tuned schedule must be a TunedSchedule, its dict or a path; got "
                            f"{type(schedule).__name__}")
    schedule.check(num_train_timesteps=num_train_timesteps, source=source, path=noise_path)
    return schedule, source


def _same_eta(a, b, n: int) -> bool:
    try:
        la, lb = resolve_eta_schedule(a, n), resolve_eta_schedule(b, n)
    except ValueError:
        return False
    return all(abs(x - y) <= 1e-12 for x, y in zip(la, lb))


def _adopt(schedule: TunedSchedule, source: str, eta, solver_order, variance_type, default_eta=DEFAULT_ETA,
           extrapolation_gain=None) -> None:
    """Refuse explicit (non-default) settings that contradict the schedule (see the module docstring);
    ``default_eta``: the eta a caller who set none has (``DEFAULT_FLOW_ETA`` on a flow path);
    ``extrapolation_gain``: ``None`` (the default rule) or a number, which must be the schedule's."""
    conflicts = []
    n = schedule.nfe
    if not _same_eta(eta, default_eta, n) and not _same_eta(eta, schedule.eta, n):
        conflicts.append(f"eta={eta!r} (the schedule's is {schedule.eta})")
    if solver_order not in (DEFAULT_SOLVER_ORDER, schedule.solver_order):
        conflicts.append(f"solver_order={solver_order!r} (the schedule's is {schedule.solver_order})")
    vt = canonical_variance_type(variance_type)
    if vt not in ("small", schedule.variance_type):
        conflicts.append(f"variance_type={variance_type!r} (the schedule's is {schedule.variance_type!r})")
    if extrapolation_gain is not None and extrapolation_gain != schedule.extrapolation_gain:
        conflicts.append(f"extrapolation_gain={extrapolation_gain!r} (the schedule's is {schedule.extrapolation_gain:g})")
    if conflicts:
        raise TunedScheduleError(
            f"tuned schedule {source} fixes eta, solver_order, variance_type and extrapolation_gain (it was tuned for "
            f"that sampler), but "
            f"{'; '.join(conflicts)} was asked: leave these at their defaults or set them to the schedule's values")


def scheduler_settings_from_tuned_schedule(tuned_schedule, num_train_timesteps: int, eta, solver_order: int,
                                     variance_type: str, extrapolation_gain=None
                                     ) -> tuple[TunedSchedule, dict[str, Any]]:
    """For ``SkippedStepScheduler(tuned_schedule=...)``: the schedule and the config keys it fixes (the corrector
    as it was tuned -- off in a schedule written before ``use_corrector`` existed; a schedule fitted with the learned
    variance uses it)."""
    schedule, source = _as_tuned_schedule(tuned_schedule, num_train_timesteps, "vp")
    _adopt(schedule, source, eta, solver_order, variance_type, extrapolation_gain=extrapolation_gain)
    fixed = schedule.scheduler_kwargs()
    if canonical_variance_type(variance_type) == schedule.variance_type:
        fixed["variance_type"] = variance_type  # the caller's spelling of the same choice stays in the config
    return schedule, fixed


def flow_scheduler_settings_from_tuned_schedule(tuned_schedule, num_train_timesteps: int, eta, solver_order: int,
                                                extrapolation_gain=None) -> tuple[TunedSchedule, dict[str, Any]]:
    """For ``SkippedStepFlowScheduler(tuned_schedule=...)``: the flow schedule and the config keys it fixes."""
    schedule, source = _as_tuned_schedule(tuned_schedule, num_train_timesteps, "flow")
    _adopt(schedule, source, eta, solver_order, "small", default_eta=DEFAULT_FLOW_ETA,
           extrapolation_gain=extrapolation_gain)
    return schedule, schedule.scheduler_kwargs()


def sampling_settings_from_tuned_schedule(schedule, path, timesteps=None, num_steps=None, eta=DEFAULT_ETA,
                                    solver_order: int = DEFAULT_SOLVER_ORDER, variance_type: str = "small",
                                    extrapolation_gain=None):
    """For ``skipstep.sample(..., tuned_schedule=...)``: ``(timesteps, eta, solver_order, variance_type,
    use_learned_variance, use_corrector, extrapolation_gain)``; on a :class:`~skipstep.paths.RectifiedFlowPath` a flow schedule's
    sigmas are the timesteps (float64)."""
    flow = isinstance(path, RectifiedFlowPath)
    if not flow and not getattr(path, "discrete", False):
        raise TunedScheduleError("tuned schedules are made for discrete (DDPM-type) chains and rectified flows; this "
                                 f"path ({type(path).__name__}) is neither")
    schedule, source = _as_tuned_schedule(schedule, None if flow else path.t_max + 1, "flow" if flow else "vp")
    if timesteps is not None:
        raise TunedScheduleError(f"pass either timesteps or a tuned schedule, not both (tuned schedule {source} fixes "
                            "the timesteps)")
    if num_steps not in (None, 10, schedule.nfe):  # 10 is sample()'s default
        schedule.check(nfe=num_steps, source=source)
    _adopt(schedule, source, eta, solver_order, variance_type, DEFAULT_FLOW_ETA if flow else DEFAULT_ETA,
           extrapolation_gain)
    if flow:
        return (torch.as_tensor(schedule.sigmas, dtype=torch.float64), list(schedule.eta), schedule.solver_order,
                "small", False, schedule.use_corrector, schedule.extrapolation_gain)
    return (torch.as_tensor(schedule.timesteps, dtype=torch.int64), list(schedule.eta), schedule.solver_order,
            schedule.variance_type, schedule.variance_type == "learned", schedule.use_corrector,
            schedule.extrapolation_gain)


#: The earlier name of :func:`load_tuned_schedule` (kept: the README of skipstep 0.1 used it).
load_schedule = load_tuned_schedule

__all__ = [
    "SCHEDULE_PATHS",
    "SCHEDULE_VARIANCE_TYPES",
    "TUNED_SCHEDULES_DIR",
    "TunedSchedule",
    "TunedScheduleError",
    "TunedScheduleWarning",
    "flow_scheduler_settings_from_tuned_schedule",
    "load_schedule",
    "load_tuned_schedule",
    "resolve_tuned_schedule_path",
    "sampling_settings_from_tuned_schedule",
    "scheduler_settings_from_tuned_schedule",
]
