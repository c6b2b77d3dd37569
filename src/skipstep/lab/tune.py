"""``skipstep tune``: tuned timesteps (and per-step eta) of a skipstep sampler for one model and one NFE, written only
when they beat every plain spacing on held-out seeds.

``skipstep tune --model digits --nfe 10 --base skipstep-ddim-o2 --out digits-nfe10.json`` (about two minutes).

:func:`tune_schedule` (0) for a deterministic base given no objective, asks the noise probe
(:mod:`skipstep.lab.tune_noise_probe`) whether the model wants noise at this NFE (then the objective is ``pixel-fd``
against the ancestral set, eta searched; else ``paired``), (1) draws the model's converged samples the objective
needs (:mod:`skipstep.lab.tune_objectives`; cached), (2) runs the search of :mod:`skipstep.lab.tune_search` on the fit
seeds, accepting a stage's result only if it also improves on the validation seeds, and (3) runs the final check
of :mod:`skipstep.lab.tune_check` on the evaluation seeds: the tuned schedule against every plain spacing. It
returns a :class:`skipstep.TunedSchedule` whose ``provenance['final_check']['tuned_wins']`` says whether the CLI
writes it. ``budget_minutes`` bounds all three (estimated from two timed model calls before any work and refused,
naming what it needs, when even one candidate does not fit); ``budget_nfe`` additionally caps the search's model
calls (deterministic, for tests and reproducible runs).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import __version__
from ..plan import resolve_extrapolation_gain
from ..storage import CACHE_DIR_ENV
from ..storage import cache_dir as default_cache_root
from ..tuned_schedules import TunedSchedule
from .cli_args import (HelpFormatter, OptionValueError, add_common_run_args, add_model_args, apply_threads,
                       check_device, check_seed, model_options, positive_int, seed_list)
from .models import apply_clip_mode, load_model
from .run_dirs import RunDirectoryError, check_writable_dir, check_writable_file, remove_stale_temp_files
from .sample_sets import REFERENCE_SEED, reference_cache_dir
from .tune_check import NO_IMPROVEMENT_EXIT, check_rows, decision_line, final_check, format_check, seeds_text
from .tune_objectives import (DEFAULT_NUM_SAMPLES, DEFAULT_REFERENCE_STEPS, OBJECTIVES, REFERENCE_KINDS,
                              DistributionObjective, PairedObjective, check_objective, default_reference,
                              mixes_scores, ode_cached, ode_solution, reference_set)
from .tune_noise_probe import noise_probe, probe_calls
from .tune_search import (DEFAULT_MIN_GAP, ETA_LEVELS, SMOOTH_STAGE_SHARE, BaseSampler, BudgetExhausted, CommonNoise,
                          GapRule, Search, StageLimit, base_eta_rule, base_names, coordinate_stage, eta_level_stage,
                          is_better, nearest_family_member, resolve_base, smooth_stage)
from .tune_grids import default_rule_grid, model_plain_spacings, schedule_timesteps, tune_grid

DEFAULT_BUDGET_MINUTES = 2.0
DEFAULT_FIT_SEEDS, DEFAULT_VAL_SEEDS, DEFAULT_EVAL_SEEDS = (0,), (1,), (2, 3)


def _time_one_call(loaded, batch: int, device: str) -> float:
    """Seconds of one model call on a batch of ``batch`` noise samples (after one untimed warm-up call)."""
    x = torch.randn((batch, *loaded.sample_shape)).to(device)
    t = torch.full((batch,), loaded.num_train_timesteps // 2,
                   dtype=torch.float32 if loaded.regime == "flow" else torch.int64, device=device)
    model = loaded.model_for_batch(range(batch))
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        model(x, t)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return seconds[-1]

def _call_counts(nfe: int, num_samples: int, batch_size: int, seeds: tuple, check_rows_count: int):
    """Model calls of one run's parts: (batches per seed, one candidate on the fit seeds, the two validations the
    search keeps in reserve, the final check); ``seeds`` = (fit, validation, evaluation)."""
    batches = math.ceil(num_samples / batch_size)
    fit, val, ev = (len(x) for x in seeds)
    return batches, nfe * batches * fit, 2 * nfe * batches * val, check_rows_count * nfe * batches * ev

def _ancestral_cached(loaded, num_reference: int, seed: int, batch_size: int, root) -> bool:
    """Whether the ancestral reference set needs no model calls (cached, or exact data of an analytic model)."""
    return loaded.reference is not None or (reference_cache_dir(loaded, num_reference, seed, batch_size, root)
                                            / "reference" / "reference.json").is_file()

def _check_seeds(fit, val, ev, reserved: set[int]):
    fit, val, ev = ([int(s) for s in dict.fromkeys(x)] for x in (fit, val, ev))
    if not fit:
        raise ValueError("--fit-seeds: give at least one fit seed")
    if not ev:
        raise ValueError("--eval-seeds: give at least one evaluation seed (the final check runs on them)")
    for name, a, b in (("--val-seeds", val, fit), ("--eval-seeds", ev, fit), ("--eval-seeds", ev, val)):
        if set(a) & set(b):
            raise ValueError(f"{name} must be held out: {sorted(set(a) & set(b))} are also "
                             f"{'--fit-seeds' if b is fit else '--val-seeds'}")
    clash = sorted(set(fit + val + ev) & reserved)
    if clash:
        raise ValueError(f"--fit-seeds/--val-seeds/--eval-seeds: seed(s) {clash} are reference seeds; choose others")
    return fit, val, ev

def tune_schedule(loaded, nfe: int, base: str | BaseSampler = "skipstep-ddim", *, solver_order: int | None = None,
                  variance_type: str | None = None, eta=None, use_corrector: bool | None = None,
                  objective: str | None = None,
                  reference: str | None = None, reference_steps: int | None = None,
                  num_samples: int | None = None, fit_seeds: Sequence[int] = DEFAULT_FIT_SEEDS,
                  val_seeds: Sequence[int] = DEFAULT_VAL_SEEDS, eval_seeds: Sequence[int] = DEFAULT_EVAL_SEEDS,
                  budget_nfe: int | None = None, budget_minutes: float = DEFAULT_BUDGET_MINUTES,
                  min_gap: float = DEFAULT_MIN_GAP, num_reference: int | None = None,
                  reference_seed: int | None = None, eval_reference_seed: int | None = None,
                  cache_dir: str | Path | None = None, batch_size: int = 500, device: str = "cpu",
                  search_eta: bool = True, clip: str = "model", progress: bool = False,
                  log: Callable[[str], None] | None = None, guidance_scale: float | None = None) -> TunedSchedule:
    """Search the timesteps (and, for distribution objectives, the per-step eta) of ``base`` at ``nfe`` for
    ``loaded`` (a LoadedModel or a model name), then check the result on ``eval_seeds`` against every plain spacing;
    see the module docstring. ``use_corrector``: ``None`` (the base's: on for ``default``) or a bool; the search,
    the check and the schedule all run that way. ``objective``: ``None`` (``paired`` for a deterministic base
    without guidance unless the noise probe calls the model noisy, else ``pixel-fd``), ``paired``, ``pixel-fd``,
    ``sw`` or ``fd``
    (:mod:`skipstep.lab.tune_objectives`); ``reference``: the distribution objectives' reference set, ``ode`` or
    ``ancestral`` (``None``: ``ancestral`` for a stochastic base, whose samples converge to it, and under a
    guidance scale other than 0 and 1, whose ODE ends elsewhere; ``ode`` for a deterministic base without it; an
    ODE reference made a stochastic base's schedule chase a poor ODE on two zoo models, docs/results.md);
    ``min_gap``: the gap rule of :class:`~skipstep.lab.tune_search.GapRule`; ``reference_steps``: steps of the
    converged solution (default ``min(200, T)``). ``guidance_scale``: a class-conditional model is tuned at
    that classifier-free guidance scale (default 1), sample ``i`` asking for label ``real_labels[i mod K]``; the
    scale is recorded in the schedule. ``eval_reference_seed`` (distribution objectives): score the check against
    a second reference set of that seed and record the floor (the two reference sets' distance)."""
    log = log or (lambda msg: None)
    t_begin = time.perf_counter()
    if isinstance(loaded, str):
        loaded = load_model(loaded, device=device)
    loaded = copy.copy(loaded.at_guidance(guidance_scale))  # apply_clip_mode rebinds scheduler_config on the copy
    clip_description = apply_clip_mode(loaded, clip)
    flow = loaded.regime == "flow"
    base = resolve_base(base, solver_order, variance_type, eta, use_corrector, flow=flow)
    T = loaded.num_train_timesteps
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= T:
        raise ValueError(f"--nfe must be an integer in [1, {T}], got {nfe!r}")
    path = tune_grid(loaded)  # the VP chain, or the flow model's grid of model times (FlowGrid)
    plain = model_plain_spacings(loaded, path, nfe)
    eta_for = base_eta_rule(base, path, nfe)
    base_eta = eta_for(default_rule_grid(plain))  # the base's eta where its own grid puts the steps
    deterministic = all(e == 0 for e in base_eta[:-1])
    base_text = f"base {base.name} (eta {base.eta})"
    guided = mixes_scores(loaded.guidance_scale)
    objective_given, num_samples_given, num_reference_given = objective is not None, num_samples, num_reference
    objective = check_objective(objective, deterministic, loaded.feature_fn is not None, base_text, guided)
    paired = objective == "paired"
    # the default objective of a deterministic base is paired unless the noise probe finds the model wants noise
    probe_wanted = paired and not objective_given and search_eta and reference is None
    if paired:
        search_eta = False  # eta > 0 would make the sampler stochastic: the paired distance would be meaningless
    if reference is None:
        reference = default_reference(deterministic, guided)
    if reference not in REFERENCE_KINDS:
        raise ValueError(f"--reference must be one of {', '.join(REFERENCE_KINDS)}, got {reference!r}")
    reference_steps = min(DEFAULT_REFERENCE_STEPS, T) if reference_steps is None else reference_steps
    low = min(2 * nfe, T)
    if isinstance(reference_steps, bool) or not isinstance(reference_steps, int) or not low <= reference_steps <= T:
        raise ValueError(f"--reference-steps must be an integer in [{low}, {T}] (at least twice --nfe, at most T), "
                         f"got {reference_steps!r}")
    num_samples = int(num_samples or DEFAULT_NUM_SAMPLES[objective])
    if num_samples < 4:
        raise ValueError(f"--num-samples must be >= 4, got {num_samples}")
    if int(batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    if num_reference is not None and int(num_reference) < 4:
        raise ValueError(f"--num-reference must be >= 4 (the reference set's size), got {num_reference}")
    num_reference = int(num_reference or num_samples)
    reference_seed = REFERENCE_SEED if reference_seed is None else int(reference_seed)
    if eval_reference_seed is not None and paired:
        raise ValueError("--eval-reference-seed applies to the distribution objectives (pixel-fd, sw, fd); the "
                         "paired objective scores each evaluation seed against its own converged solution")
    reserved = set() if paired and not probe_wanted else ({reference_seed} | (
        {int(eval_reference_seed)} if eval_reference_seed is not None else set()))
    fit_seeds, val_seeds, eval_seeds = _check_seeds(fit_seeds, val_seeds, eval_seeds, reserved)
    if not budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be > 0, got {budget_minutes}")
    gap_rule = GapRule(path, nfe, min_gap)
    rows = check_rows(plain, plain[next(iter(plain))], base_eta, eta_for)  # the check's size (+1 if eta differs)
    n_rows = len(rows) + (1 if search_eta else 0)
    # -- budgets: refuse before any work ------------------------------------------------------------------------
    seeds = (fit_seeds, val_seeds, eval_seeds)
    # the search keeps two validations in reserve (tune_search.Search)
    batches, cost, reserve, check_calls = _call_counts(nfe, num_samples, batch_size, seeds, n_rows)
    if budget_nfe is not None and budget_nfe < cost + reserve:
        raise ValueError(f"--budget-nfe {budget_nfe} cannot pay for one candidate: it needs at least "
                         f"{cost + reserve} NFE (a candidate costs {cost}: nfe {nfe} x {batches} batches x "
                         f"{len(fit_seeds)} fit seed(s); plus {reserve} kept for two validations on "
                         f"{len(val_seeds)} validation seed(s))")
    per_call = _time_one_call(loaded, min(batch_size, num_samples), device)
    if paired:
        todo = [s for s in fit_seeds + val_seeds + eval_seeds
                if not ode_cached(loaded, s, num_samples, reference_steps, batch_size, cache_dir)]
        reference_calls = len(todo) * reference_steps * batches
    else:
        ref_seeds = [reference_seed] + ([int(eval_reference_seed)] if eval_reference_seed is not None else [])
        ref_batches = math.ceil(num_reference / batch_size)
        if reference == "ode":
            todo = [s for s in ref_seeds if not ode_cached(loaded, s, num_reference, reference_steps, batch_size,
                                                           cache_dir)]
            reference_calls = len(todo) * reference_steps * ref_batches
        else:
            todo = [s for s in ref_seeds if not _ancestral_cached(loaded, num_reference, s, batch_size, cache_dir)]
            reference_calls = len(todo) * T * ref_batches
    if probe_wanted:
        probe_n = int(num_samples_given or DEFAULT_NUM_SAMPLES["pixel-fd"])
        probe_ref_n = int(num_reference_given or probe_n)
        if not _ancestral_cached(loaded, probe_ref_n, reference_seed, batch_size, cache_dir):
            reference_calls += T * math.ceil(probe_ref_n / batch_size)
        reference_calls += probe_calls(nfe, probe_n, batch_size, len(fit_seeds) + len(val_seeds))
    fixed_seconds = (reference_calls + check_calls) * per_call
    needed = fixed_seconds + (cost + reserve) * per_call
    if probe_wanted:  # a noisy verdict tunes with the probe's sample count and one more row in the check
        noisy_calls = sum(_call_counts(nfe, probe_n, batch_size, seeds, len(rows) + 1)[1:])
        needed = max(needed, (reference_calls + noisy_calls) * per_call)
    if budget_minutes * 60 < needed:
        raise ValueError(f"--budget-minutes {budget_minutes:g} cannot pay for one candidate: one model call took "
                         f"{per_call:.3g} s, so the converged samples not yet cached ({reference_calls} calls), the "
                         f"final check ({check_calls} calls) and one candidate with its validation reserve "
                         f"({cost + reserve} calls) need about {needed / 60:.3g} min")
    # -- converged samples, objective, common random numbers ----------------------------------------------------
    t_ref = time.perf_counter()
    ref_info: dict = {}
    eval_objective, floor, probe = None, None, None
    if probe_wanted:
        probe_set = reference_set(loaded, "ancestral", probe_ref_n, reference_seed, reference_steps, batch_size,
                                  device, cache_dir, progress, log)
        probe_objective = DistributionObjective("pixel-fd", loaded, probe_set[0])
        probe = noise_probe(loaded, default_rule_grid(plain), base, probe_objective, fit_seeds + val_seeds, probe_n,
                            batch_size, device, log)
        if probe["noisy"]:  # tuned as with --objective pixel-fd --reference ancestral
            objective, paired, search_eta, reference = "pixel-fd", False, True, "ancestral"
            num_samples, num_reference = probe_n, probe_ref_n
            batches, cost, reserve, check_calls = _call_counts(nfe, num_samples, batch_size, seeds, len(rows) + 1)
    if paired:
        targets = {s: ode_solution(loaded, s, num_samples, reference_steps, batch_size, device, cache_dir, log)[0]
                   for s in fit_seeds + val_seeds + eval_seeds}
        fit_objective = eval_objective = PairedObjective(targets)
        ref_info = {"source": f"{reference_steps}-step deterministic order-2 solution from each seed's own x_T",
                    "steps": reference_steps, "cache": str(Path(cache_dir or default_cache_root()) / "tune-references")}
    else:
        if probe is not None:  # a noisy verdict: the probe's reference set and objective are this run's
            (ref, meta), fit_objective = probe_set, probe_objective
        else:
            ref, meta = reference_set(loaded, reference, num_reference, reference_seed, reference_steps, batch_size,
                                      device, cache_dir, progress, log)
            fit_objective = DistributionObjective(objective, loaded, ref)
        eval_objective = fit_objective
        ref_info = {k: meta.get(k) for k in ("source", "num_samples", "seed", "cache")}
        if eval_reference_seed is not None:
            ref2, meta2 = reference_set(loaded, reference, num_reference, int(eval_reference_seed), reference_steps,
                                        batch_size, device, cache_dir, progress, log)
            eval_objective = DistributionObjective(objective, loaded, ref2)
            floor = eval_objective(ref)  # two independent sets of the reference distribution
    reference_seconds = time.perf_counter() - t_ref
    noises = [CommonNoise(s, num_samples, loaded.sample_shape) for s in fit_seeds]
    val_noises = [CommonNoise(s, num_samples, loaded.sample_shape) for s in val_seeds]
    eval_noises = [CommonNoise(s, num_samples, loaded.sample_shape) for s in eval_seeds]
    search_seconds_budget = budget_minutes * 60 - (time.perf_counter() - t_begin) - check_calls * per_call
    search = Search(loaded, base, fit_objective, noises, batch_size, device, budget_nfe, search_seconds_budget,
                    cost * per_call, log, val_noises, gap_rule, objective)
    # -- stage 1: the plain spacings ----------------------------------------------------------------------------
    stages: list[dict] = []
    start_values: dict[str, float] = {}
    log(f"stage 1: the library's {len(plain)} plain spacings with the base eta ({base.name}, order "
        f"{base.solver_order}, corrector {'on' if base.use_corrector else 'off'}); objective {objective}")
    stopped = False
    try:
        for name, ts in plain.items():
            start_values[name] = search(ts, eta_for(ts), label=name, check_gap=False)
    except BudgetExhausted:
        stopped = True
    if not start_values:
        raise ValueError(f"--budget-minutes {budget_minutes:g} / --budget-nfe {budget_nfe}: the search could not "
                         f"evaluate a single candidate (stopped by the {search.stopped_by}); raise the budget")
    chosen_start = min(start_values, key=start_values.get)
    accepted = {"ts": list(plain[chosen_start]), "eta": eta_for(plain[chosen_start]), "f": start_values[chosen_start],
                "from": chosen_start}
    stages.append({"stage": "plain spacings", "candidates": len(search.memo), "best": accepted["f"],
                   "note": f"stopped by the {search.stopped_by}" if stopped else f"best: {chosen_start}"})

    def gate(stage: str, result: dict) -> str:
        """Accept a stage's result if it beats the accepted one on the fit seeds and on the validation seeds."""
        nonlocal accepted
        if not result or not is_better(result["f"], accepted["f"]):
            return "no improvement on the fit seeds"
        if val_noises:
            try:
                v_new, v_old = search.validate(result["ts"], result["eta"]), search.validate(accepted["ts"],
                                                                                             accepted["eta"])
            except BudgetExhausted:
                return "not accepted: no budget left to validate it"
            log(f"  validation {objective}: {v_old:.5g} (kept) vs {v_new:.5g} ({stage})")
            if not is_better(v_new, v_old):
                return f"rejected: validation {objective} {v_new:.5g} >= {v_old:.5g} (fit gain did not transfer)"
            accepted = {**result, "from": stage, "val": v_new}
            return f"accepted (validation {objective} {v_old:.5g} -> {v_new:.5g})"
        accepted = {**result, "from": stage}
        return "accepted"

    later_stages = (("smooth family", SMOOTH_STAGE_SHARE), ("coordinate", None))
    for stage, share in ((("eta levels", None),) if search_eta else ()) + later_stages:
        if stopped:
            break
        before, holder = len(search.memo), {}
        search.limit_stage(share)
        try:
            if stage == "eta levels":
                # the ramp search moves eta in steps from the base's; a model whose ODE is poor wants far more
                log(f"stage 1b: the best plain spacing ({accepted['from']}) at constant eta "
                    + ", ".join(f"{e:g}" for e in ETA_LEVELS))
                eta_level_stage(search, accepted["ts"], accepted["eta"], nfe, holder)
            elif stage == "smooth family":
                log("stage 2: smooth family (kappa, rho, t_start, t_end" + (", eta ramp)" if search_eta else ")"))
                start_eta = accepted["eta"] if accepted["from"] == "eta levels" else base_eta
                smooth_stage(search, path, nfe, nearest_family_member(path, accepted["ts"]),
                             (start_eta[0], start_eta[-2 if nfe > 1 else 0]), search_eta, eta_for, holder)
            else:
                log("stage 3: coordinate moves of single timesteps" + (" and etas" if search_eta else "")
                    + f" (from the {accepted['from']} result)")
                coordinate_stage(search, path, accepted["ts"], accepted["eta"], search_eta, holder, eta_for)
            note = "converged"
        except StageLimit:
            note = f"used its {share:.0%} share of the budget"
        except BudgetExhausted:
            note, stopped = f"stopped by the {search.stopped_by}", True
        search.limit_stage(None)
        decision = gate(stage, holder)
        log(f"  {stage}: {decision}")
        stages.append({"stage": stage, "candidates": len(search.memo) - before, "best": holder.get("f"),
                       "note": note, "decision": decision})
    search_seconds = search.elapsed()
    value, ts, eta_best = accepted["f"], accepted["ts"], accepted["eta"]
    # -- the final check ----------------------------------------------------------------------------------------
    t_check = time.perf_counter()
    log(f"final check: the tuned schedule and {len(plain)} plain spacings on {seeds_text('eval seeds', eval_seeds)}")
    check = final_check(loaded, check_rows(plain, ts, eta_best, eta_for), base, eval_noises, eval_objective,
                        objective, batch_size, device, grid=path)
    check["reference"] = ref_info
    check["floor"] = floor
    check_seconds = time.perf_counter() - t_check
    log(decision_line(check))
    fit_rows = [{"name": name, "seeds": seeds_text("fit", fit_seeds), "timesteps": schedule_timesteps(path, t_s),
                 "eta": [round(x, 4) for x in e], "mean": v, "std": None, "plain": name != "tuned"}
                for name, t_s, e, v in (("tuned", ts, eta_best, value),
                                        (chosen_start, plain[chosen_start], eta_for(plain[chosen_start]),
                                         start_values[chosen_start]))]
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
                 "randn tensor per (seed, i); class-conditional sample i asks for real_labels[i mod K]",
        "reference": ref_info,
        "objective": {
            "name": objective, "eta_searched": bool(search_eta), "fit_seeds": fit_seeds, "noise_probe": probe,
            "starts": {k: round(v, 8) for k, v in start_values.items()},
            "best_start": {"name": chosen_start, "value": start_values[chosen_start]},
            "tuned": value, "validation_seeds": val_seeds,
            "validation": {"tuned": search.val_memo.get((tuple(ts), tuple(round(e, 6) for e in eta_best[:-1])))},
            "result_from": accepted["from"],
            "relative_change_vs_best_start": value / start_values[chosen_start] - 1.0
            if start_values[chosen_start] else None,
        },
        "gap_rule": {"min_gap": gap_rule.min_gap, "min_log_snr_gap": gap_rule.delta,
                     "tuned_log_snr_gaps": [round(g, 4) for g in gap_rule.gaps(ts)]},
        "search": {"stages": stages, "candidates_evaluated": len(search.memo), "validations": len(search.val_memo),
                   "rejected_by_gap_rule": search.rejected_gaps, "improvements": search.improvements[-40:]},
        "final_check": check,
        "fit_rows": fit_rows,
        "budget": {"budget_nfe": budget_nfe, "budget_minutes": float(budget_minutes),
                   "nfe_used": search.counter.calls, "cost_per_candidate_nfe": cost,
                   "search_seconds_budget": round(search_seconds_budget, 2), "seconds_used": round(search_seconds, 2),
                   "stopped_by": search.stopped_by, "seconds_per_model_call": round(per_call, 5)},
        "timing": {"reference_seconds": round(reference_seconds, 2), "search_seconds": round(search_seconds, 2),
                   "check_seconds": round(check_seconds, 2),
                   "sampling_seconds": round(time.perf_counter() - t_begin, 2)},
    }
    return TunedSchedule(timesteps=schedule_timesteps(path, ts), eta=eta_best, nfe=nfe, num_train_timesteps=T,
                         path="flow" if flow else "vp", solver_order=base.solver_order,
                         variance_type=base.variance_type, model_fingerprint=loaded.fingerprint, metric=objective,
                         fit_seeds=fit_seeds, guidance_scale=loaded.guidance_scale,
                         use_corrector=base.use_corrector, provenance=provenance,
                         extrapolation_gain=resolve_extrapolation_gain(base.extrapolation_gain, nfe, flow=flow,
                                                                       guidance_scale=loaded.guidance_scale))


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

def _budget_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(f"expected a number of minutes > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise OptionValueError(f"expected a number of minutes > 0, got {text!r}")
    return value

def _min_gap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise OptionValueError(f"expected a number in [0, 1], got {text!r}")
    return value

def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="tune the timesteps (and per-step eta) of a skipstep sampler for one model and NFE",
        description="Search the timesteps (and, for stochastic bases, the per-step eta) of a skipstep sampler "
                    "for one model and NFE on --fit-seeds, then check the result on held-out --eval-seeds "
                    "against every plain spacing of the library; write the schedule JSON only if it beats the "
                    f"best of them (else exit {NO_IMPROVEMENT_EXIT}, writing nothing). Objective: the paired "
                    "distance to the model's own converged solution from the same x_T (deterministic bases, unless a "
                    "probe finds eta 1 10% closer to ancestral samples than eta 0) or the pixel Fréchet distance "
                    "to converged samples (stochastic bases, guidance); no feature network. "
                    "--budget-minutes bounds everything the command samples. Use the file with `skipstep bench "
                    "--samplers tuned:FILE.json`, skipstep.sample(..., tuned_schedule=FILE) or "
                    "SkippedStepScheduler(tuned_schedule=...).",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="gmm, digits, a zoo model, or a path to a local diffusers "
                   "directory (required)")
    add_model_args(p)
    p.add_argument("--nfe", type=positive_int, required=True,
                   help="network evaluations (= steps) of the schedule (required)")
    p.add_argument("--base", default="skipstep-ddim",
                   help="the skipstep sampler to tune (its eta is the start): " + ", ".join(base_names()))
    p.add_argument("--solver-order", type=int, default=None, choices=(1, 2, 3),
                   help="multistep order (default: the base sampler's own order)")
    p.add_argument("--variance-type", default=None, choices=("small", "large"),
                   help="noise variance (default: the base sampler's, small for every shipped base)")
    p.add_argument("--corrector", default=None, choices=("on", "off"),
                   help="correct each step once the next evaluation is in (no extra NFE); the schedule is tuned and "
                        "run that way (default: the base sampler's: on for default, off for the skipstep-* members)")
    p.add_argument("--eta", default=None,
                   help="override the base's starting eta: a number or a schedule string (default: the base's eta)")
    p.add_argument("--no-eta-search", action="store_true", help="keep the base eta; tune the timesteps only "
                   "(always so with --objective paired)")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="paired (default for a deterministic base, unless the noise probe finds the model wants "
                        "noise), pixel-fd (default for a stochastic base, under a --guidance-scale other than 0 "
                        "and 1, and after a noisy probe verdict), sw, or fd (feature network; the earlier "
                        "objective); see docs/tuning.md")
    p.add_argument("--reference", default=None, choices=REFERENCE_KINDS,
                   help="the distribution objectives' reference set: ode (converged deterministic samples; the "
                        "default for a deterministic base) or ancestral (the bench's 1000-step set, 5x the cost; "
                        "the default for a stochastic base and under guidance)")
    p.add_argument("--reference-steps", type=positive_int, default=None,
                   help=f"steps of the converged deterministic (order-2) solution (default: {DEFAULT_REFERENCE_STEPS}, "
                        "at most the chain's T)")
    p.add_argument("--num-samples", type=positive_int, default=None,
                   help="samples per seed (default: 256 for paired, 500 for pixel-fd and sw, 1000 for fd)")
    p.add_argument("--fit-seeds", type=seed_list, default=list(DEFAULT_FIT_SEEDS), help="seeds the search fits")
    p.add_argument("--val-seeds", type=_seed_list_or_none, default=list(DEFAULT_VAL_SEEDS),
                   help="seeds a search stage's result must also improve on ('none' disables the gate)")
    p.add_argument("--eval-seeds", type=seed_list, default=list(DEFAULT_EVAL_SEEDS),
                   help="held-out seeds of the final check (disjoint from the fit and validation seeds)")
    p.add_argument("--budget-minutes", type=_budget_minutes, default=DEFAULT_BUDGET_MINUTES,
                   help="wall time of everything the command samples: converged samples not yet cached, the search, "
                        "the final check")
    p.add_argument("--budget-nfe", type=positive_int, default=None,
                   help="also cap the search's batched model calls (default: no cap; the time budget decides)")
    p.add_argument("--min-gap", type=_min_gap, default=DEFAULT_MIN_GAP,
                   help="smallest log-SNR gap between consecutive searched timesteps, as a share of the uniform "
                        "log-SNR step")
    p.add_argument("--num-reference", type=positive_int, default=None,
                   help="reference-set size of the distribution objectives (default: --num-samples)")
    p.add_argument("--eval-reference-seed", type=check_seed, default=None,
                   help="distribution objectives: score the final check against a second reference set drawn with "
                        "this seed and report the two sets' distance as the floor")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where converged samples are cached (default ${CACHE_DIR_ENV} or ~/.cache/skipstep)")
    p.add_argument("--out", type=Path, required=True, help="schedule JSON file to write (required)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_common_run_args(p)  # --device, --batch-size, --no-progress, --clip, --threads (as bench)
    p.set_defaults(func=main_tune)

def _check_outputs(args: argparse.Namespace) -> None:
    """Everything tune will write, checked before any work: --out and the cache."""
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
        use_corrector=None if args.corrector is None else args.corrector == "on",
        objective=args.objective, reference=args.reference, reference_steps=args.reference_steps,
        num_samples=args.num_samples, fit_seeds=args.fit_seeds, val_seeds=args.val_seeds, eval_seeds=args.eval_seeds,
        budget_nfe=args.budget_nfe, budget_minutes=args.budget_minutes, min_gap=args.min_gap,
        num_reference=args.num_reference, eval_reference_seed=args.eval_reference_seed, cache_dir=args.cache_dir,
        batch_size=args.batch_size, device=device, search_eta=not args.no_eta_search, clip=args.clip,
        progress=verbose, log=print if verbose else None, guidance_scale=args.guidance_scale)
    total = time.perf_counter() - t0
    prov = schedule.provenance
    prov["timing"]["total_seconds"] = round(total, 2)
    check = prov["final_check"]
    # printed before it is written: a failing write loses nothing
    guidance = f", guidance scale {schedule.guidance_scale:g}" if schedule.guidance_scale is not None else ""
    print(f"\n{loaded.name} (fingerprint {loaded.fingerprint}), NFE {schedule.nfe}, base {prov['base']['name']} "
          f"(eta {prov['base']['eta']}, solver_order {schedule.solver_order}, variance {schedule.variance_type}, "
          f"corrector {'on' if schedule.use_corrector else 'off'})"
          f"{guidance}; objective {schedule.metric}")
    print(f"tuned timesteps: {schedule.timesteps}")
    print(f"tuned eta:       {[round(e, 4) for e in schedule.eta]}")
    print()
    print(format_check(check, prov["fit_rows"]))
    b, tm = prov["budget"], prov["timing"]
    print(f"\nsearch: {prov['search']['candidates_evaluated']} candidates, {b['nfe_used']} NFE, "
          f"{b['seconds_used']:.0f}/{b['search_seconds_budget']:.0f} s (stopped by {b['stopped_by']}); converged "
          f"samples {tm['reference_seconds']:.0f} s; final check {tm['check_seconds']:.0f} s; total {total:.0f} s "
          f"(budget {60 * b['budget_minutes']:.0f} s)")
    print(decision_line(check))
    if not check["tuned_wins"]:
        return NO_IMPROVEMENT_EXIT
    try:
        schedule.save(args.out, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        print(json.dumps(schedule.to_dict(), indent=2))
        raise RunDirectoryError(f"--out {args.out} could not be written ({getattr(err, 'strerror', None) or err}); "
                                "the schedule is printed above as JSON: save it to a file by hand") from None
    print(f"wrote {args.out}")
    return 0


__all__ = ["DEFAULT_BUDGET_MINUTES", "NO_IMPROVEMENT_EXIT", "add_subcommand", "main_tune", "tune_schedule"]
