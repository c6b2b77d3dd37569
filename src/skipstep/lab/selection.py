"""Leave-one-model-out selection: choices are made on some models and reported on others.

A *choice* (the default sampler, a constant, a step rule) is picked from a finite list of candidates, each a
registered sampler. Every candidate is benchmarked on every model at a set of NFEs on *selection seeds*; for each
(model, NFE) the candidates' quality ``q`` (a metric of the bench records, lower is better: FD vs the model's own
converged samples by default) is divided by the best candidate's, and a candidate's score over a set of models is
the geometric mean of those ratios over the models, NFEs and metrics ``k`` (one or several, e.g. FD vs the model's
own samples and FD vs real data, so a choice must be good on both):

    score_M(c) = exp( mean_{m in M, n, k} log( q_k(c, m, n) / min_c' q_k(c', m, n) ) ).

Fold ``h`` (one per model) chooses ``c*_h = argmin_c score_{M \\ {h}}(c)`` -- without looking at model ``h`` -- and
reports ``c*_h`` on model ``h``, on *report seeds* that no choice has seen. The shipped default is
``argmin_c score_M(c)`` over all models; the folds show whether that choice depends on which model is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np


@dataclass
class FoldChoice:
    """Fold ``held_out``: the candidate chosen on the other models, its score there, and the runner-up."""

    held_out: str
    chosen: str
    score: float
    runner_up: str | None
    runner_up_score: float | None
    ranking: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Selection:
    candidates: list[str]
    models: list[str]
    nfes: list[int]
    metric: str
    #: quality per (candidate, model, nfe): the mean of the metric over the selection seeds
    quality: dict[tuple[str, str, int], float]
    folds: list[FoldChoice]
    overall: list[tuple[str, float]]

    @property
    def default(self) -> str:
        """The candidate with the best score over all models."""
        return self.overall[0][0]


def mean_quality(records: Iterable[dict], metric: str, seeds: Sequence[int] | None = None
                 ) -> dict[tuple[str, str, int], float]:
    """``{(sampler, model, nfe): mean metric over seeds}``; records without the metric (non-finite samples) count
    as ``inf``."""
    acc: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        if seeds is not None and r["seed"] not in seeds:
            continue
        value = r["metrics"].get(metric, math.inf)
        acc.setdefault((r["sampler"], r["model"], int(r["nfe"])), []).append(float(value))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def scores(quality: dict, candidates: Sequence[str], models: Sequence[str], nfes: Sequence[int]
           ) -> list[tuple[str, float]]:
    """Candidates sorted by ``score_M`` (see the module docstring); a candidate missing a cell scores ``inf``."""
    logs: dict[str, list[float]] = {c: [] for c in candidates}
    for m in models:
        for n in nfes:
            values = {c: quality.get((c, m, n), math.inf) for c in candidates}
            best = min(values.values())
            if not math.isfinite(best) or best <= 0:
                raise ValueError(f"no candidate has a finite, positive quality on model {m!r} at NFE {n}")
            for c, v in values.items():
                logs[c].append(math.log(v / best) if math.isfinite(v) else math.inf)
    out = [(c, math.exp(float(np.mean(v))) if all(map(math.isfinite, v)) else math.inf) for c, v in logs.items()]
    return sorted(out, key=lambda cv: (cv[1], candidates.index(cv[0])))


def select(records: Iterable[dict], candidates: Sequence[str], models: Sequence[str], nfes: Sequence[int],
           metric: str | Sequence[str] = "fd", seeds: Sequence[int] | None = None) -> Selection:
    """The leave-one-model-out folds and the overall choice from bench records of the selection seeds; with
    several metrics each (model, metric) pair is one factor of the score, and a fold leaves out all of a model's."""
    candidates, models, nfes = list(candidates), list(models), [int(n) for n in nfes]
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if len(models) < 2:
        raise ValueError("leave-one-model-out needs at least two models")
    if not candidates:
        raise ValueError("give at least one candidate")
    if not metrics:
        raise ValueError("give at least one metric")
    quality = quality_per_metric(records, metrics, seeds)

    def pairs(ms):
        return factors(ms, metrics)

    folds = []
    for held in models:
        ranking = scores(quality, candidates, pairs([m for m in models if m != held]), nfes)
        runner = ranking[1] if len(ranking) > 1 else (None, None)
        folds.append(FoldChoice(held, ranking[0][0], ranking[0][1], runner[0], runner[1], ranking))
    return Selection(candidates, models, nfes, ", ".join(metrics), quality, folds,
                     scores(quality, candidates, pairs(models), nfes))


def step_count_composite_name(low: str, high: str, threshold: int) -> str:
    return f"below:{int(threshold)}:{low}:{high}"


def step_count_composites(records: Iterable[dict], low: str, highs: Sequence[str], thresholds: Sequence[int]
                          ) -> list[dict]:
    """Records of the step-count-dependent candidates ``below:N:<low>:<high>`` made from the members' own cells:
    ``low``'s cell for NFE < N, ``high``'s from N on, renamed. For members with one evaluation per step (NFE =
    steps, as every candidate of :mod:`skipstep.lab.candidates`) that is exactly what a sampler whose eta is
    ``below:N:<low's eta>:<high's eta>`` (:func:`skipstep.plan.resolve_eta_schedule`) would sample from the same
    noise. The geometric-mean ranking of :func:`select` does not depend on which other candidates are present, so
    composites can be ranked against any set of members."""
    records = list(records)
    out = []
    for threshold in thresholds:
        if isinstance(threshold, bool) or int(threshold) != threshold or threshold < 1:
            raise ValueError(f"thresholds: the step count N must be an integer >= 1, got {threshold!r}")
        for high in highs:
            name = step_count_composite_name(low, high, int(threshold))
            for r in records:
                if r["sampler"] == (low if int(r["nfe"]) < threshold else high):
                    out.append({**r, "sampler": name})
    return out


def _pair(model: str, metric: str, metrics: Sequence[str]) -> str:
    return model if len(metrics) == 1 else f"{model} [{metric}]"


def quality_per_metric(records: Iterable[dict], metrics: Sequence[str], seeds: Sequence[int] | None = None
                       ) -> dict[tuple[str, str, int], float]:
    """:func:`mean_quality` of each metric, the model axis keyed by (model, metric) so :func:`scores` sees one
    factor per pair (:func:`factors` lists them)."""
    records, quality = list(records), {}
    for k in metrics:
        quality.update({(c, _pair(m, k, metrics), n): v for (c, m, n), v in mean_quality(records, k, seeds).items()})
    return quality


def factors(models: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """The model axis of :func:`quality_per_metric` for ``models``: one entry per (model, metric)."""
    return [_pair(m, k, metrics) for m in models for k in metrics]


def render_selection(sel: Selection, top: int = 5) -> str:
    """The folds as Markdown: per held-out model the choice, its score on the other models, the runner-up."""
    lines = [f"Selection metric: `{sel.metric}` (mean over the selection seeds); score = geometric mean over the "
             f"other models and NFE {sel.nfes} of quality / best candidate's quality (1 = best everywhere).", "",
             "| held-out model | chosen on the others | score | runner-up | score |", "|---|---|---:|---|---:|"]
    for f in sel.folds:
        runner = "-" if f.runner_up is None else f"`{f.runner_up}`"
        rscore = "-" if f.runner_up_score is None else f"{f.runner_up_score:.3f}"
        lines.append(f"| {f.held_out} | `{f.chosen}` | {f.score:.3f} | {runner} | {rscore} |")
    lines += ["", "All models: " + ", ".join(f"`{c}` {s:.3f}" for c, s in sel.overall[:top]), ""]
    return "\n".join(lines)


__all__ = ["FoldChoice", "Selection", "mean_quality", "render_selection", "scores", "select", "step_count_composite_name",
           "step_count_composites"]
