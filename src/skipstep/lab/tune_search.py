"""The search behind ``skipstep tune``: candidate timesteps and per-step eta for one model and NFE, the common random
numbers they are sampled with, the library's plain spacings, the gap rule, and the search stages. What a
candidate is scored by is :mod:`skipstep.lab.tune_objectives`.

Every candidate is sampled from the same initial noise and the same per-step noise (common random numbers: noise
``z_i`` of step ``i`` is fixed per seed, whatever the timesteps and eta), so differences between candidates are
differences of the schedules, not of the noise. Stages:

1. every plain spacing the library offers (:func:`plain_spacings`) with the base eta; when the eta is searched,
   also the best of them at each constant eta of :data:`ETA_LEVELS` (kept only if the validation seeds agree);
2. a pattern search over a smooth family: positions ``u_i = (n-1-i)/(n-1)`` warped by a power ``rho`` and placed
   uniformly in a coordinate that blends time (``kappa = 0``) and log-SNR (``kappa = 1``) between ``t_start`` and
   ``t_end`` (trailing, quadratic and log-SNR spacing are members), with eta a linear ramp ``eta_a -> eta_b``,
   started from the member nearest to the best plain spacing;
3. a coordinate search that moves single timesteps and single etas, accepting improvements.

**Flow models** are searched on the grid of their model times (:class:`FlowGrid`: index ``k = 0..T-1`` is the
time ``t = k + 1``, ``sigma = t / T``); the smooth family, the gap rule and the coordinate moves read its log-SNR
``2 log((1 - sigma) / sigma)`` as they read a VP chain's, and the plain spacings are the flow scheduler's
(:func:`flow_plain_spacings`), snapped to that grid.

**No wasted steps** (:class:`GapRule`): a candidate of stages 2 and 3 is sampled only if consecutive timesteps
are at least ``min_gap * Lambda / n`` apart in log-SNR, ``Lambda = lambda(0) - lambda(T-1)`` the chain's whole
log-SNR range (``min_gap`` 0.1 by default: a tenth of the uniform log-SNR step). A pair such as 899, 898 (0.018 in
log-SNR on the linear chain, against 0.19 needed at NFE 10) spends an evaluation on almost the same noise level.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..paths import DiscreteVPPath, RectifiedFlowPath
from ..plan import eta_reads_log_snr, plan_steps, resolve_eta_schedule, resolve_extrapolation_gain
from ..predictions import X0Clipping
from ..steps import (DEFAULT_ETA, DEFAULT_FLOW_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR, StepConfig,
                     TrajectoryStepper, canonical_variance_type, needs_noise)
from ..storage import derived_seed
from ..timesteps import make_strictly_descending
from .sample_sets import initial_noise
from .sampler_registry import CallCounter, get_sampler, sampler_names
from .tune_grids import FlowGrid, plain_spacings

#: Relative improvement a move must bring to be accepted (guards against chasing round-off).
MIN_RELATIVE_IMPROVEMENT = 1e-4
#: Share of the budget the smooth (parametric) stage may use; the coordinate stage gets the rest.
SMOOTH_STAGE_SHARE = 0.5
#: Smallest log-SNR gap between consecutive timesteps of a searched candidate, in units of the chain's log-SNR
#: range over the NFE (:class:`GapRule`).
DEFAULT_MIN_GAP = 0.1


# --------------------------------------------------------------------------------------------------------------
# the base sampler and the search space
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseSampler:
    """The eta-family member being tuned: its starting eta, its order, its noise variance, whether its steps
    are corrected once the next evaluation is in (``use_corrector``; no extra NFE) and the gain on its order-2
    term (``extrapolation_gain``; ``None``: the default rule at the candidate's step count, as its scheduler
    resolves it, :func:`skipstep.plan.resolve_extrapolation_gain`)."""

    name: str
    eta: Any
    solver_order: int = 1
    variance_type: str = "small"
    use_corrector: bool = False
    extrapolation_gain: float | None = None

    def eta_list(self, n: int) -> list[float]:
        return resolve_eta_schedule(self.eta, n)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "eta": self.eta, "solver_order": self.solver_order,
                "variance_type": self.variance_type, "use_corrector": self.use_corrector,
                "extrapolation_gain": self.extrapolation_gain}

def base_names() -> list[str]:
    return sampler_names("skipstep")

def resolve_base(base: str | BaseSampler = "skipstep", solver_order: int | None = None,
                 variance_type: str | None = None, eta=None, use_corrector: bool | None = None,
                 flow: bool = False) -> BaseSampler:
    """A registered skipstep sampler name (its eta, order and corrector), with ``solver_order``/``variance_type``/
    ``eta``/``use_corrector`` overrides; ``flow``: for a flow model (the default eta is ``DEFAULT_FLOW_ETA``, the
    variance the posterior's)."""
    if isinstance(base, BaseSampler):
        b = base
    else:
        if base not in sampler_names("skipstep"):
            raise ValueError(f"--base: the base sampler must be one of skipstep's own samplers ({', '.join(base_names())}); "
                             f"got {base!r}")
        recipe = get_sampler(base)
        e = recipe.settings.get("eta", 1.0)
        o = recipe.settings.get("solver_order", 1)
        c = recipe.settings.get("use_corrector", False)
        b = BaseSampler(base, (DEFAULT_FLOW_ETA if flow else DEFAULT_ETA) if e == "DEFAULT_ETA" else e,
                        DEFAULT_SOLVER_ORDER if o == "DEFAULT_SOLVER_ORDER" else int(o),
                        use_corrector=DEFAULT_USE_CORRECTOR if c == "DEFAULT_USE_CORRECTOR" else bool(c))
    order = b.solver_order if solver_order is None else solver_order
    if order not in (1, 2, 3):
        raise ValueError(f"solver_order must be 1, 2 or 3, got {order!r}")
    vt = canonical_variance_type(b.variance_type if variance_type is None else variance_type)
    if vt not in ("small", "large"):
        raise ValueError(f"tuning supports variance_type small or large, got {vt!r}")
    if flow and vt != "small":
        raise ValueError(f"a flow model's noise is the posterior's (variance_type small), got {vt!r}")
    e = b.eta if eta is None else eta
    if not isinstance(e, (list, tuple)):
        try:  # validate the form early (per-step lists are checked against the NFE later)
            resolve_eta_schedule(e, 4)
        except ValueError as err:
            raise ValueError(f"--eta: {err}") from None
    corrector = b.use_corrector if use_corrector is None else use_corrector
    if not isinstance(corrector, bool):
        raise ValueError(f"use_corrector must be True or False, got {corrector!r}")
    return BaseSampler(b.name, e, int(order), vt, corrector, b.extrapolation_gain)

def base_eta_rule(base: BaseSampler, grid, n: int) -> Callable[[Sequence[int]], list[float]]:
    """The base's per-step eta on given grid indices: a fixed list, except for an eta that reads the log-SNR of
    each step's start (``snr-window``, the flow default's), which is resolved where the candidate puts its steps,
    as the scheduler resolves it on its own sigmas."""
    if not eta_reads_log_snr(base.eta):
        fixed = base.eta_list(n)
        return lambda ts: list(fixed)
    return lambda ts: resolve_eta_schedule(base.eta, n, grid.log_snr(torch.as_tensor(list(ts))).tolist())

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
    return [int(v) for v in make_strictly_descending(ts, highest=t_start)]

#: constant etas tried on the best plain spacing before the smooth stage, when the eta is searched (stage 1b): the
#: smooth stage's ramp moves from its start in steps of at most 0.25, and from a deterministic start it stopped at
#: eta 0.2-0.9 on ``digits-cfg-b`` where eta 1 scores better (docs/results.md)
ETA_LEVELS = (0.0, 0.5, 1.0)


def ramp(a: float, b: float, n: int) -> list[float]:
    """Eta ramping linearly from ``a`` (first step) to ``b`` (last noisy step); the final step's is unused."""
    if n == 1:
        return [round(a, 4)]
    k = max(n - 2, 1)
    return [round(min(1.0, max(0.0, a + (b - a) * min(i, k) / k)), 4) for i in range(n)]

def nearest_family_member(path, ts: Sequence[int]) -> SpacingParams:
    """The member of the smooth family (within the smooth stage's bounds) closest to ``ts`` in summed ``|t|``
    (a grid over ``kappa`` and ``rho``, ends at ``ts``'s own): where the smooth stage starts from a plain spacing."""
    T, n = path.t_max + 1, len(ts)
    t_start = int(min(T - 1, max(T // 2, ts[0])))
    t_end = int(min(max(ts[-1], 0), t_start - (n - 1), T // 2))
    best, best_d = SpacingParams(0.0, 1.0, t_start, t_end), math.inf
    for kappa in np.linspace(0.0, 1.0, 9):
        for rho in np.exp(np.linspace(math.log(0.5), math.log(4.0), 19)):
            p = SpacingParams(float(kappa), float(rho), t_start, t_end)
            d = sum(abs(a - b) for a, b in zip(family_timesteps(path, n, p), ts)) if n > 1 else 0
            if d < best_d:
                best, best_d = p, d
    return best

class GapRule:
    r"""Consecutive timesteps at least ``delta = min_gap * Lambda / n`` apart in log-SNR:

        lambda(t_{i+1}) - lambda(t_i) >= delta,    Lambda = lambda(0) - lambda(T-1),

    (``lambda = log(alpha_bar / (1 - alpha_bar))``; a zero terminal SNR's ``-inf`` is read as one below the next
    level), so no step evaluates the model at almost the noise level of the step before."""

    def __init__(self, path, n: int, min_gap: float = DEFAULT_MIN_GAP):
        if isinstance(min_gap, bool) or not isinstance(min_gap, (int, float)) or not 0.0 <= min_gap <= 1.0:
            raise ValueError(f"--min-gap must be a number in [0, 1] (a share of the uniform log-SNR step), got "
                             f"{min_gap!r}")
        T = path.t_max + 1
        lam = path.log_snr(torch.arange(T)).double().numpy()
        finite = np.isfinite(lam)
        self.lam = np.where(finite, lam, lam[finite].min() - 1.0)
        self.neg_lam = -self.lam  # increasing in t
        self.T, self.min_gap = T, float(min_gap)
        self.delta = self.min_gap * float(self.lam[0] - self.lam[-1]) / max(int(n), 1)

    def gaps(self, ts: Sequence[int]) -> list[float]:
        return [float(self.lam[b] - self.lam[a]) for a, b in zip(ts, ts[1:])]

    def ok(self, ts: Sequence[int]) -> bool:
        ts = [int(t) for t in ts]
        if any(b >= a for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] > self.T - 1:
            return False
        return all(g >= self.delta - 1e-9 for g in self.gaps(ts))

    def window(self, above: int | None, below: int | None) -> tuple[int, int]:
        """The timesteps ``t`` allowed between the neighbours ``above`` (the step before, larger ``t``) and
        ``below`` (the step after): ``lambda(t) >= lambda(above) + delta`` and ``lambda(t) <= lambda(below) -
        delta``; ``lo > hi`` when there is none."""
        hi, lo = self.T - 1, 0
        if above is not None:
            c = self.lam[int(above)] + self.delta  # t <= max{t: lambda(t) >= c}
            hi = min(int(above) - 1, int(np.searchsorted(self.neg_lam, -c + 1e-9, side="right")) - 1)
        if below is not None:
            c = self.lam[int(below)] - self.delta  # t >= min{t: lambda(t) <= c}
            lo = max(int(below) + 1, int(np.searchsorted(self.neg_lam, -c - 1e-9, side="left")))
        return lo, hi


# --------------------------------------------------------------------------------------------------------------
# common random numbers and sampling
# --------------------------------------------------------------------------------------------------------------

class CommonNoise:
    """The common random numbers of one seed: ``x_T`` (the bench's :func:`~skipstep.lab.sample_sets.initial_noise`) and one
    fixed noise tensor per step index (used by that step whatever its timestep and eta)."""

    def __init__(self, seed: int, num_samples: int, shape: Sequence[int]):
        self.seed, self.num_samples, self.shape = int(seed), int(num_samples), tuple(shape)
        self.x_T = initial_noise(seed, num_samples, shape)
        self._steps: dict[int, torch.Tensor] = {}

    def step(self, index: int) -> torch.Tensor:
        if index not in self._steps:
            g = torch.Generator().manual_seed(derived_seed("skipstep-tune-steps", self.seed, index))
            self._steps[index] = torch.randn((self.num_samples, *self.shape), generator=g)
        return self._steps[index]

def x0_clipping(loaded):
    """The x0 bound every skipstep sampler of the benchmark applies to this model: ``clip_sample`` and
    ``clip_sample_range`` of its scheduler config (see :func:`skipstep.lab.sampler_registry.clip_overrides`)."""
    cfg = loaded.scheduler_config
    return X0Clipping(bool(cfg.get("clip_sample", False)), float(cfg.get("clip_sample_range", 1.0) or 1.0))

@torch.no_grad()
def draw_samples(loaded, counter: CallCounter | Callable | None, timesteps: Sequence[int], eta: Sequence[float],
                 base: BaseSampler, noise: CommonNoise, batch_size: int = 500, device: str = "cpu") -> torch.Tensor:
    """Few-step samples of one candidate (the skipstep posterior step, x0 clipped as the model's scheduler config
    says, as in the benchmark; ``timesteps`` are grid indices, :func:`~skipstep.lab.tune_grids.tune_grid`) from
    the common random numbers ``noise``; the model (the batch's labels and
    guidance for a conditional model, :meth:`LoadedModel.model_for_batch`) is called once per step per batch and
    counted in ``counter`` (a :class:`CallCounter`; ``None``: not counted; a plain callable: that model itself,
    for an unconditional model)."""
    flow = loaded.regime == "flow"
    if flow:  # the grid indices are the model times minus one (FlowGrid)
        grid = FlowGrid(loaded.num_train_timesteps)
        path, times = RectifiedFlowPath(t_min=1e-12, t_max=1.0), grid.sigma(list(timesteps))
    else:
        path, times = DiscreteVPPath.from_config(loaded.scheduler_config), torch.as_tensor(list(timesteps),
                                                                                            dtype=torch.int64)
    gain = resolve_extrapolation_gain(base.extrapolation_gain, len(times), flow=flow,
                                      guidance_scale=loaded.guidance_scale)
    plan = plan_steps(path, times, list(eta), solver_order=base.solver_order, use_corrector=base.use_corrector,
                      extrapolation_gain=gain)
    config = StepConfig(prediction_type="flow" if flow else loaded.prediction_type, variance_type=base.variance_type,
                        solver_order=base.solver_order, check_finite=False, clipping=x0_clipping(loaded),
                        use_corrector=base.use_corrector)
    chunks = []
    for start in range(0, noise.num_samples, batch_size):
        x = noise.x_T[start:start + batch_size].to(device)
        model = loaded.model_for_batch(range(start, start + x.shape[0]), with_variance=base.variance_type == "learned")
        if isinstance(counter, CallCounter):
            model = counter.counting(model)
        elif counter is not None:
            if loaded.conditioning is not None:
                raise ValueError("a class-conditional model is sampled through loaded.model_for_batch, not a callable")
            model = counter
        stepper = TrajectoryStepper(plan, config)
        for i, step in enumerate(plan):
            if flow:
                t = torch.full((x.shape[0],), float(grid.model_time(timesteps[i])), dtype=torch.float32,
                               device=device)
            else:
                t = torch.full((x.shape[0],), int(step.t), dtype=torch.int64, device=device)
            out = model(x, t)
            z = None
            if needs_noise(step.posterior, config.variance_type):
                z = noise.step(step.index)[start:start + batch_size].to(device)
            x, _ = stepper.step(step.index, out, x, noise=z)
        chunks.append(x.float().cpu())
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------------------------

class BudgetExhausted(Exception):
    pass

class StageLimit(BudgetExhausted):
    """The current stage used its share of the budget (the search goes on with the next stage)."""

def _key(ts: Sequence[int], eta: Sequence[float]) -> tuple:
    return tuple(int(t) for t in ts), tuple(round(float(e), 6) for e in eta[:-1])

class Search:
    """Evaluates candidates (memoised) within the NFE and time budgets and keeps the best one. ``objective(samples,
    noise)`` scores one seed's samples; a candidate's value is the mean over ``noises``. Candidates that break the
    ``gap_rule`` score ``inf`` without being sampled (unless ``check_gap=False``: the plain spacings)."""

    def __init__(self, loaded, base, objective, noises, batch_size, device, budget_nfe, budget_seconds,
                 estimate_seconds, log, val_noises=(), gap_rule: GapRule | None = None, metric: str = ""):
        self.loaded, self.base, self.objective, self.noises = loaded, base, objective, noises
        self.val_noises = list(val_noises)
        self.batch_size, self.device, self.log = batch_size, device, log
        self.gap_rule, self.metric = gap_rule, metric or getattr(objective, "name", "objective")
        self.counter = CallCounter()
        self.n_batches = sum(math.ceil(nz.num_samples / batch_size) for nz in noises)
        self.n_val_batches = sum(math.ceil(nz.num_samples / batch_size) for nz in self.val_noises)
        self.val_memo: dict[tuple, float] = {}
        self.budget_nfe = math.inf if budget_nfe is None else budget_nfe
        self.budget_seconds = budget_seconds
        self.estimate = estimate_seconds
        self.memo: dict[tuple, float] = {}
        self.rejected_gaps = 0
        self.t0 = time.perf_counter()
        self.seconds: list[float] = []
        self.best: tuple[float, list[int], list[float]] | None = None
        self.improvements: list[list] = []
        self.stopped_by = "converged"
        self.stage_limit_nfe = self.budget_nfe
        self.stage_limit_seconds = budget_seconds

    def limit_stage(self, share: float | None) -> None:
        """Let the next stage spend ``share`` of what is left (``None``: all of it)."""
        if share is None:
            self.stage_limit_nfe, self.stage_limit_seconds = self.budget_nfe, self.budget_seconds
            return
        self.stage_limit_nfe = self.counter.calls + share * (self.budget_nfe - self.counter.calls)
        self.stage_limit_seconds = self.elapsed() + share * (self.budget_seconds - self.elapsed())

    def cost(self, nfe: int) -> int:
        return nfe * self.n_batches

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def per_candidate(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else self.estimate

    def check_affordable(self, nfe: int) -> None:
        """Raise :class:`BudgetExhausted` (or :class:`StageLimit`) when the next candidate does not fit, keeping
        a reserve for two validations (a stage's result and the candidate it would replace)."""
        per = self.per_candidate()
        reserve_nfe = 2 * nfe * self.n_val_batches
        need = self.counter.calls + self.cost(nfe) + reserve_nfe
        per += 2 * per * self.n_val_batches / self.n_batches
        if need > self.budget_nfe:
            self.stopped_by = "NFE budget"
            raise BudgetExhausted
        if self.elapsed() + per > self.budget_seconds:
            self.stopped_by = "time budget"
            raise BudgetExhausted
        if need > self.stage_limit_nfe or self.elapsed() + per > self.stage_limit_seconds:
            raise StageLimit

    def validate(self, ts: Sequence[int], eta: Sequence[float]) -> float:
        """The objective on the validation seeds (memoised); :class:`BudgetExhausted` when it does not fit."""
        key = _key(ts, eta)
        if key not in self.val_memo:
            per = self.per_candidate() * self.n_val_batches / self.n_batches
            if (self.counter.calls + len(ts) * self.n_val_batches > self.budget_nfe
                    or self.elapsed() + per > self.budget_seconds):
                raise BudgetExhausted
            values = [self.objective(draw_samples(self.loaded, self.counter, ts, eta, self.base, nz, self.batch_size,
                                                  self.device), nz) for nz in self.val_noises]
            self.val_memo[key] = float(np.mean(values))
        return self.val_memo[key]

    def __call__(self, ts: Sequence[int], eta: Sequence[float], label: str = "", check_gap: bool = True) -> float:
        key = _key(ts, eta)
        if key in self.memo:
            return self.memo[key]
        if check_gap and self.gap_rule is not None and not self.gap_rule.ok(ts):
            self.rejected_gaps += 1
            return math.inf
        self.check_affordable(len(ts))
        t0 = time.perf_counter()
        values = []
        for nz in self.noises:
            x = draw_samples(self.loaded, self.counter, ts, eta, self.base, nz, self.batch_size, self.device)
            values.append(self.objective(x, nz))
        value = float(np.mean(values))
        self.seconds.append(time.perf_counter() - t0)
        self.memo[key] = value
        if self.best is None or value < self.best[0]:
            self.best = (value, [int(t) for t in ts], [float(e) for e in eta])
            self.improvements.append([len(self.memo), round(value, 8)])
            self.log(f"  candidate {len(self.memo):4d}{(' ' + label) if label else ''}: {self.metric} "
                     f"{value:.5g} (best)")
        return value

def is_better(new: float, old: float) -> bool:
    return new < old - MIN_RELATIVE_IMPROVEMENT * abs(old)

def eta_level_stage(search: Search, ts: Sequence[int], eta: Sequence[float], n: int, holder: dict) -> None:
    """Stage 1b: ``ts`` at each constant eta of :data:`ETA_LEVELS` other than ``eta`` itself; ``holder`` gets the
    best (``ts``, ``eta``, ``f``)."""
    for level in ETA_LEVELS:
        eta_level = ramp(level, level, n)
        if _key(ts, eta_level) == _key(ts, eta):
            continue
        f = search(ts, eta_level, label=f"eta {level:g}", check_gap=False)
        if not holder or is_better(f, holder["f"]):
            holder.update(ts=list(ts), eta=eta_level, f=f)


def smooth_stage(search: Search, path, n: int, p0: SpacingParams, eta0: tuple[float, float], search_eta: bool,
                  fixed_eta, holder: dict) -> None:
    """Pattern search over (kappa, log rho, t_start, t_end[, eta_a, eta_b]); ``holder`` always holds the stage's
    incumbent (``ts``, ``eta``, ``f``), also when the budget stops it. ``fixed_eta``: the eta without the eta
    search, a list or a function of the timesteps (:func:`base_eta_rule`). Members that break the gap rule score
    ``inf`` (they are never sampled)."""
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
        if search_eta:
            return ts, ramp(v["eta_a"], v["eta_b"], n)
        return ts, (fixed_eta(ts) if callable(fixed_eta) else fixed_eta)

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
                if is_better(fy, f) or (math.isinf(f) and fy < f):
                    x, f, improved = y, fy, True
                    holder.update(zip(("ts", "eta"), candidate(x)), f=f)
                    break
        if not improved:
            for k in keys:
                steps[k] = steps[k] / 2 if isinstance(steps[k], float) else (steps[k] // 2 if steps[k] > 1 else 0)

def coordinate_stage(search: Search, path, ts: list[int], eta: list[float], search_eta: bool,
                      holder: dict, eta_rule: Callable[[Sequence[int]], list[float]] | None = None) -> None:
    """Move single timesteps (within the window the gap rule leaves between their neighbours) and single etas,
    accepting improvements; per-coordinate steps halve on failure. ``holder`` always holds the stage's
    incumbent. Without the eta search, ``eta_rule`` (:func:`base_eta_rule`) gives each moved candidate the base's
    eta for its own timesteps."""
    T = path.t_max + 1
    n = len(ts)
    rule = search.gap_rule or GapRule(path, n, 0.0)
    ts, eta = list(ts), list(eta)
    f = search(ts, eta, check_gap=False)
    holder.update(ts=ts, eta=eta, f=f)
    bounds = [T - 1] + ts[:-1]
    dt = [max(1, (bounds[i] - (ts[i + 1] if i + 1 < n else -1)) // 4) for i in range(n)]
    de = [0.25 if search_eta else 0.0] * (n - 1)
    while any(d >= 1 for d in dt) or any(d >= 1 / 32 for d in de):
        for i in range(n):
            if dt[i] < 1:
                continue
            lower, upper = rule.window(ts[i - 1] if i > 0 else None, ts[i + 1] if i + 1 < n else None)
            moved = False
            for sign in (1, -1):
                v = min(upper, max(lower, ts[i] + sign * dt[i]))
                if v == ts[i] or lower > upper:
                    continue
                cand = ts[:i] + [v] + ts[i + 1:]
                cand_eta = eta_rule(cand) if eta_rule is not None and not search_eta else eta
                fc = search(cand, cand_eta, label=f"t[{i}]")
                if is_better(fc, f):
                    ts, eta, f, moved = cand, cand_eta, fc, True
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
                fc = search(ts, cand, label=f"eta[{i}]", check_gap=False)
                if is_better(fc, f):
                    eta, f, moved = cand, fc, True
                    holder.update(ts=ts, eta=eta, f=f)
                    break
            if not moved:
                de[i] /= 2


__all__ = ["BaseSampler", "BudgetExhausted", "CommonNoise", "DEFAULT_MIN_GAP", "ETA_LEVELS", "GapRule",
           "MIN_RELATIVE_IMPROVEMENT",
           "SMOOTH_STAGE_SHARE", "Search", "SpacingParams", "StageLimit", "base_eta_rule", "base_names",
           "coordinate_stage", "draw_samples", "eta_level_stage", "family_timesteps", "is_better",
           "nearest_family_member",
           "plain_spacings", "ramp", "resolve_base", "smooth_stage", "x0_clipping"]
