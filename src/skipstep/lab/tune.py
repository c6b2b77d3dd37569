"""``skipstep tune``: tuned timesteps and per-step eta of a skipstep sampler for one model and one NFE.

``skipstep tune --model digits --nfe 10 --base skipstep-eta0.5 --solver-order 2 --num-samples 1000 --fit-seeds 0
--eval-seeds 1,2,3 --budget-nfe 3000 --budget-minutes 5 --out digits-nfe10.json``

:func:`tune_schedule` runs the search of :mod:`skipstep.lab.tune_search` within an NFE budget (batched network
evaluations spent on candidates, counted) and a time budget, accepts a stage's result only if it also improves on
validation seeds, and returns a :class:`skipstep.TunedSchedule` (the file format, :mod:`skipstep.tuned_schedules`).
The result is the best candidate evaluated, so it is never worse (on the fit seeds) than the best starting
spacing. A budget too small for one candidate is refused before any work. :func:`compare_schedules` scores the
tuned schedule against the plain spacings on held-out seeds.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..paths import DiscreteVPPath
from ..storage import CACHE_DIR_ENV
from ..storage import cache_dir as default_cache_root
from ..timesteps import select_timesteps
from ..tuned_schedules import TunedSchedule
from .bench_report import format_value
from .cli_args import (HelpFormatter, OptionValueError, add_common_run_args, add_model_args, apply_threads,
                       check_device, check_seed, model_options, positive_int, seed_list)
from .models import apply_clip_mode, load_model
from .run_dirs import RunDirectoryError, check_writable_dir, check_writable_file, remove_stale_temp_files
from .sample_sets import REFERENCE_SEED
from .tune_search import (SMOOTH_STAGE_SHARE, BaseSampler, BudgetExhausted, CommonNoise, Objective, Search, StageLimit,
                          base_names, coordinate_stage, draw_samples, reference_samples, resolve_base, smooth_stage,
                          is_better, spacing_starts)

#: Validation seeds by default (the smallest seeds not used for fitting, evaluation or the references).
DEFAULT_NUM_VAL_SEEDS = 2


def _time_one_call(loaded, batch: int, device: str) -> float:
    """Seconds of one model call on a batch of ``batch`` noise samples (the budget check's estimate)."""
    x = torch.randn((batch, *loaded.sample_shape)).to(device)
    t = torch.full((batch,), loaded.num_train_timesteps // 2, dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    loaded.model_for_batch(range(batch))(x, t)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0

def _check_seeds(fit_seeds, eval_seeds, reference_seed):
    fit, ev = [int(s) for s in fit_seeds], [int(s) for s in eval_seeds]
    if not fit:
        raise ValueError("--fit-seeds: give at least one fit seed")
    overlap = sorted(set(fit) & set(ev))
    if overlap:
        raise ValueError(f"--eval-seeds must be held out: {overlap} are also --fit-seeds")
    if reference_seed in fit + ev:
        raise ValueError(f"seed {reference_seed} is the reference set's seed; choose other fit/eval seeds")
    return list(dict.fromkeys(fit)), list(dict.fromkeys(ev))

def tune_schedule(loaded, nfe: int, base: str | BaseSampler = "skipstep", *, solver_order: int | None = None,
                  variance_type: str | None = None, eta=None, num_samples: int = 1000,
                  fit_seeds: Sequence[int] = (0,), eval_seeds: Sequence[int] = (),
                  val_seeds: Sequence[int] | None = None, budget_nfe: int = 2000,
                  budget_minutes: float = 5.0, metric: str | None = None, num_reference: int | None = None,
                  reference_seed: int | None = None, cache_dir: str | Path | None = None, batch_size: int = 500,
                  device: str = "cpu", search_eta: bool = True, clip: str = "model",
                  eval_reference_seed: int | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None, guidance_scale: float | None = None) -> TunedSchedule:
    """Search the timesteps and per-step eta of ``base`` at ``nfe`` for ``loaded`` (a LoadedModel or a model name);
    see the module docstring. ``budget_nfe`` counts batched model calls spent on candidates (one candidate costs
    ``nfe * ceil(num_samples / batch_size) * len(fit_seeds)``); ``budget_minutes`` bounds the search's wall time
    (the cached reference and the held-out comparison come on top and are reported separately). With
    ``eval_seeds`` the tuned schedule is compared on those held-out seeds with the trailing, quadratic and log-SNR
    spacings (same base sampler) and the table is stored in ``provenance['heldout']``. ``clip``: x0 clipping as
    the benchmark's ``--clip`` (``model``: the model's scheduler config; ``on``; ``off``). ``eval_reference_seed``:
    score the held-out comparison against a second, independent reference set drawn with this seed (so neither
    the sampler noise nor the reference set of the fit is reused), and record the finite-sample floor -- the
    distance between the two reference sets. ``guidance_scale``: a class-conditional model is tuned at that
    classifier-free guidance scale (default 1), its sample ``i`` asking for label ``real_labels[i mod K]``."""
    log = log or (lambda msg: None)
    if isinstance(loaded, str):
        loaded = load_model(loaded, device=device)
    if loaded.regime != "vp":
        raise ValueError(f"--model {loaded.name}: tune searches the integer timesteps of a discrete VP chain; a "
                         f"{loaded.regime_text} model is not supported")
    loaded = copy.copy(loaded.at_guidance(guidance_scale))  # apply_clip_mode rebinds scheduler_config on the copy
    clip_description = apply_clip_mode(loaded, clip)
    base = resolve_base(base, solver_order, variance_type, eta)
    T = loaded.num_train_timesteps
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= T:
        raise ValueError(f"nfe must be an integer in [1, {T}], got {nfe!r}")
    base_eta = base.eta_list(nfe)
    if int(num_samples) < 4:
        raise ValueError(f"num_samples must be >= 4, got {num_samples}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_samples, batch_size = int(num_samples), int(batch_size)
    if num_reference is not None and int(num_reference) < 4:
        raise ValueError(f"--num-reference must be >= 4 (the reference set's size), got {num_reference}")
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
        raise ValueError(f"--val-seeds {sorted(taken & set(val_seeds))} are also fit, eval or reference seeds")
    metric = metric or ("fd" if loaded.feature_fn is not None else "sw")
    if metric not in ("fd", "sw") or (metric == "fd" and loaded.feature_fn is None):
        raise ValueError(f"metric must be 'sw' or (with a feature network) 'fd'; got {metric!r} for {loaded.name!r}")
    # -- budgets: refuse before any work ------------------------------------------------------------------------
    batches = math.ceil(num_samples / batch_size)
    cost = nfe * batches * len(fit_seeds)
    # the search keeps two validations in reserve before it evaluates a candidate (tune_search.Search)
    reserve = 2 * nfe * batches * len(val_seeds)
    if budget_nfe < cost + reserve:
        raise ValueError(f"--budget-nfe {budget_nfe} cannot pay for one candidate: it needs at least "
                         f"{cost + reserve} NFE (a candidate costs {cost}: nfe {nfe} x {batches} batches x "
                         f"{len(fit_seeds)} fit seed(s); plus {reserve} kept for two validations on "
                         f"{len(val_seeds)} validation seed(s))")
    if not budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be > 0, got {budget_minutes}")
    per_call = _time_one_call(loaded, min(batch_size, num_samples), device)
    estimate = cost * per_call
    needed = (cost + reserve) * per_call
    if budget_minutes * 60 < needed:
        raise ValueError(f"--budget-minutes {budget_minutes} cannot pay for one candidate: one model call took "
                         f"{per_call:.3g} s, so one candidate and its validation reserve ({cost + reserve} calls) "
                         f"need about {needed:.3g} s")
    # -- reference, objective, common random numbers ------------------------------------------------------------
    t_ref = time.perf_counter()
    num_reference = int(num_reference or num_samples)
    log(f"reference: {num_reference} samples (seed {reference_seed}), cached under "
        f"{Path(cache_dir or default_cache_root()) / 'references'}")
    reference, ref_meta = reference_samples(loaded, num_reference, reference_seed, cache_dir, batch_size, device,
                                            progress)
    objective = Objective(loaded, reference, metric)
    reference_seconds = time.perf_counter() - t_ref
    noises = [CommonNoise(s, num_samples, loaded.sample_shape) for s in fit_seeds]
    val_noises = [CommonNoise(s, num_samples, loaded.sample_shape) for s in val_seeds]
    path = DiscreteVPPath.from_config(loaded.scheduler_config)
    search = Search(loaded, base, objective, noises, batch_size, device, int(budget_nfe), 60.0 * budget_minutes,
                     estimate, log, val_noises)
    stages: list[dict] = []
    starts = spacing_starts(path, nfe)
    start_values: dict[str, float] = {}
    accepted: dict | None = None  # the current result: a best start, then stage results the validation confirmed
    log(f"stage 1: the library's spacings with the base eta ({base.name}, order {base.solver_order})")
    stopped = False
    try:
        for name, (ts, _) in starts.items():
            start_values[name] = search(ts, base_eta, label=name)
            if accepted is None or start_values[name] < accepted["f"]:
                accepted = {"ts": list(ts), "eta": list(base_eta), "f": start_values[name], "from": name}
    except BudgetExhausted:
        stopped = True
    start_val: dict[str, float] = {}
    if val_noises and not stopped and len(start_values) > 1:
        # choose the start on the fit and validation seeds together: one seed's noise can reorder close spacings
        try:
            for name, (ts, _) in starts.items():
                start_val[name] = search.validate(ts, base_eta)
        except BudgetExhausted:
            start_val = {}
        if start_val:
            k_fit, k_val = len(noises), len(val_noises)
            pooled = {n: (k_fit * start_values[n] + k_val * start_val[n]) / (k_fit + k_val) for n in start_val}
            name = min(pooled, key=pooled.get)
            accepted = {"ts": list(starts[name][0]), "eta": list(base_eta), "f": start_values[name], "from": name}
            log(f"  best start on fit + validation seeds: {name} ({metric} {pooled[name]:.5g})")
    if accepted is None:  # the machine slowed down after the budget check: not even one candidate fitted
        raise ValueError(f"--budget-minutes {budget_minutes} / --budget-nfe {budget_nfe}: the search could not "
                         f"evaluate a single candidate (stopped by the {search.stopped_by}); raise the budget")
    chosen_start = accepted["from"]
    stages.append({"stage": "spacings", "candidates": len(search.memo), "best": accepted["f"],
                   "note": f"stopped by the {search.stopped_by}" if stopped else f"best: {chosen_start}"
                   + (" (fit + validation seeds)" if start_val else "")})

    def gate(stage: str, result: dict) -> str:
        """Accept a stage's result if it beats the accepted one on the fit seeds and (when there are validation
        seeds) on the validation seeds too -- a guard against fitting the fit seeds' noise."""
        nonlocal accepted
        if not result or not is_better(result["f"], accepted["f"]):
            return "no improvement on the fit seeds"
        if val_noises:
            try:
                v_new, v_old = search.validate(result["ts"], result["eta"]), search.validate(accepted["ts"],
                                                                                             accepted["eta"])
            except BudgetExhausted:
                return "not accepted: no budget left to validate it"
            log(f"  validation {metric}: {v_old:.5g} (kept) vs {v_new:.5g} ({stage})")
            if not is_better(v_new, v_old):
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
                smooth_stage(search, path, nfe, start_p, (base_eta[0], base_eta[-2 if nfe > 1 else 0]),
                              search_eta, base_eta, holder)
            else:
                log("stage 3: coordinate moves of single timesteps" + (" and etas" if search_eta else "")
                    + f" (from the {accepted['from']} result)")
                coordinate_stage(search, path, accepted["ts"], accepted["eta"], search_eta, holder)
            note = "converged"
        except StageLimit:
            note = f"used its {share:.0%} share of the budget"
        except BudgetExhausted:
            note, stopped = f"stopped by the {search.stopped_by}", True
        search.limit_stage(None)
        decision = gate(stage, holder)
        log(f"  {stage}: {decision}")
        stages.append({"stage": stage, "candidates": len(search.memo) - before,
                       "best": holder.get("f"), "note": note, "decision": decision})
    search_seconds = search.elapsed()
    value, ts, eta_best = accepted["f"], accepted["ts"], accepted["eta"]
    uniform = start_values.get("trailing")
    provenance = {
        "model": loaded.name,
        "model_description": loaded.description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "skipstep_version": __version__,
        "base": base.info(),
        "guidance_scale": loaded.guidance_scale,
        "regime": loaded.regime_text,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "device": device,
        "x0_clipping": clip_description,
        "noise": "common random numbers: x_T = skipstep.lab.sample_sets.initial_noise(seed); step i uses a fixed "
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
                             model_fingerprint=loaded.fingerprint, metric=metric, fit_seeds=fit_seeds,
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
            reference2, meta2 = reference_samples(loaded, num_reference, eval_reference_seed, cache_dir, batch_size,
                                                  device, progress)
            eval_objective = Objective(loaded, reference2, metric)
            floor = eval_objective(reference)  # two independent sets of the reference distribution
            ref_info = {k: meta2.get(k) for k in ("source", "num_samples", "seed")}
        table = compare_schedules(loaded, schedule, eval_seeds, num_samples=num_samples, base=base,
                                  objective=eval_objective, batch_size=batch_size, device=device)
        table["reference"] = ref_info
        table["floor"] = floor
        provenance["heldout"] = table
        provenance["timing"]["heldout_seconds"] = round(time.perf_counter() - t_eval, 2)
    return schedule

def compare_schedules(loaded, schedule: TunedSchedule, eval_seeds: Sequence[int], *, num_samples: int = 1000,
                      base: BaseSampler | None = None, objective: Objective | None = None, metric: str | None = None,
                      num_reference: int | None = None, reference_seed: int | None = None, cache_dir=None,
                      batch_size: int = 500, device: str = "cpu") -> dict[str, Any]:
    """The tuned schedule against the trailing (uniform), quadratic and log-SNR spacings with the same base
    sampler (and the tuned timesteps with the base eta, separating the two effects), on ``eval_seeds``:
    ``{"metric", "seeds", "rows": [{"name", "timesteps", "eta", "values", "mean", "std"}]}``."""
    if base is None:
        b = schedule.provenance.get("base", {})
        base = BaseSampler(b.get("name", "?"), b.get("eta", 1.0), schedule.solver_order, schedule.variance_type)
    if objective is None:
        reference, _ = reference_samples(loaded, int(num_reference or num_samples), reference_seed, cache_dir,
                                         batch_size, device)
        objective = Objective(loaded, reference, metric or schedule.metric)
    path = DiscreteVPPath.from_config(loaded.scheduler_config)
    n = schedule.nfe
    base_eta = base.eta_list(n)
    candidates = {"tuned": (schedule.timesteps, schedule.eta)}
    if list(schedule.eta) != list(base_eta):
        candidates["tuned timesteps, base eta"] = (schedule.timesteps, base_eta)
    for name, label in (("trailing", "uniform (trailing)"), ("quadratic", "quadratic"), ("log_snr", "log-SNR")):
        candidates[label] = ([int(v) for v in select_timesteps(path, n, name).tolist()], base_eta)
    rows = []
    noises = [CommonNoise(s, num_samples, loaded.sample_shape) for s in eval_seeds]
    for name, (ts, eta) in candidates.items():
        values = [objective(draw_samples(loaded, None, ts, eta, base, nz, batch_size, device)) for nz in noises]
        rows.append({"name": name, "timesteps": list(ts), "eta": [round(e, 4) for e in eta], "values": values,
                     "mean": float(np.mean(values)),
                     "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0})
    return {"metric": objective.metric, "seeds": list(eval_seeds), "num_samples": num_samples, "rows": rows}

def format_comparison(table: dict[str, Any]) -> str:
    """The held-out comparison as a Markdown table."""
    metric = {"fd": "FD vs reference (classifier features)", "sw": "sliced W2 vs reference"}.get(table["metric"],
                                                                                               table["metric"])
    lines = [f"{metric}, mean ± std over held-out seeds {table['seeds']} ({table['num_samples']} samples each; "
             "lower is better)", "", "| schedule | timesteps | eta | " + table["metric"] + " |", "|---|---|---|---:|"]
    for r in table["rows"]:
        eta = r["eta"][:-1]
        eta_txt = f"{eta[0]:g}" if len(set(eta)) <= 1 and eta else ",".join(f"{e:g}" for e in eta)
        lines.append(f"| {r['name']} | {','.join(str(t) for t in r['timesteps'])} | {eta_txt} | "
                     f"{format_value(r['mean'], r['std'])} |")
    ref = table.get("reference")
    if ref:
        lines += ["", f"Scored against: {ref.get('source')}, {ref.get('num_samples')} samples, seed {ref.get('seed')}."]
    if table.get("floor") is not None:
        lines.append(f"Floor (an independent set of the reference distribution, same size, against it): "
                     f"{format_value(table['floor'])}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------

def _seed_list_or_none(text: str) -> list[int]:
    if text.strip().lower() in ("none", ""):
        return []
    try:
        return seed_list(text)
    except OptionValueError as err:
        raise OptionValueError(f"{err} (or 'none')") from None

def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="tune the timesteps and per-step eta of a skipstep sampler for one model and NFE",
        description="Search the timestep subsequence and per-step eta schedule of a skipstep sampler that minimise "
                    "the Fréchet distance (classifier features; sliced W2 without a feature network) to the "
                    "model's own 1000-step samples on --fit-seeds, within --budget-nfe and --budget-minutes; "
                    "compare it on --eval-seeds with trailing, quadratic and log-SNR spacing, print the table and "
                    "the schedule, then write the schedule JSON (use it with `skipstep bench --samplers "
                    "tuned:FILE.json`, skipstep.sample(..., tuned_schedule=FILE) or "
                    "SkippedStepScheduler(tuned_schedule=...)). --out and the cache are checked writable before "
                    "any work.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="gmm, digits, a zoo model, or a path to a local diffusers "
                   "directory (required)")
    add_model_args(p)
    p.add_argument("--nfe", type=positive_int, required=True,
                   help="network evaluations (= steps) of the schedule (required)")
    p.add_argument("--base", default="skipstep",
                   help="the skipstep sampler to tune (its eta is the start): " + ", ".join(base_names()))
    p.add_argument("--solver-order", type=int, default=None, choices=(1, 2, 3),
                   help="multistep order (default: the base sampler's own order)")
    p.add_argument("--variance-type", default=None, choices=("small", "large"),
                   help="noise variance (default: the base sampler's, small for every shipped base)")
    p.add_argument("--eta", default=None,
                   help="override the base's starting eta: a number or a schedule string (default: the base's eta)")
    p.add_argument("--no-eta-search", action="store_true", help="keep the base eta; tune the timesteps only")
    p.add_argument("--num-samples", type=positive_int, default=1000,
                   help="samples per candidate (and per eval seed; at least 4)")
    p.add_argument("--fit-seeds", type=seed_list, default=[0], help="seeds the objective is averaged over")
    p.add_argument("--eval-seeds", type=seed_list, default=[1, 2, 3], help="held-out seeds of the comparison")
    p.add_argument("--val-seeds", type=_seed_list_or_none, default=None,
                   help="seeds a stage's result must also improve on to be accepted (guards against fitting the "
                        "fit seeds' noise; 'none' disables the check). Default: the two smallest seeds not used "
                        "elsewhere")
    p.add_argument("--budget-nfe", type=positive_int, default=2000, help="batched model calls the search may spend")
    p.add_argument("--budget-minutes", type=float, default=5.0, help="wall time the search may spend")
    p.add_argument("--metric", default=None, choices=("fd", "sw"), help="objective (default: fd if the model has "
                   "a feature network, else sw)")
    p.add_argument("--num-reference", type=positive_int, default=None,
                   help="reference-set size (default: --num-samples)")
    p.add_argument("--eval-reference-seed", type=check_seed, default=None,
                   help="score the held-out comparison against a second reference set drawn with this seed "
                        "(default: the fit's reference set) and report the two sets' distance as the floor")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where reference sets are cached (default ${CACHE_DIR_ENV} or ~/.cache/skipstep)")
    p.add_argument("--out", type=Path, required=True, help="schedule JSON file to write (required)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_common_run_args(p)  # --device, --batch-size, --no-progress, --clip, --threads (as bench)
    p.set_defaults(func=main_tune)

def _check_outputs(args: argparse.Namespace) -> None:
    """Everything tune will write, checked before any work: --out and the reference cache."""
    check_writable_file(args.out, "--out", args.overwrite)
    remove_stale_temp_files(args.out.parent, targets=[args.out.name])  # of killed tune runs only
    cache = Path(args.cache_dir or default_cache_root())
    check_writable_dir(cache, "the reference cache (--cache-dir, $" + CACHE_DIR_ENV + ")")

def main_tune(args: argparse.Namespace) -> int:
    apply_threads(args)
    _check_outputs(args)
    device = check_device(args.device)
    t0 = time.perf_counter()
    verbose = not args.no_progress
    loaded = load_model(args.model, device=device, **model_options(args))
    schedule = tune_schedule(
        loaded, args.nfe, args.base, solver_order=args.solver_order, variance_type=args.variance_type, eta=args.eta,
        num_samples=args.num_samples, fit_seeds=args.fit_seeds, eval_seeds=args.eval_seeds, val_seeds=args.val_seeds,
        budget_nfe=args.budget_nfe, budget_minutes=args.budget_minutes, metric=args.metric,
        num_reference=args.num_reference, cache_dir=args.cache_dir, batch_size=args.batch_size, device=device,
        search_eta=not args.no_eta_search, clip=args.clip, eval_reference_seed=args.eval_reference_seed,
        progress=verbose, log=print if verbose else None, guidance_scale=args.guidance_scale)
    total = time.perf_counter() - t0
    schedule.provenance["timing"]["total_seconds"] = round(total, 2)
    prov = schedule.provenance
    # printed before it is written: a failing write loses nothing
    print(f"\n{loaded.name} (fingerprint {loaded.fingerprint}), NFE {schedule.nfe}, base {prov['base']['name']} "
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
    try:
        schedule.save(args.out, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        print(json.dumps(schedule.to_dict(), indent=2))
        raise RunDirectoryError(f"--out {args.out} could not be written ({getattr(err, 'strerror', None) or err}); "
                                "the schedule is printed above as JSON: save it to a file by hand") from None
    print(f"wrote {args.out}")
    return 0


__all__ = ["add_subcommand", "compare_schedules", "format_comparison", "main_tune", "tune_schedule"]
