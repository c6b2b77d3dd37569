"""Tuned step schedules: the visited timesteps and the per-step eta of a skipstep sampler, searched for one model
and one NFE so that the few-step samples come as close as possible to the model's own many-step samples.

``skipstep tune --model digits --nfe 10 --base skipstep-eta0.5 --solver-order 2 --num-samples 1000 --fit-seeds 0
--eval-seeds 1,2,3 --budget-nfe 3000 --budget-minutes 5 --out digits-nfe10.json``

The file (:class:`TunedSchedule`) is used by

* the diffusers scheduler: ``SkippedStepScheduler.from_config(config, **schedule.scheduler_kwargs())`` or the config
  key ``tuned_schedule`` (the schedule's dict); ``set_timesteps(schedule.nfe)`` then visits the tuned timesteps;
* the functional sampler: ``skipstep.sample(model, shape, schedule=schedule_or_path)``;
* the benchmark: ``skipstep bench --samplers tuned:PATH.json`` (or ``tuned:digits-nfe10`` for a shipped schedule).

Precedence (the same in all three). A tuned schedule fixes the timesteps, the per-step eta, ``solver_order`` and
``variance_type`` -- it was fitted for exactly that sampler and is not valid for another. Arguments or config keys
left at their defaults are replaced by the schedule's values (the scheduler rewrites its config, so that
``save_config`` tells the truth); a non-default value that contradicts the schedule is refused with the reason, as is
an explicit ``timesteps=`` list, a step count other than the schedule's NFE, or a model / chain length other than
the one it was tuned for (model fingerprint, ``num_train_timesteps``).

The search (:func:`tune_schedule`). Objective: the Fréchet distance in the model's feature space
(``ModelSpec.feature_fn``) between the few-step samples and a reference set -- the model's own 1000-step ancestral
samples (the exact data distribution for analytic models), drawn by the benchmark engine's reference code and
cached on disk keyed by model fingerprint, seed, count and batch size -- or the sliced Wasserstein distance in pixel
space when the model has no feature network. Every candidate is sampled from the same initial noise and the same
per-step noise (common random numbers: noise ``z_i`` of step ``i`` is fixed per fit seed, whatever the timesteps
and eta), so differences between candidates are differences of the schedules, not of the noise. Stages:

1. the library's spacings with the base eta: trailing (uniform in t), quadratic, uniform in log-SNR;
2. a pattern search over a smooth family: positions ``u_i = (n-1-i)/(n-1)`` warped by a power ``rho`` and placed
   uniformly in a coordinate that blends time (``kappa = 0``) and log-SNR (``kappa = 1``) between ``t_start`` and
   ``t_end`` (trailing, quadratic and log-SNR spacing are members), with eta a linear ramp ``eta_a -> eta_b``;
3. a coordinate search that moves single timesteps and single etas, accepting improvements.

It stops when the NFE budget (batched network evaluations spent on candidates, counted) or the time budget runs
out, or when no move improves. The result is the best candidate evaluated, so it is never worse (on the fit seeds)
than the best starting spacing. A budget too small for one candidate is refused before any work.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .sampling import DEFAULT_ETA, DEFAULT_SOLVER_ORDER
from .steps import canonical_variance_type, resolve_eta_schedule

__all__ = [
    "BaseSampler",
    "ScheduleError",
    "SpacingParams",
    "TunedSchedule",
    "add_subcommand",
    "compare_schedules",
    "family_timesteps",
    "format_comparison",
    "load_schedule",
    "main_tune",
    "reference_samples",
    "resolve_base",
    "resolve_schedule_path",
    "tune_schedule",
]

FORMAT = "skipstep-tuned-schedule"
FORMAT_VERSION = 1
#: Schedules shipped with the package (``tuned:NAME`` in the sampler registry).
SCHEDULES_DIR = Path(__file__).parent / "assets" / "schedules"
#: Variance choices a schedule can carry ('optimal' needs an eps_mse table the file does not hold).
SCHEDULE_VARIANCE_TYPES = ("small", "large", "learned")
_DIFFUSERS_NAME = {"small": "fixed_small", "large": "fixed_large", "learned": "learned_range"}
CACHE_ENV = "SKIPSTEP_CACHE_DIR"
#: Relative improvement a move must bring to be accepted (guards against chasing round-off).
MIN_RELATIVE_IMPROVEMENT = 1e-4
#: Share of the budget the smooth (parametric) stage may use; the coordinate stage gets the rest.
SMOOTH_STAGE_SHARE = 0.5
#: Validation seeds by default (the smallest seeds not used for fitting, evaluation or the references).
DEFAULT_NUM_VAL_SEEDS = 2


class ScheduleError(ValueError):
    """A tuned schedule is corrupt, or does not fit the model / chain / NFE / sampler it is used with (the message
    names the file and says why)."""


# ----------------------------------------------------------------------------------------------------------------
# the schedule file
# ----------------------------------------------------------------------------------------------------------------
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
    base sampler (``solver_order``, ``variance_type``): ``timesteps`` strictly descending (one model evaluation
    each, so ``nfe = len(timesteps)``) and ``eta`` (one per step, in [0, 1]; the last step's is unused: it goes to
    clean data). ``metric`` is the objective it minimised on ``fit_seeds``; ``provenance`` records how it was
    made (sample counts, reference, objective before/after, search history, budget, date, versions)."""

    timesteps: list[int]
    eta: list[float]
    nfe: int
    num_train_timesteps: int
    solver_order: int = 1
    variance_type: str = "small"
    model_fingerprint: str | None = None
    metric: str = "fd"
    fit_seeds: list[int] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.timesteps, torch.Tensor):
            self.timesteps = self.timesteps.tolist()
        if isinstance(self.eta, torch.Tensor):
            self.eta = self.eta.tolist()
        if not isinstance(self.timesteps, (list, tuple)) or not self.timesteps:
            raise ScheduleError("timesteps must be a non-empty list of integers")
        if not all(_is_int(t) for t in self.timesteps):
            raise ScheduleError(f"timesteps must be integers, got {list(self.timesteps)}")
        self.timesteps = [int(t) for t in self.timesteps]
        if not _is_int(self.num_train_timesteps) or self.num_train_timesteps < 2:
            raise ScheduleError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        self.num_train_timesteps = int(self.num_train_timesteps)
        if not _is_int(self.nfe) or self.nfe != len(self.timesteps):
            raise ScheduleError(f"nfe ({self.nfe!r}) must equal the number of timesteps ({len(self.timesteps)}): "
                                "skipstep samplers spend one model evaluation per step")
        self.nfe = int(self.nfe)
        ts = self.timesteps
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise ScheduleError(f"timesteps must be strictly descending (noisiest first), got {ts}")
        if ts[-1] < 0 or ts[0] > self.num_train_timesteps - 1:
            raise ScheduleError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {ts}")
        if not isinstance(self.eta, (list, tuple)) or len(self.eta) != self.nfe:
            raise ScheduleError(f"eta must be a list with one value per step ({self.nfe}), got {self.eta!r}")
        etas = []
        for i, v in enumerate(self.eta):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ScheduleError(f"eta[{i}] must be a number, got {v!r}")
            if not 0.0 <= float(v) <= 1.0:  # NaN fails too
                raise ScheduleError(f"eta[{i}] must lie in [0, 1], got {v!r}")
            etas.append(float(v))
        self.eta = etas
        if not _is_int(self.solver_order) or self.solver_order not in (1, 2, 3):
            raise ScheduleError(f"solver_order must be 1, 2 or 3, got {self.solver_order!r}")
        self.solver_order = int(self.solver_order)
        try:
            vt = canonical_variance_type(self.variance_type)
        except ValueError as err:
            raise ScheduleError(str(err)) from None
        if vt not in SCHEDULE_VARIANCE_TYPES:
            raise ScheduleError(f"variance_type must be one of {SCHEDULE_VARIANCE_TYPES}, got {self.variance_type!r}")
        self.variance_type = vt
        if self.model_fingerprint is not None and not isinstance(self.model_fingerprint, str):
            raise ScheduleError(f"model_fingerprint must be a string, got {self.model_fingerprint!r}")
        if not isinstance(self.metric, str):
            raise ScheduleError(f"metric must be a string, got {self.metric!r}")
        if not isinstance(self.fit_seeds, (list, tuple)) or not all(_is_int(s) for s in self.fit_seeds):
            raise ScheduleError(f"fit_seeds must be a list of integers, got {self.fit_seeds!r}")
        self.fit_seeds = [int(s) for s in self.fit_seeds]
        if not isinstance(self.provenance, dict):
            raise ScheduleError("provenance must be a dict")

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
            raise ScheduleError(f"corrupt {where}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt, version = data.pop("format", FORMAT), data.pop("version", FORMAT_VERSION)
        if fmt != FORMAT:
            raise ScheduleError(f"corrupt {where}: not a skipstep tuned schedule (format {fmt!r})")
        if version != FORMAT_VERSION:
            raise ScheduleError(f"{where} has format version {version!r}; this skipstep reads version "
                                f"{FORMAT_VERSION}")
        required = ("timesteps", "eta", "nfe", "num_train_timesteps")
        missing = [k for k in required if k not in data]
        if missing:
            raise ScheduleError(f"corrupt {where}: missing {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ScheduleError as err:
            raise ScheduleError(f"corrupt {where}: {err}") from None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the schedule as JSON (atomically: a torn file cannot exist); refuses an existing file unless
        ``overwrite``."""
        from .bench import _atomic_write_bytes

        path = Path(path)
        if path.exists() and not overwrite:
            raise ScheduleError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        _atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    # -- use -----------------------------------------------------------------------------------------------------
    def check(self, model_fingerprint: str | None = None, num_train_timesteps: int | None = None,
              nfe: int | None = None, source: str | None = None) -> "TunedSchedule":
        """Refuse (with the reason) a model, chain length or NFE this schedule was not made for."""
        where = f"tuned schedule {source}" if source else "tuned schedule"
        if model_fingerprint is not None and self.model_fingerprint != model_fingerprint:
            made_for = self.provenance.get("model", "?")
            raise ScheduleError(
                f"{where} was tuned for the model with fingerprint {self.model_fingerprint} ({made_for!s}), but this "
                f"model's fingerprint is {model_fingerprint}: a schedule tuned on one model is not valid for another "
                "(tune one for this model with `skipstep tune`)")
        if num_train_timesteps is not None and int(num_train_timesteps) != self.num_train_timesteps:
            raise ScheduleError(
                f"{where} was made for a chain of T={self.num_train_timesteps} training timesteps, but this "
                f"model/scheduler has T={int(num_train_timesteps)} (num_train_timesteps)")
        if nfe is not None and int(nfe) != self.nfe:
            raise ScheduleError(
                f"{where} was tuned for NFE={self.nfe}, but NFE={int(nfe)} was asked: a tuned schedule runs at "
                "exactly the NFE it was tuned for (tune another one for this NFE)")
        return self

    def timesteps_for(self, num_inference_steps: int | None = None, timesteps=None) -> torch.Tensor:
        """The scheduler's ``set_timesteps`` with a tuned schedule: the tuned timesteps (int64)."""
        if timesteps is not None:
            raise ScheduleError("explicit timesteps are refused while a tuned schedule is configured (it fixes the "
                                "timesteps); remove tuned_schedule from the config to pass your own")
        if num_inference_steps is not None:
            self.check(nfe=num_inference_steps)
        return torch.as_tensor(self.timesteps, dtype=torch.int64)

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SkippedStepScheduler.from_config(config, **kwargs)``."""
        return {"tuned_schedule": self.to_dict(), "eta": list(self.eta), "solver_order": self.solver_order,
                "variance_type": _DIFFUSERS_NAME[self.variance_type]}

    @property
    def stochastic(self) -> bool:
        return any(e > 0 for e in self.eta[:-1])


def resolve_schedule_path(name_or_path: str | Path) -> Path:
    """A path as given, or the shipped schedule ``assets/schedules/NAME.json`` for a bare name."""
    p = Path(name_or_path)
    if p.exists() or p.suffix == ".json" or os.sep in str(name_or_path):
        return p
    return SCHEDULES_DIR / f"{name_or_path}.json"


def load_schedule(path: str | Path, model_fingerprint: str | None = None, num_train_timesteps: int | None = None,
                  nfe: int | None = None) -> TunedSchedule:
    """Read and validate a schedule file; refuse (with the reason) one made for another model (fingerprint), chain
    length ``T`` or NFE. A missing or corrupt file raises :class:`ScheduleError` naming the file."""
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.stem for p in SCHEDULES_DIR.glob("*.json"))
        raise ScheduleError(f"tuned schedule file not found: {path}"
                            + (f" (shipped schedules: {', '.join(shipped)})" if shipped else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScheduleError(f"corrupt tuned schedule file {path}: {err}") from None
    schedule = TunedSchedule.from_dict(data, source=f"file {path}")
    return schedule.check(model_fingerprint, num_train_timesteps, nfe, source=f"file {path}")


def _as_schedule(schedule, num_train_timesteps: int | None = None) -> tuple[TunedSchedule, str]:
    if isinstance(schedule, TunedSchedule):
        source = "(given)"
    elif isinstance(schedule, dict):
        schedule, source = TunedSchedule.from_dict(schedule, source="(config)"), "(config)"
    elif isinstance(schedule, (str, Path)):
        path = resolve_schedule_path(schedule)
        schedule, source = load_schedule(path), f"file {path}"
    else:
        raise ScheduleError(f"a tuned schedule must be a TunedSchedule, its dict or a path; got "
                            f"{type(schedule).__name__}")
    schedule.check(num_train_timesteps=num_train_timesteps, source=source)
    return schedule, source


def _same_eta(a, b, n: int) -> bool:
    try:
        la, lb = resolve_eta_schedule(a, n), resolve_eta_schedule(b, n)
    except ValueError:
        return False
    return all(abs(x - y) <= 1e-12 for x, y in zip(la, lb))


def _adopt(schedule: TunedSchedule, source: str, eta, solver_order, variance_type) -> None:
    """Refuse explicit (non-default) settings that contradict the schedule (see the module docstring)."""
    conflicts = []
    n = schedule.nfe
    if not _same_eta(eta, DEFAULT_ETA, n) and not _same_eta(eta, schedule.eta, n):
        conflicts.append(f"eta={eta!r} (the schedule's is {schedule.eta})")
    if solver_order not in (DEFAULT_SOLVER_ORDER, schedule.solver_order):
        conflicts.append(f"solver_order={solver_order!r} (the schedule's is {schedule.solver_order})")
    vt = canonical_variance_type(variance_type)
    if vt not in ("small", schedule.variance_type):
        conflicts.append(f"variance_type={variance_type!r} (the schedule's is {schedule.variance_type!r})")
    if conflicts:
        raise ScheduleError(
            f"tuned schedule {source} fixes eta, solver_order and variance_type (it was tuned for that sampler), but "
            f"{'; '.join(conflicts)} was asked: leave these at their defaults or set them to the schedule's values")


def scheduler_settings_from_schedule(tuned_schedule, num_train_timesteps: int, eta, solver_order: int,
                                     variance_type: str) -> tuple[TunedSchedule, dict[str, Any]]:
    """For ``SkippedStepScheduler(tuned_schedule=...)``: the schedule and the config keys it fixes."""
    schedule, source = _as_schedule(tuned_schedule, num_train_timesteps)
    _adopt(schedule, source, eta, solver_order, variance_type)
    vt = variance_type if canonical_variance_type(variance_type) == schedule.variance_type else \
        _DIFFUSERS_NAME[schedule.variance_type]
    return schedule, {"tuned_schedule": schedule.to_dict(), "eta": list(schedule.eta),
                      "solver_order": schedule.solver_order, "variance_type": vt}


def sampling_settings_from_schedule(schedule, path, timesteps=None, num_steps=None, eta=DEFAULT_ETA,
                                    solver_order: int = DEFAULT_SOLVER_ORDER, variance_type: str = "small"):
    """For ``skipstep.sample(..., schedule=...)``: ``(timesteps, eta, solver_order, variance_type)``."""
    if not getattr(path, "discrete", False):
        raise ScheduleError("tuned schedules are made for discrete (DDPM-type) chains; this path is continuous")
    schedule, source = _as_schedule(schedule, path.t_max + 1)
    if timesteps is not None:
        raise ScheduleError(f"pass either timesteps or a tuned schedule, not both (tuned schedule {source} fixes "
                            "the timesteps)")
    if num_steps not in (None, 10, schedule.nfe):  # 10 is sample()'s default
        schedule.check(nfe=num_steps, source=source)
    _adopt(schedule, source, eta, solver_order, variance_type)
    return (torch.as_tensor(schedule.timesteps, dtype=torch.int64), list(schedule.eta), schedule.solver_order,
            schedule.variance_type)


# ----------------------------------------------------------------------------------------------------------------
# the sampler registry: tuned:PATH
# ----------------------------------------------------------------------------------------------------------------
TUNED_PREFIX = "tuned:"


def tuned_sampler_spec(name: str):
    """The :class:`~skipstep.samplers.SamplerSpec` of ``tuned:PATH.json`` (or ``tuned:NAME`` for a shipped
    schedule): a :class:`~skipstep.diffusers_schedulers.SkippedStepScheduler` carrying the schedule, runnable
    at exactly the schedule's NFE; its settings name the model fingerprint and T, which the bench checks."""
    from .samplers import SamplerError, SamplerSpec, _from_config, clip_overrides

    ref = name[len(TUNED_PREFIX):]
    if not ref:
        raise SamplerError("a tuned sampler is named tuned:PATH.json (or tuned:NAME for a shipped schedule)")
    path = resolve_schedule_path(ref)
    try:
        schedule = load_schedule(path)
    except ScheduleError as err:
        raise SamplerError(f"sampler {name!r}: {err}") from None

    def factory(config: dict, steps: int):
        from .diffusers_schedulers import SkippedStepScheduler

        return _from_config(SkippedStepScheduler, config, timestep_spacing="trailing",
                            **clip_overrides(config, "clip_sample"), **schedule.scheduler_kwargs())

    return SamplerSpec(
        name=name, factory=factory, min_nfe=schedule.nfe, max_nfe=schedule.nfe, family="tuned",
        stochastic=schedule.stochastic,
        description=f"tuned schedule {path} (NFE {schedule.nfe}, solver_order {schedule.solver_order})",
        settings={"class": "SkippedStepScheduler", "tuned_schedule": str(path), "timesteps": schedule.timesteps,
                  "eta": schedule.eta, "solver_order": schedule.solver_order,
                  "variance": schedule.variance_type, "model_fingerprint": schedule.model_fingerprint,
                  "num_train_timesteps": schedule.num_train_timesteps},
        order_reason=f"a tuned schedule runs at exactly the NFE it was tuned for ({schedule.nfe})",
    )


# ----------------------------------------------------------------------------------------------------------------
# the base sampler and the search space
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseSampler:
    """The eta-family member being tuned: its starting eta, its order and its noise variance."""

    name: str
    eta: Any
    solver_order: int = 1
    variance_type: str = "small"

    def eta_list(self, n: int) -> list[float]:
        return resolve_eta_schedule(self.eta, n)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "eta": self.eta, "solver_order": self.solver_order,
                "variance_type": self.variance_type}


def base_names() -> list[str]:
    from .samplers import _SAMPLERS

    return [n for n, s in _SAMPLERS.items() if s.family == "skipstep"]


def resolve_base(base: str | BaseSampler = "skipstep", solver_order: int | None = None,
                 variance_type: str | None = None, eta=None) -> BaseSampler:
    """A registered skipstep sampler name (its eta), with ``solver_order``/``variance_type``/``eta`` overrides."""
    if isinstance(base, BaseSampler):
        b = base
    else:
        from .samplers import _SAMPLERS

        spec = _SAMPLERS.get(base)
        if spec is None or spec.family != "skipstep":
            raise ValueError(f"base sampler must be one of skipstep's own samplers ({', '.join(base_names())}); "
                             f"got {base!r}")
        e = spec.settings.get("eta", 1.0)
        o = spec.settings.get("solver_order", 1)
        b = BaseSampler(base, DEFAULT_ETA if e == "DEFAULT_ETA" else e,
                        DEFAULT_SOLVER_ORDER if o == "DEFAULT_SOLVER_ORDER" else int(o))
    order = b.solver_order if solver_order is None else solver_order
    if order not in (1, 2, 3):
        raise ValueError(f"solver_order must be 1, 2 or 3, got {order!r}")
    vt = canonical_variance_type(b.variance_type if variance_type is None else variance_type)
    if vt not in ("small", "large"):
        raise ValueError(f"tuning supports variance_type small or large, got {vt!r}")
    e = b.eta if eta is None else eta
    if not isinstance(e, (list, tuple)):
        resolve_eta_schedule(e, 4)  # validate the form early (per-step lists are checked against the NFE later)
    return BaseSampler(b.name, e, int(order), vt)


@dataclass(frozen=True)
class SpacingParams:
    """A point of the smooth timestep family (see :func:`family_timesteps`)."""

    kappa: float  # 0: uniform in time, 1: uniform in log-SNR
    rho: float  # power warp of the positions (1: none, 2: quadratic)
    t_start: int
    t_end: int


def family_timesteps(path, n: int, p: SpacingParams) -> list[int]:
    """``n`` strictly descending integer timesteps from ``t_start`` to ``t_end``: positions ``u_i^rho``
    (``u_i = (n-1-i)/(n-1)``) uniform in ``g(t) = (1-kappa) (t - t_end)/(t_start - t_end) + kappa (lambda(t_end) -
    lambda(t)) / (lambda(t_end) - lambda(t_start))``. Trailing, quadratic and log-SNR spacing are members."""
    from .timesteps import _make_strictly_descending

    T = path.t_max + 1
    t_start, t_end = int(p.t_start), int(p.t_end)
    if not 0 <= t_end <= t_start - (n - 1) or t_start > T - 1:
        raise ValueError(f"need 0 <= t_end <= t_start - (n-1) and t_start <= {T - 1}; got {p}")
    if n == 1:
        return [t_start]
    grid = np.arange(t_end, t_start + 1, dtype=np.float64)
    lam = path.log_snr(torch.as_tensor(grid.astype(np.int64))).numpy().astype(np.float64)
    finite = np.isfinite(lam)
    if not finite.all():  # zero terminal SNR: -inf at T-1
        lam = np.where(finite, lam, lam[finite].min() - 1.0)
    g_time = (grid - t_end) / max(t_start - t_end, 1)
    g_lam = (lam[0] - lam) / max(lam[0] - lam[-1], 1e-12)
    g = (1.0 - p.kappa) * g_time + p.kappa * g_lam
    u = (n - 1 - np.arange(n)) / (n - 1)
    ts = np.round(np.interp(u ** p.rho, g, grid))
    return [int(v) for v in _make_strictly_descending(ts, highest=t_start)]


def _ramp(a: float, b: float, n: int) -> list[float]:
    """Eta ramping linearly from ``a`` (first step) to ``b`` (last noisy step); the final step's is unused."""
    if n == 1:
        return [round(a, 4)]
    k = max(n - 2, 1)
    return [round(min(1.0, max(0.0, a + (b - a) * min(i, k) / k)), 4) for i in range(n)]


def _starts(path, n: int) -> dict[str, tuple[list[int], SpacingParams]]:
    """The library's spacings (exact) and their nearest members of the family (for the smooth stage)."""
    from .timesteps import select_timesteps

    T = path.t_max + 1
    out = {}
    for name, kappa, rho in (("trailing", 0.0, 1.0), ("quadratic", 0.0, 2.0), ("log_snr", 1.0, 1.0)):
        ts = [int(v) for v in select_timesteps(path, n, name).tolist()]
        t_start = min(ts[0], T - 1)
        t_end = min(ts[-1], t_start - (n - 1))
        out[name] = (ts, SpacingParams(kappa, rho, t_start, max(t_end, 0)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# the reference and the objective
# ----------------------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "skipstep"


def reference_samples(spec, num_reference: int, reference_seed: int | None = None, cache_dir: str | Path | None = None,
                      batch_size: int = 500, device: str = "cpu", progress: bool = False) -> tuple[torch.Tensor, dict]:
    """The model's reference set, drawn by the benchmark engine (:func:`skipstep.bench._reference`: 1000-step
    ancestral samples with the x0 clipping of the model's scheduler config, or exact data samples for analytic
    models) and cached in ``cache_dir/references/<model>-<fingerprint>/seed<S>_n<N>_bs<B>_clip<on|off>/``."""
    from .bench import REFERENCE_SEED, BenchConfig, _reference

    seed = REFERENCE_SEED if reference_seed is None else int(reference_seed)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)[-40:]
    out = Path(cache_dir or default_cache_dir()) / "references" / f"{safe}-{spec.fingerprint}" / \
        f"seed{seed}_n{int(num_reference)}_bs{int(batch_size)}_clip{'on' if x0_clipping(spec).active else 'off'}"
    cfg = BenchConfig(model=spec.name, samplers=["reference-1000"], nfes=[spec.num_train_timesteps],
                      seeds=[seed + 1], num_samples=int(num_reference), out=out, batch_size=batch_size, device=device,
                      num_reference=int(num_reference), reference_seed=seed, progress=progress)
    samples, meta = _reference(cfg, spec, progress)
    meta = dict(meta)
    meta["cache"] = str(out)
    return samples, meta


class Objective:
    """``metric`` ('fd': Fréchet distance in ``spec.feature_fn`` space; 'sw': sliced W2 in pixels) of a sample set
    against the reference; ``inf`` for non-finite samples."""

    def __init__(self, spec, reference: torch.Tensor, metric: str | None = None, sw_projections: int = 256):
        from . import metrics as M

        self.M = M
        metric = metric or ("fd" if spec.feature_fn is not None else "sw")
        if metric not in ("fd", "sw"):
            raise ValueError(f"metric must be 'fd' or 'sw', got {metric!r}")
        if metric == "fd" and spec.feature_fn is None:
            raise ValueError(f"model {spec.name!r} has no feature network: use metric 'sw'")
        self.metric, self.spec, self.reference, self.sw_projections = metric, spec, reference.float(), sw_projections
        if metric == "fd":
            self.ref_stats = M.gaussian_stats(M.compute_features(self.reference, spec.feature_fn, 1000))

    def __call__(self, samples: torch.Tensor) -> float:
        samples = samples.float()
        if not bool(torch.isfinite(samples).all()):
            return math.inf
        M = self.M
        if self.metric == "fd":
            feats = M.compute_features(samples, self.spec.feature_fn, 1000)
            return float(M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.ref_stats))
        return float(M.sliced_wasserstein(samples, self.reference, num_projections=self.sw_projections, seed=0))


class CommonNoise:
    """The common random numbers of one seed: ``x_T`` (the bench's :func:`~skipstep.bench.initial_noise`) and one
    fixed noise tensor per step index (used by that step whatever its timestep and eta)."""

    def __init__(self, seed: int, num_samples: int, shape: Sequence[int]):
        from .bench import initial_noise

        self.seed, self.num_samples, self.shape = int(seed), int(num_samples), tuple(shape)
        self.x_T = initial_noise(seed, num_samples, shape)
        self._steps: dict[int, torch.Tensor] = {}

    def step(self, index: int) -> torch.Tensor:
        if index not in self._steps:
            digest = hashlib.sha256(f"skipstep-tune-steps:{self.seed}:{index}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
            self._steps[index] = torch.randn((self.num_samples, *self.shape), generator=g)
        return self._steps[index]


def x0_clipping(spec):
    """The x0 bound every skipstep sampler of the benchmark applies to this model: ``clip_sample`` and
    ``clip_sample_range`` of its scheduler config (see :func:`skipstep.samplers.clip_overrides`)."""
    from .predictions import X0Clipping

    cfg = spec.scheduler_config
    return X0Clipping(bool(cfg.get("clip_sample", False)), float(cfg.get("clip_sample_range", 1.0) or 1.0))


@torch.no_grad()
def draw_samples(spec, model: Callable, timesteps: Sequence[int], eta: Sequence[float], base: BaseSampler,
                 noise: CommonNoise, batch_size: int = 500, device: str = "cpu") -> torch.Tensor:
    """Few-step samples of one candidate (the skipstep posterior step, x0 clipped as the model's scheduler config
    says, as in the benchmark) from the common random numbers ``noise``; ``model`` is called once per step per
    batch."""
    from .plan import plan_steps
    from .sampling import TrajectoryStepper
    from .schedules import DiscreteVPPath
    from .steps import StepConfig, needs_noise

    path = DiscreteVPPath.from_config(spec.scheduler_config)
    plan = plan_steps(path, torch.as_tensor(list(timesteps), dtype=torch.int64), list(eta))
    config = StepConfig(prediction_type=spec.prediction_type, variance_type=base.variance_type,
                        solver_order=base.solver_order, check_finite=False, clipping=x0_clipping(spec))
    chunks = []
    for start in range(0, noise.num_samples, batch_size):
        x = noise.x_T[start:start + batch_size].to(device)
        stepper = TrajectoryStepper(plan, config)
        for step in plan:
            t = torch.full((x.shape[0],), int(step.t), dtype=torch.int64, device=device)
            out = model(x, t)
            z = None
            if needs_noise(step.posterior, config.variance_type):
                z = noise.step(step.index)[start:start + batch_size].to(device)
            x, _ = stepper.step(step.index, out, x, noise=z)
        chunks.append(x.float().cpu())
    return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------------------------------
class _BudgetExhausted(Exception):
    pass


class _StageLimit(_BudgetExhausted):
    """The current stage used its share of the budget (the search goes on with the next stage)."""


class _Search:
    """Evaluates candidates (memoised) within the NFE and time budgets and keeps the best one."""

    def __init__(self, spec, base, objective, noises, batch_size, device, budget_nfe, budget_seconds,
                 estimate_seconds, log, val_noises=()):
        from .samplers import CallCounter

        self.spec, self.base, self.objective, self.noises = spec, base, objective, noises
        self.val_noises = list(val_noises)
        self.batch_size, self.device, self.log = batch_size, device, log
        self.counter = CallCounter(spec.model)
        self.n_batches = sum(math.ceil(nz.num_samples / batch_size) for nz in noises)
        self.n_val_batches = sum(math.ceil(nz.num_samples / batch_size) for nz in self.val_noises)
        self.val_memo: dict[tuple, float] = {}
        self.budget_nfe, self.budget_seconds = budget_nfe, budget_seconds
        self.estimate = estimate_seconds
        self.memo: dict[tuple, float] = {}
        self.t0 = time.perf_counter()
        self.seconds: list[float] = []
        self.best: tuple[float, list[int], list[float]] | None = None
        self.improvements: list[list] = []
        self.stopped_by = "converged"
        self.stage_limit_nfe = budget_nfe
        self.stage_limit_seconds = budget_seconds

    def limit_stage(self, share: float | None) -> None:
        """Let the next stage spend ``share`` of what is left (``None``: all of it)."""
        if share is None:
            self.stage_limit_nfe, self.stage_limit_seconds = self.budget_nfe, self.budget_seconds
            return
        self.stage_limit_nfe = self.counter.calls + int(share * (self.budget_nfe - self.counter.calls))
        self.stage_limit_seconds = self.elapsed() + share * (self.budget_seconds - self.elapsed())

    def cost(self, nfe: int) -> int:
        return nfe * self.n_batches

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def check_affordable(self, nfe: int) -> None:
        """Raise :class:`_BudgetExhausted` (or :class:`_StageLimit`) when the next candidate does not fit, keeping
        a reserve for two validations (a stage's result and the candidate it would replace)."""
        per = float(np.mean(self.seconds)) if self.seconds else self.estimate
        reserve_nfe = 2 * nfe * self.n_val_batches
        need = self.counter.calls + self.cost(nfe) + reserve_nfe
        per += 2 * per * self.n_val_batches / self.n_batches
        if need > self.budget_nfe:
            self.stopped_by = "NFE budget"
            raise _BudgetExhausted
        if self.elapsed() + per > self.budget_seconds:
            self.stopped_by = "time budget"
            raise _BudgetExhausted
        if need > self.stage_limit_nfe or self.elapsed() + per > self.stage_limit_seconds:
            raise _StageLimit

    def validate(self, ts: Sequence[int], eta: Sequence[float]) -> float:
        """The objective on the validation seeds (memoised); :class:`_BudgetExhausted` when it does not fit."""
        key = (tuple(int(t) for t in ts), tuple(round(float(e), 6) for e in eta[:-1]))
        if key not in self.val_memo:
            per = (float(np.mean(self.seconds)) if self.seconds else self.estimate) * self.n_val_batches / \
                self.n_batches
            if (self.counter.calls + len(ts) * self.n_val_batches > self.budget_nfe
                    or self.elapsed() + per > self.budget_seconds):
                raise _BudgetExhausted
            values = [self.objective(draw_samples(self.spec, self.counter, ts, eta, self.base, nz, self.batch_size,
                                                  self.device)) for nz in self.val_noises]
            self.val_memo[key] = float(np.mean(values))
        return self.val_memo[key]

    def __call__(self, ts: Sequence[int], eta: Sequence[float], label: str = "") -> float:
        key = (tuple(int(t) for t in ts), tuple(round(float(e), 6) for e in eta[:-1]))
        if key in self.memo:
            return self.memo[key]
        self.check_affordable(len(ts))
        t0 = time.perf_counter()
        values = []
        for nz in self.noises:
            x = draw_samples(self.spec, self.counter, ts, eta, self.base, nz, self.batch_size, self.device)
            values.append(self.objective(x))
        value = float(np.mean(values))
        self.seconds.append(time.perf_counter() - t0)
        self.memo[key] = value
        if self.best is None or value < self.best[0]:
            self.best = (value, [int(t) for t in ts], [float(e) for e in eta])
            self.improvements.append([len(self.memo), round(value, 6)])
            self.log(f"  candidate {len(self.memo):4d}{(' ' + label) if label else ''}: {self.objective.metric} "
                     f"{value:.5g} (best)")
        return value


def _better(new: float, old: float) -> bool:
    return new < old - MIN_RELATIVE_IMPROVEMENT * abs(old)


def _smooth_stage(search: _Search, path, n: int, p0: SpacingParams, eta0: tuple[float, float], search_eta: bool,
                  fixed_eta: list[float], holder: dict) -> None:
    """Pattern search over (kappa, log rho, t_start, t_end[, eta_a, eta_b]); ``holder`` always holds the stage's
    incumbent (``ts``, ``eta``, ``f``), also when the budget stops it."""
    T = path.t_max + 1
    x = {"kappa": p0.kappa, "log_rho": math.log(p0.rho), "t_start": p0.t_start, "t_end": p0.t_end,
         "eta_a": eta0[0], "eta_b": eta0[1]}
    steps = {"kappa": 0.25, "log_rho": 0.35, "t_start": max(1, T // 20), "t_end": max(1, T // (4 * n)),
             "eta_a": 0.25, "eta_b": 0.25}
    min_steps = {"kappa": 0.03, "log_rho": 0.04, "t_start": 1, "t_end": 1, "eta_a": 0.03, "eta_b": 0.03}
    keys = ["kappa", "log_rho", "t_start", "t_end"] + (["eta_a", "eta_b"] if search_eta else [])

    def clip(v):
        v = dict(v)
        v["kappa"] = min(1.0, max(0.0, v["kappa"]))
        v["log_rho"] = min(math.log(4.0), max(math.log(0.5), v["log_rho"]))
        v["t_start"] = int(min(T - 1, max(T // 2, round(v["t_start"]))))
        v["t_end"] = int(min(v["t_start"] - (n - 1), T // 2, max(0, round(v["t_end"]))))
        v["eta_a"], v["eta_b"] = (min(1.0, max(0.0, v[k])) for k in ("eta_a", "eta_b"))
        return v

    def candidate(v):
        ts = family_timesteps(path, n, SpacingParams(v["kappa"], math.exp(v["log_rho"]), v["t_start"], v["t_end"]))
        eta = _ramp(v["eta_a"], v["eta_b"], n) if search_eta else fixed_eta
        return ts, eta

    x = clip(x)
    f = search(*candidate(x), label="smooth start")
    holder.update(zip(("ts", "eta"), candidate(x)), f=f)
    while any(steps[k] >= min_steps[k] for k in keys):
        improved = False
        for k in keys:
            if steps[k] < min_steps[k]:
                continue
            for sign in (1, -1):
                y = clip({**x, k: x[k] + sign * steps[k]})
                if y == x:
                    continue
                fy = search(*candidate(y), label=f"smooth {k}")
                if _better(fy, f):
                    x, f, improved = y, fy, True
                    holder.update(zip(("ts", "eta"), candidate(x)), f=f)
                    break
        if not improved:
            for k in keys:
                steps[k] = steps[k] / 2 if isinstance(steps[k], float) else (steps[k] // 2 if steps[k] > 1 else 0)


def _coordinate_stage(search: _Search, path, ts: list[int], eta: list[float], search_eta: bool,
                      holder: dict) -> None:
    """Move single timesteps (and single etas), accepting improvements; per-coordinate steps halve on failure.
    ``holder`` always holds the stage's incumbent."""
    T = path.t_max + 1
    n = len(ts)
    ts, eta = list(ts), list(eta)
    f = search(ts, eta)
    holder.update(ts=ts, eta=eta, f=f)
    bounds = [T - 1] + ts[:-1]
    dt = [max(1, (bounds[i] - (ts[i + 1] if i + 1 < n else -1)) // 4) for i in range(n)]
    de = [0.25 if search_eta else 0.0] * (n - 1)
    while any(d >= 1 for d in dt) or any(d >= 1 / 32 for d in de):
        for i in range(n):
            if dt[i] < 1:
                continue
            upper = T - 1 if i == 0 else ts[i - 1] - 1
            lower = 0 if i == n - 1 else ts[i + 1] + 1
            moved = False
            for sign in (1, -1):
                v = min(upper, max(lower, ts[i] + sign * dt[i]))
                if v == ts[i]:
                    continue
                cand = ts[:i] + [v] + ts[i + 1:]
                fc = search(cand, eta, label=f"t[{i}]")
                if _better(fc, f):
                    ts, f, moved = cand, fc, True
                    holder.update(ts=ts, eta=eta, f=f)
                    break
            if not moved:
                dt[i] //= 2
        for i in range(n - 1):
            if de[i] < 1 / 32:
                continue
            moved = False
            for sign in (1, -1):
                v = round(min(1.0, max(0.0, eta[i] + sign * de[i])), 4)
                if v == eta[i]:
                    continue
                cand = eta[:i] + [v] + eta[i + 1:]
                fc = search(ts, cand, label=f"eta[{i}]")
                if _better(fc, f):
                    eta, f, moved = cand, fc, True
                    holder.update(ts=ts, eta=eta, f=f)
                    break
            if not moved:
                de[i] /= 2


def _time_one_call(spec, batch: int, device: str) -> float:
    """Seconds of one model call on a batch of ``batch`` noise samples (the budget check's estimate)."""
    x = torch.randn((batch, *spec.sample_shape)).to(device)
    t = torch.full((batch,), spec.num_train_timesteps // 2, dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    spec.model(x, t)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _check_seeds(fit_seeds, eval_seeds, reference_seed):
    fit, ev = [int(s) for s in fit_seeds], [int(s) for s in eval_seeds]
    if not fit:
        raise ValueError("give at least one fit seed")
    overlap = sorted(set(fit) & set(ev))
    if overlap:
        raise ValueError(f"eval seeds must be held out: {overlap} are also fit seeds")
    if reference_seed in fit + ev:
        raise ValueError(f"seed {reference_seed} is the reference set's seed; choose other fit/eval seeds")
    return list(dict.fromkeys(fit)), list(dict.fromkeys(ev))


def tune_schedule(spec, nfe: int, base: str | BaseSampler = "skipstep", *, solver_order: int | None = None,
                  variance_type: str | None = None, eta=None, num_samples: int = 1000,
                  fit_seeds: Sequence[int] = (0,), eval_seeds: Sequence[int] = (),
                  val_seeds: Sequence[int] | None = None, budget_nfe: int = 2000,
                  budget_minutes: float = 5.0, metric: str | None = None, num_reference: int | None = None,
                  reference_seed: int | None = None, cache_dir: str | Path | None = None, batch_size: int = 500,
                  device: str = "cpu", search_eta: bool = True, clip: str = "model",
                  eval_reference_seed: int | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> TunedSchedule:
    """Search the timesteps and per-step eta of ``base`` at ``nfe`` for ``spec`` (a ModelSpec or a model name);
    see the module docstring. ``budget_nfe`` counts batched model calls spent on candidates (one candidate costs
    ``nfe * ceil(num_samples / batch_size) * len(fit_seeds)``); ``budget_minutes`` bounds the search's wall time
    (the cached reference and the held-out comparison come on top and are reported separately). With
    ``eval_seeds`` the tuned schedule is compared on those held-out seeds with the trailing, quadratic and log-SNR
    spacings (same base sampler) and the table is stored in ``provenance['heldout']``. ``clip``: x0 clipping as
    the benchmark's ``--clip`` (``model``: the model's scheduler config; ``on``; ``off``). ``eval_reference_seed``:
    score the held-out comparison against a second, independent reference set drawn with this seed (so neither
    the sampler noise nor the reference set of the fit is reused), and record the finite-sample floor -- the
    distance between the two reference sets."""
    from . import __version__
    from .bench import REFERENCE_SEED, apply_clip_mode
    from .models import load_model
    from .schedules import DiscreteVPPath

    log = log or (lambda msg: None)
    if isinstance(spec, str):
        spec = load_model(spec, device=device)
    spec = copy.copy(spec)  # apply_clip_mode rebinds scheduler_config on the copy only
    clip_description = apply_clip_mode(spec, clip)
    base = resolve_base(base, solver_order, variance_type, eta)
    T = spec.num_train_timesteps
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= T:
        raise ValueError(f"nfe must be an integer in [1, {T}], got {nfe!r}")
    base_eta = base.eta_list(nfe)
    if int(num_samples) < 4:
        raise ValueError(f"num_samples must be >= 4, got {num_samples}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_samples, batch_size = int(num_samples), int(batch_size)
    reference_seed = REFERENCE_SEED if reference_seed is None else int(reference_seed)
    fit_seeds, eval_seeds = _check_seeds(fit_seeds, eval_seeds, reference_seed)
    if eval_reference_seed is not None:
        eval_reference_seed = int(eval_reference_seed)
        if eval_reference_seed in fit_seeds + eval_seeds + [reference_seed]:
            raise ValueError(f"eval_reference_seed={eval_reference_seed} must differ from the fit, eval and "
                             f"reference seeds")
    taken = set(fit_seeds + eval_seeds + [reference_seed, eval_reference_seed])
    if val_seeds is None:
        val_seeds = [s for s in range(len(taken) + 2) if s not in taken][:DEFAULT_NUM_VAL_SEEDS]
    val_seeds = list(dict.fromkeys(int(s) for s in val_seeds))
    if taken & set(val_seeds):
        raise ValueError(f"validation seeds {sorted(taken & set(val_seeds))} are also fit, eval or reference seeds")
    metric = metric or ("fd" if spec.feature_fn is not None else "sw")
    if metric not in ("fd", "sw") or (metric == "fd" and spec.feature_fn is None):
        raise ValueError(f"metric must be 'sw' or (with a feature network) 'fd'; got {metric!r} for {spec.name!r}")
    # -- budgets: refuse before any work ------------------------------------------------------------------------
    cost = nfe * math.ceil(num_samples / batch_size) * len(fit_seeds)
    if budget_nfe < cost:
        raise ValueError(f"budget_nfe={budget_nfe} cannot pay for one candidate: each costs {cost} NFE "
                         f"(nfe {nfe} x {math.ceil(num_samples / batch_size)} batches x {len(fit_seeds)} fit seed(s))")
    if not budget_minutes > 0:
        raise ValueError(f"budget_minutes must be > 0, got {budget_minutes}")
    per_call = _time_one_call(spec, min(batch_size, num_samples), device)
    estimate = cost * per_call
    if budget_minutes * 60 < estimate:
        raise ValueError(f"budget_minutes={budget_minutes} cannot pay for one candidate: one model call took "
                         f"{per_call:.3g} s, so one candidate ({cost} calls) needs about {estimate:.3g} s")
    # -- reference, objective, common random numbers ------------------------------------------------------------
    t_ref = time.perf_counter()
    num_reference = int(num_reference or num_samples)
    log(f"reference: {num_reference} samples (seed {reference_seed}), cached under "
        f"{Path(cache_dir or default_cache_dir()) / 'references'}")
    reference, ref_meta = reference_samples(spec, num_reference, reference_seed, cache_dir, batch_size, device,
                                            progress)
    objective = Objective(spec, reference, metric)
    reference_seconds = time.perf_counter() - t_ref
    noises = [CommonNoise(s, num_samples, spec.sample_shape) for s in fit_seeds]
    val_noises = [CommonNoise(s, num_samples, spec.sample_shape) for s in val_seeds]
    path = DiscreteVPPath.from_config(spec.scheduler_config)
    search = _Search(spec, base, objective, noises, batch_size, device, int(budget_nfe), 60.0 * budget_minutes,
                     estimate, log, val_noises)
    stages: list[dict] = []
    starts = _starts(path, nfe)
    start_values: dict[str, float] = {}
    accepted: dict | None = None  # the current result: a best start, then stage results the validation confirmed
    log(f"stage 1: the library's spacings with the base eta ({base.name}, order {base.solver_order})")
    stopped = False
    try:
        for name, (ts, _) in starts.items():
            start_values[name] = search(ts, base_eta, label=name)
            if accepted is None or start_values[name] < accepted["f"]:
                accepted = {"ts": list(ts), "eta": list(base_eta), "f": start_values[name], "from": name}
    except _BudgetExhausted:
        stopped = True
    start_val: dict[str, float] = {}
    if val_noises and not stopped and len(start_values) > 1:
        # choose the start on the fit and validation seeds together: one seed's noise can reorder close spacings
        try:
            for name, (ts, _) in starts.items():
                start_val[name] = search.validate(ts, base_eta)
        except _BudgetExhausted:
            start_val = {}
        if start_val:
            k_fit, k_val = len(noises), len(val_noises)
            pooled = {n: (k_fit * start_values[n] + k_val * start_val[n]) / (k_fit + k_val) for n in start_val}
            name = min(pooled, key=pooled.get)
            accepted = {"ts": list(starts[name][0]), "eta": list(base_eta), "f": start_values[name], "from": name}
            log(f"  best start on fit + validation seeds: {name} ({metric} {pooled[name]:.5g})")
    chosen_start = accepted["from"]
    stages.append({"stage": "spacings", "candidates": len(search.memo), "best": accepted["f"],
                   "note": f"stopped by the {search.stopped_by}" if stopped else f"best: {chosen_start}"
                   + (" (fit + validation seeds)" if start_val else "")})

    def gate(stage: str, result: dict) -> str:
        """Accept a stage's result if it beats the accepted one on the fit seeds and (when there are validation
        seeds) on the validation seeds too -- a guard against fitting the fit seeds' noise."""
        nonlocal accepted
        if not result or not _better(result["f"], accepted["f"]):
            return "no improvement on the fit seeds"
        if val_noises:
            try:
                v_new, v_old = search.validate(result["ts"], result["eta"]), search.validate(accepted["ts"],
                                                                                             accepted["eta"])
            except _BudgetExhausted:
                return "not accepted: no budget left to validate it"
            log(f"  validation {metric}: {v_old:.5g} (kept) vs {v_new:.5g} ({stage})")
            if not _better(v_new, v_old):
                return f"rejected: validation {metric} {v_new:.5g} >= {v_old:.5g} (fit gain did not transfer)"
            accepted = {**result, "from": stage, "val": v_new}
            return f"accepted (validation {metric} {v_old:.5g} -> {v_new:.5g})"
        accepted = {**result, "from": stage}
        return "accepted"

    plan = [("smooth family", SMOOTH_STAGE_SHARE), ("coordinate", None)]
    for stage, share in plan:
        if stopped:
            break
        before = len(search.memo)
        holder: dict = {}
        search.limit_stage(share)
        try:
            if stage == "smooth family":
                log("stage 2: smooth family (kappa, rho, t_start, t_end" + (", eta ramp)" if search_eta else ")"))
                start_p = starts[accepted["from"]][1] if accepted["from"] in starts else starts["trailing"][1]
                _smooth_stage(search, path, nfe, start_p, (base_eta[0], base_eta[-2 if nfe > 1 else 0]),
                              search_eta, base_eta, holder)
            else:
                log("stage 3: coordinate moves of single timesteps" + (" and etas" if search_eta else "")
                    + f" (from the {accepted['from']} result)")
                _coordinate_stage(search, path, accepted["ts"], accepted["eta"], search_eta, holder)
            note = "converged"
        except _StageLimit:
            note = f"used its {share:.0%} share of the budget"
        except _BudgetExhausted:
            note, stopped = f"stopped by the {search.stopped_by}", True
        search.limit_stage(None)
        decision = gate(stage, holder)
        log(f"  {stage}: {decision}")
        stages.append({"stage": stage, "candidates": len(search.memo) - before,
                       "best": holder.get("f"), "note": note, "decision": decision})
    if accepted is None:  # cannot happen: one candidate is always affordable
        raise RuntimeError("no candidate could be evaluated within the budget")
    search_seconds = search.elapsed()
    value, ts, eta_best = accepted["f"], accepted["ts"], accepted["eta"]
    uniform = start_values.get("trailing")
    provenance = {
        "model": spec.name,
        "model_description": spec.description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "skipstep_version": __version__,
        "base": base.info(),
        "num_samples": num_samples,
        "batch_size": batch_size,
        "device": device,
        "x0_clipping": clip_description,
        "noise": "common random numbers: x_T = skipstep.bench.initial_noise(seed); step i uses a fixed "
                 "randn tensor per (seed, i)",
        "reference": {k: ref_meta.get(k) for k in ("source", "num_samples", "seed", "cache")},
        "objective": {
            "metric": metric,
            "fit_seeds": fit_seeds,
            "starts": {k: round(v, 6) for k, v in start_values.items()},
            "uniform_trailing": uniform,
            "starts_validation": {k: round(v, 6) for k, v in start_val.items()},
            "best_start": {"name": chosen_start, "value": start_values[chosen_start],
                           "chosen_on": "fit + validation seeds" if start_val else "fit seeds"},
            "tuned": value,
            "validation_seeds": val_seeds,
            "validation": {"tuned": search.val_memo.get((tuple(ts), tuple(round(e, 6) for e in eta_best[:-1])))},
            "result_from": accepted["from"],
            "relative_change_vs_uniform": (value / uniform - 1.0) if uniform else None,
        },
        "search": {"stages": stages, "candidates_evaluated": len(search.memo),
                   "validations": len(search.val_memo),
                   "improvements": search.improvements[-40:]},
        "budget": {"budget_nfe": int(budget_nfe), "budget_minutes": float(budget_minutes),
                   "nfe_used": search.counter.calls, "cost_per_candidate_nfe": cost,
                   "seconds_used": round(search_seconds, 2), "stopped_by": search.stopped_by,
                   "estimated_seconds_per_candidate": round(estimate, 3)},
        "timing": {"reference_seconds": round(reference_seconds, 2), "search_seconds": round(search_seconds, 2)},
    }
    schedule = TunedSchedule(timesteps=ts, eta=eta_best, nfe=nfe, num_train_timesteps=T,
                             solver_order=base.solver_order, variance_type=base.variance_type,
                             model_fingerprint=spec.fingerprint, metric=metric, fit_seeds=fit_seeds,
                             provenance=provenance)
    log(f"search: {len(search.memo)} candidates, {search.counter.calls} NFE, {search_seconds:.1f} s "
        f"(stopped by {search.stopped_by}); {metric} {uniform:.5g} (uniform) -> {value:.5g} (tuned)"
        if uniform is not None else f"search: {len(search.memo)} candidates; {metric} {value:.5g}")
    if eval_seeds:
        t_eval = time.perf_counter()
        eval_objective, floor = objective, None
        ref_info = {k: ref_meta.get(k) for k in ("source", "num_samples", "seed")}
        if eval_reference_seed is not None:
            log(f"held-out reference: {num_reference} samples (seed {eval_reference_seed})")
            reference2, meta2 = reference_samples(spec, num_reference, eval_reference_seed, cache_dir, batch_size,
                                                  device, progress)
            eval_objective = Objective(spec, reference2, metric)
            floor = eval_objective(reference)  # two independent sets of the reference distribution
            ref_info = {k: meta2.get(k) for k in ("source", "num_samples", "seed")}
        table = compare_schedules(spec, schedule, eval_seeds, num_samples=num_samples, base=base,
                                  objective=eval_objective, batch_size=batch_size, device=device)
        table["reference"] = ref_info
        table["floor"] = floor
        provenance["heldout"] = table
        provenance["timing"]["heldout_seconds"] = round(time.perf_counter() - t_eval, 2)
    return schedule


def compare_schedules(spec, schedule: TunedSchedule, eval_seeds: Sequence[int], *, num_samples: int = 1000,
                      base: BaseSampler | None = None, objective: Objective | None = None, metric: str | None = None,
                      num_reference: int | None = None, reference_seed: int | None = None, cache_dir=None,
                      batch_size: int = 500, device: str = "cpu") -> dict[str, Any]:
    """The tuned schedule against the trailing (uniform), quadratic and log-SNR spacings with the same base
    sampler (and the tuned timesteps with the base eta, separating the two effects), on ``eval_seeds``:
    ``{"metric", "seeds", "rows": [{"name", "timesteps", "eta", "values", "mean", "std"}]}``."""
    from .schedules import DiscreteVPPath
    from .timesteps import select_timesteps

    if base is None:
        b = schedule.provenance.get("base", {})
        base = BaseSampler(b.get("name", "?"), b.get("eta", 1.0), schedule.solver_order, schedule.variance_type)
    if objective is None:
        reference, _ = reference_samples(spec, int(num_reference or num_samples), reference_seed, cache_dir,
                                         batch_size, device)
        objective = Objective(spec, reference, metric or schedule.metric)
    path = DiscreteVPPath.from_config(spec.scheduler_config)
    n = schedule.nfe
    base_eta = base.eta_list(n)
    candidates = {"tuned": (schedule.timesteps, schedule.eta)}
    if list(schedule.eta) != list(base_eta):
        candidates["tuned timesteps, base eta"] = (schedule.timesteps, base_eta)
    for name, label in (("trailing", "uniform (trailing)"), ("quadratic", "quadratic"), ("log_snr", "log-SNR")):
        candidates[label] = ([int(v) for v in select_timesteps(path, n, name).tolist()], base_eta)
    rows = []
    noises = [CommonNoise(s, num_samples, spec.sample_shape) for s in eval_seeds]
    for name, (ts, eta) in candidates.items():
        values = [objective(draw_samples(spec, spec.model, ts, eta, base, nz, batch_size, device)) for nz in noises]
        rows.append({"name": name, "timesteps": list(ts), "eta": [round(e, 4) for e in eta], "values": values,
                     "mean": float(np.mean(values)),
                     "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0})
    return {"metric": objective.metric, "seeds": list(eval_seeds), "num_samples": num_samples, "rows": rows}


def format_comparison(table: dict[str, Any]) -> str:
    """The held-out comparison as a Markdown table."""
    from .bench import _fmt

    metric = {"fd": "FD vs reference (classifier features)", "sw": "sliced W2 vs reference"}.get(table["metric"],
                                                                                               table["metric"])
    lines = [f"{metric}, mean ± std over held-out seeds {table['seeds']} ({table['num_samples']} samples each; "
             "lower is better)", "", "| schedule | timesteps | eta | " + table["metric"] + " |", "|---|---|---|---:|"]
    for r in table["rows"]:
        eta = r["eta"][:-1]
        eta_txt = f"{eta[0]:g}" if len(set(eta)) <= 1 and eta else ",".join(f"{e:g}" for e in eta)
        lines.append(f"| {r['name']} | {','.join(str(t) for t in r['timesteps'])} | {eta_txt} | "
                     f"{_fmt(r['mean'], r['std'])} |")
    ref = table.get("reference")
    if ref:
        lines += ["", f"Scored against: {ref.get('source')}, {ref.get('num_samples')} samples, seed {ref.get('seed')}."]
    if table.get("floor") is not None:
        lines.append(f"Floor (an independent set of the reference distribution, same size, against it): "
                     f"{_fmt(table['floor'])}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _seed_list(text: str) -> list[int]:
    if text.strip().lower() in ("none", ""):
        return []
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers or 'none', got {text!r}") from None


def add_subcommand(subparsers) -> None:
    from .bench import _int_list, add_common_run_args

    p = subparsers.add_parser(
        "tune", help="tune the timesteps and per-step eta of a skipstep sampler for one model and NFE",
        description="Search the timestep subsequence and per-step eta schedule of a skipstep sampler that minimise "
                    "the Fréchet distance (classifier features; sliced W2 without a feature network) to the "
                    "model's own 1000-step samples on --fit-seeds, within --budget-nfe and --budget-minutes; "
                    "compare it on --eval-seeds with trailing, quadratic and log-SNR spacing, print the table and "
                    "write the schedule JSON (use it with `skipstep bench --samplers tuned:FILE.json`, "
                    "skipstep.sample(..., schedule=FILE) or SkippedStepScheduler(tuned_schedule=...)).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="gmm, digits, or a path to a local diffusers directory")
    p.add_argument("--nfe", type=int, required=True, help="network evaluations (= steps) of the schedule")
    p.add_argument("--base", default="skipstep",
                   help="the skipstep sampler to tune (its eta is the start): " + ", ".join(base_names()))
    p.add_argument("--solver-order", type=int, default=None, choices=(1, 2, 3), help="multistep order (default 1)")
    p.add_argument("--variance-type", default=None, choices=("small", "large"), help="noise variance (default small)")
    p.add_argument("--eta", default=None, help="override the base's starting eta (number or schedule string)")
    p.add_argument("--no-eta-search", action="store_true", help="keep the base eta; tune the timesteps only")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per candidate (and per eval seed)")
    p.add_argument("--fit-seeds", type=_int_list, default=[0], help="seeds the objective is averaged over")
    p.add_argument("--eval-seeds", type=_int_list, default=[1, 2, 3], help="held-out seeds of the comparison")
    p.add_argument("--val-seeds", type=_seed_list, default=None,
                   help="seeds a stage's result must also improve on to be accepted (guards against fitting the "
                        "fit seeds' noise; 'none' disables the check). Default: the two smallest seeds not used "
                        "elsewhere")
    p.add_argument("--budget-nfe", type=int, default=2000, help="batched model calls the search may spend")
    p.add_argument("--budget-minutes", type=float, default=5.0, help="wall time the search may spend")
    p.add_argument("--metric", default=None, choices=("fd", "sw"), help="objective (default: fd if the model has "
                   "a feature network, else sw)")
    p.add_argument("--num-reference", type=int, default=None, help="reference-set size (default: --num-samples)")
    p.add_argument("--eval-reference-seed", type=int, default=None,
                   help="score the held-out comparison against a second reference set drawn with this seed "
                        "(default: the fit's reference set) and report the two sets' distance as the floor")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where reference sets are cached (default ${CACHE_ENV} or ~/.cache/skipstep)")
    p.add_argument("--out", type=Path, required=True, help="schedule JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_common_run_args(p)  # --device, --batch-size, --no-progress, --clip, --threads (as bench)
    p.set_defaults(func=main_tune)


def main_tune(args: argparse.Namespace) -> int:
    from .bench import apply_threads
    from .models import load_model

    apply_threads(args)
    if args.out.exists() and not args.overwrite:
        raise ScheduleError(f"{args.out} already exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    verbose = not args.no_progress
    spec = load_model(args.model, device=args.device)
    schedule = tune_schedule(
        spec, args.nfe, args.base, solver_order=args.solver_order, variance_type=args.variance_type, eta=args.eta,
        num_samples=args.num_samples, fit_seeds=args.fit_seeds, eval_seeds=args.eval_seeds, val_seeds=args.val_seeds,
        budget_nfe=args.budget_nfe, budget_minutes=args.budget_minutes, metric=args.metric,
        num_reference=args.num_reference, cache_dir=args.cache_dir, batch_size=args.batch_size, device=args.device,
        search_eta=not args.no_eta_search, clip=args.clip, eval_reference_seed=args.eval_reference_seed,
        progress=verbose, log=print if verbose else None)
    total = time.perf_counter() - t0
    schedule.provenance["timing"]["total_seconds"] = round(total, 2)
    schedule.save(args.out, overwrite=args.overwrite)
    prov = schedule.provenance
    print(f"\n{spec.name} (fingerprint {spec.fingerprint}), NFE {schedule.nfe}, base {prov['base']['name']} "
          f"(eta {prov['base']['eta']}, solver_order {schedule.solver_order}, variance {schedule.variance_type})")
    print(f"tuned timesteps: {schedule.timesteps}")
    print(f"tuned eta:       {[round(e, 4) for e in schedule.eta]}")
    if "heldout" in prov:
        print()
        print(format_comparison(prov["heldout"]))
    b, tm = prov["budget"], prov["timing"]
    print(f"\nsearch: {prov['search']['candidates_evaluated']} candidates, {b['nfe_used']}/{b['budget_nfe']} NFE, "
          f"{b['seconds_used']:.0f}/{60 * b['budget_minutes']:.0f} s (stopped by {b['stopped_by']}); reference "
          f"{tm['reference_seconds']:.0f} s; held-out {tm.get('heldout_seconds', 0):.0f} s; total {total:.0f} s")
    print(f"wrote {args.out}")
    return 0
