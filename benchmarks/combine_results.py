"""Combine the records of several ``skipstep bench`` directories into per-model Markdown tables.

``python benchmarks/combine_results.py RUN_DIR [RUN_DIR ...] [--metrics fd,fd_heldout] [--ours default] [--standing]``

Per model (and guidance scale) and metric: one row per sampler, one column per NFE, ``mean ± std`` over the seeds
the cells have (the count in brackets where a row has fewer seeds than the most complete row), the best value of
each column in bold, and a last row ``ours / best peer`` -- the ratio of the first ``--ours`` sampler's mean to the
best other sampler's mean in that column (< 1: ours ahead). Records are read from ``RUN_DIR/results.json``.
``--standing`` prints instead, over all the runs' models, the first ``--ours`` sampler's ratio to the best peer on
each metric and the peers better on every metric at once (:mod:`skipstep.lab.standing`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

from skipstep.lab.standing import render_standings, standings, summary_line


def load_records(dirs: list[Path]) -> list[dict]:
    out = []
    for d in dirs:
        file = d / "results.json"
        if not file.is_file():
            raise SystemExit(f"combine_results: {file} does not exist (run the bench first)")
        out += json.loads(file.read_text())
    return out


def _fmt(values: list[float], seeds_expected: int) -> str:
    if not values:
        return "-"
    if any(not math.isfinite(v) for v in values):
        return "non-finite"
    text = f"{mean(values):.3g}" + (f" ± {stdev(values):.2g}" if len(values) > 1 else "")
    return text + (f" ({len(values)})" if len(values) < seeds_expected else "")


def tables(records: list[dict], metrics: list[str], ours: list[str]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r.get("guidance_scale"))].append(r)
    lines = []
    for (model, w), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        nfes = sorted({int(r["nfe"]) for r in recs})
        samplers = list(dict.fromkeys([s for s in ours if any(r["sampler"] == s for r in recs)]
                                      + sorted({r["sampler"] for r in recs})))
        seeds = sorted({r["seed"] for r in recs})
        title = f"### {model}" + (f", guidance scale {w:g}" if w is not None else "")
        lines += [title, "", f"seeds {', '.join(map(str, seeds))}; {recs[0]['num_samples']} samples per cell", ""]
        for metric in metrics:
            cell: dict[tuple[str, int], list[float]] = defaultdict(list)
            for r in recs:
                if metric in r["metrics"]:
                    cell[(r["sampler"], int(r["nfe"]))].append(float(r["metrics"][metric]))
            if not cell:
                continue
            higher_better = metric in ("class_match", "precision", "recall")
            pick = max if higher_better else min
            best = {n: pick((mean(v) for (s, m), v in cell.items() if m == n and v), default=None) for n in nfes}
            most = max(len(v) for v in cell.values())
            lines += [f"**{metric}** ({'higher' if higher_better else 'lower'} is better)", "",
                      "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|" + "---:|" * len(nfes)]
            for s in samplers:
                row = []
                for n in nfes:
                    v = cell.get((s, n), [])
                    text = _fmt(v, most)
                    row.append(f"**{text}**" if v and best[n] is not None and mean(v) == best[n] else text)
                if any(x != "-" for x in row):
                    lines.append(f"| {s} | " + " | ".join(row) + " |")
            main = next((s for s in ours if any(k[0] == s for k in cell)), None)
            if main is not None:
                ratios = []
                for n in nfes:
                    mine = cell.get((main, n))
                    others = [mean(v) for (s, m), v in cell.items() if m == n and s not in ours and v]
                    if not mine or not others:
                        ratios.append("-")
                        continue
                    other = pick(others)
                    r = mean(mine) / other if not higher_better else other / mean(mine)
                    ratios.append(f"{r:.2f}")
                lines.append(f"| *{main} / best peer* | " + " | ".join(ratios) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metrics", default="fd,fd_heldout")
    p.add_argument("--ours", default="default", help="comma list of our samplers (rows first; the first is compared)")
    p.add_argument("--standing", action="store_true",
                   help="the ratio to the best peer per metric and the peers better on every metric at once")
    args = p.parse_args(argv)
    metrics, ours = args.metrics.split(","), args.ours.split(",")
    records = load_records(args.runs)
    if args.standing:
        # the other --ours samplers are not peers
        rows = standings([r for r in records if r["sampler"] not in ours[1:]], ours[0], metrics)
        print(render_standings(rows, metrics))
        print("\n" + summary_line(rows))
        return 0
    print(tables(records, metrics, ours))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
