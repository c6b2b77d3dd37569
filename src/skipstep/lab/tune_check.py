"""The final check of ``skipstep tune``: the tuned schedule against every plain spacing on held-out seeds.

After the search, the tuned schedule and every plain spacing of the library (:func:`~skipstep.lab.tune_search.
plain_spacings`, all with the base sampler's eta, order and variance) are sampled from the common random numbers
of the evaluation seeds -- seeds neither the search (fit seeds) nor its validation gate (validation seeds) has
seen -- and scored by the search's objective (for ``paired``: against each evaluation seed's own converged
solution). With ``m_S`` the mean of schedule ``S`` over the evaluation seeds, the tuned schedule **wins** when

    m_tuned < (1 - 1e-4) * min_P m_P        (P over the plain spacings),

and only then does ``skipstep tune`` write its file; otherwise it names the winning spacing and the margin
``m_tuned / m_best - 1``, writes nothing and exits with :data:`NO_IMPROVEMENT_EXIT`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .bench_report import format_value
from .tune_objectives import objective_text
from .tune_grids import schedule_timesteps
from .tune_search import MIN_RELATIVE_IMPROVEMENT, BaseSampler, CommonNoise, draw_samples

#: Exit status of ``skipstep tune`` when a plain spacing beats the tuned schedule on the evaluation seeds (nothing
#: is written). 0: written; 2: a user error.
NO_IMPROVEMENT_EXIT = 4


def seeds_text(kind: str, seeds: Sequence[int]) -> str:
    return f"{kind} {','.join(str(s) for s in seeds)}"


def check_rows(plain: dict[str, list[int]], tuned_ts: Sequence[int], tuned_eta: Sequence[float],
               base_eta) -> dict[str, tuple[list[int], list[float]]]:
    """The schedules of the check: ``tuned``, the tuned timesteps with the base eta (when the eta differs), and
    every plain spacing with the base eta. ``base_eta``: a per-step list, or a function of the timesteps (an eta
    that depends on where the steps are, :func:`~skipstep.lab.tune_search.base_eta_rule`)."""
    eta_for = base_eta if callable(base_eta) else (lambda ts: list(base_eta))
    rows = {"tuned": (list(tuned_ts), list(tuned_eta))}
    tuned_base = eta_for(tuned_ts)
    if [round(e, 6) for e in tuned_eta[:-1]] != [round(e, 6) for e in tuned_base[:-1]]:
        rows["tuned timesteps, base eta"] = (list(tuned_ts), list(tuned_base))
    for name, ts in plain.items():
        rows[name] = (list(ts), eta_for(ts))
    return rows


def final_check(loaded, rows: dict[str, tuple[list[int], list[float]]], base: BaseSampler,
                noises: Sequence[CommonNoise], objective, metric: str, batch_size: int = 500,
                device: str = "cpu", counter=None, grid=None) -> dict[str, Any]:
    """Score every row on the evaluation seeds' ``noises`` and decide (module docstring); the rows' grid indices
    are recorded as the schedule's timesteps of ``grid`` (:func:`~skipstep.lab.tune_search.schedule_timesteps`;
    ``None``: as they are). Returns ``{"metric",
    "seeds", "num_samples", "rows": [{"name", "seeds", "timesteps", "eta", "values", "mean", "std", "plain"}],
    "best_plain", "tuned_wins", "relative_change"}``."""
    seeds = [nz.seed for nz in noises]
    out_rows = []
    for name, (ts, eta) in rows.items():
        values = [float(objective(draw_samples(loaded, counter, ts, eta, base, nz, batch_size, device), nz))
                  for nz in noises]
        out_rows.append({"name": name, "seeds": seeds_text("eval", seeds), "timesteps": schedule_timesteps(grid, ts),
                         "eta": [round(float(e), 4) for e in eta], "values": values, "mean": float(np.mean(values)),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                         "plain": not name.startswith("tuned")})
    tuned = out_rows[0]
    plain = [r for r in out_rows if r["plain"]]
    best = min(plain, key=lambda r: r["mean"])
    margin = MIN_RELATIVE_IMPROVEMENT * abs(best["mean"])
    wins = bool(np.isfinite(tuned["mean"]) and tuned["mean"] < best["mean"] - margin)
    change = tuned["mean"] / best["mean"] - 1.0 if best["mean"] > 0 else None
    return {"metric": metric, "seeds": seeds, "num_samples": noises[0].num_samples if noises else 0, "rows": out_rows,
            "best_plain": {"name": best["name"], "mean": best["mean"]}, "tuned": tuned["mean"], "tuned_wins": wins,
            "relative_change": change}


def decision_line(table: dict[str, Any]) -> str:
    """One line: the tuned schedule's gain over the best plain spacing, or which spacing won and by how much."""
    best, change = table["best_plain"], table.get("relative_change")
    margin = f" ({change:+.1%})" if change is not None else ""
    seeds = seeds_text("eval seeds", table["seeds"])
    if table["tuned_wins"]:
        return (f"tuned {table['metric']} {table['tuned']:.4g} beats the best plain spacing ({best['name']}, "
                f"{best['mean']:.4g}){margin} on {seeds}")
    return (f"no improvement: the plain spacing {best['name']} ({table['metric']} {best['mean']:.4g}) is at least as "
            f"good as the tuned schedule ({table['tuned']:.4g}){margin} on {seeds}; nothing written (use that "
            f"spacing)")


def format_check(table: dict[str, Any], extra_rows: Sequence[dict] = ()) -> str:
    """The check as a Markdown table; every row names the seeds it was scored on (``extra_rows``: the same
    fields, e.g. the fit seeds' values of the search)."""
    lines = [f"{objective_text(table['metric'])} ({table['metric']}), mean ± std over the seeds of each row "
             f"({table['num_samples']} samples per seed; lower is better)", "",
             f"| schedule | seeds | timesteps | eta | {table['metric']} |", "|---|---|---|---|---:|"]
    for r in list(table["rows"]) + list(extra_rows):
        eta = r["eta"][:-1]
        eta_txt = f"{eta[0]:g}" if len(set(eta)) <= 1 and eta else ",".join(f"{e:g}" for e in eta)
        lines.append(f"| {r['name']} | {r['seeds']} | {','.join(str(t) for t in r['timesteps'])} | {eta_txt} | "
                     f"{format_value(r['mean'], r.get('std'))} |")
    ref = table.get("reference")
    if ref:
        size = f", {ref['num_samples']} samples, seed {ref.get('seed')}" if ref.get("num_samples") else ""
        lines += ["", f"Scored against: {ref.get('source')}{size}."]
    if table.get("floor") is not None:
        lines.append(f"Floor (an independent set of the reference distribution, same size, against it): "
                     f"{format_value(table['floor'])}.")
    return "\n".join(lines)


__all__ = ["NO_IMPROVEMENT_EXIT", "check_rows", "decision_line", "final_check", "format_check", "seeds_text"]
