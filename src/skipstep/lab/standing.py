"""Where one sampler stands against the peers, per model and NFE, on several metrics at once.

The report's ratio rows compare a sampler with the best peer *per metric*, and the best peer of one metric is often
not the best of another (FD against the model's own converged samples and FD against real data disagree about
diversity, see docs/results.md). A loss on one metric may then be the price of a lead on the other. A peer
*dominates* the sampler in a cell (model, guidance scale, NFE) when its mean over the seeds is lower on **every**
metric -- no trade-off explains that loss. For seed-paired records (same seeds, same initial noise for every sampler,
as the bench draws them) the dominating peer's seed count says how often it is ahead on every metric for the same
noise:

    dominates(p, c) = all_k  mean_s q_k(p, s) < mean_s q_k(c, s),
    seeds_ahead(p, c) = #{ s : all_k q_k(p, s) < q_k(c, s) },

``q_k`` a metric where lower is better (``fd``, ``fd_heldout``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass
class Dominance:
    """A peer better than the sampler on every metric: its name, ``ours / peer`` per metric, and how many of the
    shared seeds it is ahead on every metric."""

    peer: str
    ratios: dict[str, float]
    seeds_ahead: int
    seeds: int


@dataclass
class Standing:
    """One cell: the sampler's mean per metric, the best peer and ``ours / best`` per metric, the dominating
    peers, the strongest first (the largest ``min_k ours / peer``: the most ahead on its weakest metric)."""

    model: str
    guidance_scale: float | None
    nfe: int
    ours: dict[str, float]
    best_peer: dict[str, tuple[str, float]]
    dominated_by: list[Dominance]

    def ratio(self, metric: str) -> float:
        return self.ours[metric] / self.best_peer[metric][1]

    @property
    def leads(self) -> bool:
        """At least level with the best peer on every metric (``ours <= best`` on each)."""
        return all(self.ours[k] <= v for k, (_, v) in self.best_peer.items())

    @property
    def behind_everywhere(self) -> bool:
        """Behind the best peer on every metric (the best peers may differ; see ``dominated_by``)."""
        return all(self.ours[k] > v for k, (_, v) in self.best_peer.items())

    @property
    def label(self) -> str:
        return self.model + (f" (w = {self.guidance_scale:g})" if self.guidance_scale is not None else "")


def _metric_values(records: Iterable[dict], metrics: Sequence[str]) -> dict[tuple, dict[str, dict[int, float]]]:
    """``{(model, w, nfe, sampler): {metric: {seed: value}}}``; a missing metric counts as ``inf``."""
    out: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in records:
        key = (r["model"], r.get("guidance_scale"), int(r["nfe"]), r["sampler"])
        cell = out.setdefault(key, {k: {} for k in metrics})
        for k in metrics:
            cell[k][int(r["seed"])] = float(r["metrics"].get(k, math.inf))
    return out


def standings(records: Iterable[dict], ours: str, metrics: Sequence[str] = ("fd", "fd_heldout"),
              peers: Sequence[str] | None = None) -> list[Standing]:
    """The standing of sampler ``ours`` in every cell the records have it in, against ``peers`` (default: every
    other sampler of the cell). Each sampler's seeds are its own; a peer is compared on the seeds both have."""
    metrics = list(metrics)
    if not metrics:
        raise ValueError("give at least one metric")
    values = _metric_values(records, metrics)
    cells = sorted({k[:3] for k in values if k[3] == ours}, key=lambda c: (c[0], c[1] or 0.0, c[2]))
    out = []
    for model, w, nfe in cells:
        mine = values[(model, w, nfe, ours)]
        others = {k[3]: v for k, v in values.items() if k[:3] == (model, w, nfe) and k[3] != ours
                  and (peers is None or k[3] in peers)}
        if not others:
            continue
        mean_ours = {k: float(np.mean(list(mine[k].values()))) for k in metrics}
        means = {p: {k: float(np.mean(list(v[k].values()))) for k in metrics} for p, v in others.items()}
        best = {k: min(((p, m[k]) for p, m in means.items()), key=lambda pm: (pm[1], pm[0])) for k in metrics}
        dominating = []
        for p, m in means.items():
            if all(m[k] < mean_ours[k] for k in metrics):
                shared = sorted(set.intersection(*(set(mine[k]) & set(others[p][k]) for k in metrics)))
                ahead = sum(all(others[p][k][s] < mine[k][s] for k in metrics) for s in shared)
                dominating.append(Dominance(p, {k: mean_ours[k] / m[k] for k in metrics}, ahead, len(shared)))
        dominating.sort(key=lambda d: (-min(d.ratios.values()), d.peer))
        out.append(Standing(model, w, nfe, mean_ours, best, dominating))
    return out


def render_standings(rows: Sequence[Standing], metrics: Sequence[str] = ("fd", "fd_heldout"),
                     max_listed: int = 2) -> str:
    """Two Markdown tables: ``ours / best peer`` per metric (model x NFE, ``a / b`` for the metrics in order) and
    the dominating peers per cell (``-``: none; else ``peer (ratio_1 / ratio_2, k/n seeds)``, the strongest
    first, at most ``max_listed`` of them and ``+ N more``)."""
    metrics = list(metrics)
    labels = list(dict.fromkeys(r.label for r in rows))
    nfes = sorted({r.nfe for r in rows})
    by = {(r.label, r.nfe): r for r in rows}
    head = "| model | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---:|" * len(nfes)
    ratio_lines = [head]
    dom_lines = [head.replace("---:|", "---|")]
    for label in labels:
        ratio_cells, dom_cells = [], []
        for n in nfes:
            r = by.get((label, n))
            if r is None:
                ratio_cells.append("")
                dom_cells.append("")
                continue
            ratio_cells.append(" / ".join(f"{r.ratio(k):.2f}" for k in metrics))
            listed = [f"{d.peer} ({' / '.join(f'{d.ratios[k]:.2f}' for k in metrics)}, {d.seeds_ahead}/{d.seeds})"
                      for d in r.dominated_by[:max_listed]]
            more = len(r.dominated_by) - len(listed)
            dom_cells.append(", ".join(listed) + (f" + {more} more" if more > 0 else "") or "-")
        ratio_lines.append(f"| `{label}` | " + " | ".join(ratio_cells) + " |")
        dom_lines.append(f"| `{label}` | " + " | ".join(dom_cells) + " |")
    return "\n".join(ratio_lines) + "\n\n" + "\n".join(dom_lines)


def count_dominated(rows: Sequence[Standing]) -> tuple[int, int]:
    """(cells with a dominating peer, cells)."""
    return sum(bool(r.dominated_by) for r in rows), len(rows)


def summary_line(rows: Sequence[Standing]) -> str:
    """How many cells the sampler leads on every metric, trades one metric for another, is behind on every metric
    to different peers, or is dominated in (one peer better on every metric)."""
    leads = sum(r.leads for r in rows)
    dominated, total = count_dominated(rows)
    split = sum(r.behind_everywhere and not r.dominated_by for r in rows)
    return (f"{total} cells: ahead of (or level with) the best peer on every metric in {leads}, a trade-off (ahead "
            f"on one metric, behind on another) in {total - leads - dominated - split}, behind on every metric but "
            f"to different peers in {split}, one peer better on every metric at once in {dominated}")
