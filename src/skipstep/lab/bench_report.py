"""Reports of a benchmark directory: ``results.json`` and the Markdown tables (one set per guidance scale of a
class-conditional model), the peer enumeration and the sampler settings; plots and grids are
:mod:`skipstep.lab.bench_plots`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..storage import atomic_write_bytes, atomic_write_json
from .bench_cells import (CELL_KEYS, LOWER_IS_BETTER, METRIC_ORDER, METRIC_TITLES, by_guidance, cell_paths,
                          check_cell_record, format_value, fs_name, group_records, guidance_suffix, load_records, stat)
from .bench_plots import GRID_COUNT, plot_quality, save_grid, to_image_grid, write_grids



# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------

def _time_ratios(records: list[dict], baseline: str = "ddim") -> dict[str, tuple[float, bool] | None]:
    """Per sampler: geometric mean over matched (NFE, seed) cells of seconds / baseline seconds, and whether
    every matched pair was measured in the same run."""
    base = {(r["nfe"], r["seed"]): r for r in records if r["sampler"] == baseline}
    out: dict[str, tuple[float, bool] | None] = {}
    for name in dict.fromkeys(r["sampler"] for r in records):
        logs, same = [], True
        for r in records:
            if r["sampler"] != name:
                continue
            b = base.get((r["nfe"], r["seed"]))
            if b is None or b["seconds"] <= 0 or r["seconds"] <= 0:
                continue
            logs.append(math.log(r["seconds"] / b["seconds"]))
            same &= r.get("run_id") == b.get("run_id")
        out[name] = (math.exp(float(np.mean(logs))), same) if logs else None
    return out

def _section_title(main: str, w: float | None, seeds: list[int]) -> str:
    arrow = {True: " (lower is better)", False: " (higher is better)", None: ""}
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else ""
    scale = "" if w is None else f", guidance scale {w:g}"
    return f"## {METRIC_TITLES.get(main, main)}{scale}: {spread}{arrow[LOWER_IS_BETTER.get(main)]}"


def _main_table(records: list[dict], main: str, w: float | None, floor_rows: list[dict], baseline: str) -> list[str]:
    regular = [r for r in records if r.get("family") != "reference"]
    nfes = sorted({r["nfe"] for r in regular})
    groups = group_records(records)
    ratios = _time_ratios(records, baseline)
    seeds = sorted({r["seed"] for r in records})
    label = {"ddim": "DDIM", "flow-euler": "FlowMatchEuler"}.get(baseline, baseline)
    lines = [_section_title(main, w, seeds), "", "| sampler | " + " | ".join(f"NFE {n}" for n in nfes)
             + f" | time vs {label} |", "|---|" + "---:|" * (len(nfes) + 1)]
    short_nfe = []
    for name in dict.fromkeys(r["sampler"] for r in regular):
        cells = []
        for n in nfes:
            rs = groups.get((name, n))
            st = stat(rs, main) if rs else None
            cell = "—" if st is None else format_value(*st)
            if rs and any(r.get("actual_nfe", n) != n for r in rs):
                cell += f" (NFE {rs[0]['actual_nfe']})"
                short_nfe.append(f"{name} @ {n}: {rs[0]['actual_nfe']}")
            cells.append(cell)
        ratio = ratios.get(name)
        rtxt = f"n/a (no {label} cells)" if ratio is None else f"{ratio[0]:.2f}x" + ("" if ratio[1] else " †")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rtxt} |")
    lines.append("")
    exact_floor = next((row["metrics"].get(main) for row in floor_rows
                        if row["name"].startswith("exact") and main in row["metrics"]), None)
    if exact_floor is not None and LOWER_IS_BETTER.get(main):
        below = [f"{name} @ {n}" for (name, n), rs in groups.items() if rs[0].get("family") != "reference"
                 and (stat(rs, main) or (math.nan,))[0] < exact_floor[0]]
        if below:
            lines += [f"Below the exact-data floor ({format_value(*exact_floor)}): {', '.join(below)}. Scoring better "
                      "than exact samples means under-dispersed samples (collapsed onto the modes), which FD and "
                      "sliced W2 on finite sets reward; check spread_ratio (exact: 1) and recall below.", ""]
    if short_nfe:
        lines += ["Cells marked (NFE k) used fewer evaluations than the column's NFE: the sampler cannot spend "
                  "exactly that many (" + "; ".join(dict.fromkeys(short_nfe)) + ").", ""]
    if any(r and not r[1] for r in ratios.values()):
        lines += [f"† some of these cells and their {label} counterparts were timed in different runs (resumed "
                  "directory); the ratio is then not a side-by-side measurement.", ""]
    return lines


def _metric_tables(records: list[dict], w: float | None, floors_w: dict, metric_names: list[str]) -> list[str]:
    groups = group_records(records)
    scale = "" if w is None else f", guidance scale {w:g}"
    calls = any(r.get("network_calls_unbatched", r.get("actual_nfe")) != r.get("actual_nfe") for r in records)
    lines = [f"## All metrics{scale} (mean ± std over seeds)", "",
             "| sampler | NFE | actual NFE | " + ("network calls | " if calls else "") + " | ".join(metric_names)
             + " | ms / sample |", "|---|---:|---:|" + ("---:|" if calls else "") + "---:|" * (len(metric_names) + 1)]
    for (name, n), rs in groups.items():
        vals = ["—" if stat(rs, m) is None else format_value(*stat(rs, m)) for m in metric_names]
        ms = format_value(1000 * float(np.mean([r["seconds_per_sample"] for r in rs])))
        extra = f"{rs[0].get('network_calls_unbatched')} | " if calls else ""
        lines.append(f"| {name} | {n} | {rs[0].get('actual_nfe', n)} | {extra}" + " | ".join(vals) + f" | {ms} |")
    arrows = {True: "↓", False: "↑", None: "→1"}
    lines += ["", "Arrows: " + ", ".join(f"{m} {arrows[LOWER_IS_BETTER.get(m)]}" for m in metric_names), ""]
    if calls:
        lines += ["network calls: unbatched network calls per sample; a classifier-free-guidance step evaluates the "
                  "conditional and the unconditional branch in one batched call (1 NFE, 2 network calls).", ""]
    refs = [r for r in records if r.get("family") == "reference"]
    if refs or floors_w.get("floors"):
        lines += [f"## Reference and floors{scale}", "",
                  "| what | " + " | ".join(metric_names) + " | note |", "|---|" + "---:|" * len(metric_names) + "---|"]
        for (name, n), rs in groups.items():
            if rs[0].get("family") != "reference":
                continue
            vals = ["—" if stat(rs, m) is None else format_value(*stat(rs, m)) for m in metric_names]
            lines.append(f"| {name} (seeds {sorted(r['seed'] for r in rs)}) | " + " | ".join(vals)
                         + " | an independent converged set vs the reference: the finite-sample floor |")
        for row in floors_w.get("floors", []):
            vals = ["—" if m not in row["metrics"] else format_value(*row["metrics"][m]) for m in metric_names]
            lines.append(f"| {row['name']} | " + " | ".join(vals) + f" | {row['what']} |")
        ref = floors_w.get("reference", {})
        if ref:
            lines += ["", f"Reference set: {ref.get('source')}, {ref.get('num_samples')} samples, seed {ref.get('seed')}"
                      f" ({ref.get('seconds', 0):.1f} s to draw); cached in {ref.get('cache', 'the reference cache')}, "
                      "copied into reference/."]
        lines.append("")
    return lines


def _peer_lines(peers: dict | None) -> list[str]:
    if not peers:
        return []
    lines = ["## Peers enumerated for this model", "",
             f"Regime: {peers.get('regime')}. Every scheduler class of `diffusers.schedulers` is listed with the "
             "peers it gives (recommended settings, see below) or the reason it is not run; then the "
             "k-diffusion-convention peers. Runnable peers: " + ", ".join(f"`{p}`" for p in peers.get("peers", [])),
             "", "| class | outcome |", "|---|---|"]
    lines += [f"| {cls} | {outcome} |" for cls, outcome in peers.get("classes", {}).items()]
    variants = {k: v for k, v in peers.get("refused", {}).items() if ":" in k}
    if variants:
        lines += ["", "Refused variants:", ""] + [f"- {k}: {v}" for k, v in variants.items()]
    return lines + [""]


def render_markdown(out: Path, records: list[dict]) -> str:
    config = json.loads((out / "config.json").read_text())
    floors = json.loads((out / "floors.json").read_text()) if (out / "floors.json").is_file() else {}
    main = floors.get("main_metric") or ("fd" if any("fd" in r["metrics"] for r in records) else "sw")
    model = config["model"]
    ident = config["identity"]
    seeds = sorted({r["seed"] for r in records})
    per_w = by_guidance(records)
    baseline = config.get("time_baseline", "ddim")
    lines = [f"# skipstep benchmark: `{model['name']}`", ""]
    lines += [
        f"- model: {model['description']} (fingerprint `{model['fingerprint']}`, prediction {model['prediction_type']}, "
        f"shape {tuple(model['sample_shape'])}, T={model['num_train_timesteps']})",
        *([f"- regime: {model['regime']}"] if model.get("regime") else []),
        *([f"- class labels: {config['class_labels']}; guidance scales {config.get('guidance_scales')}: "
           "eps = eps_u + w (eps_c - eps_u), both branches in one batched call (1 NFE, 2 network calls; "
           "w = 1 and w = 0 call one branch)"] if config.get("class_labels") else []),
        f"- {ident['num_samples']} samples per cell; seeds {seeds}; batch size {ident['batch_size']}; "
        f"device {config['environment']['device']}",
        f"- reference: {config['reference']}",
        f"- quality metrics against the reference set; FD in {model['features'] or 'n/a (no feature network)'} "
        "feature space, sliced W2 in pixel space",
        *(f"- {k.replace('_', ' ')}: {v}" for k, v in config["common_settings"].items()),
        "- time: wall clock of the sampling loop only (no metrics/I/O), summed over batches; "
        f"'time vs {baseline}' is the geometric mean over matched (NFE, seed) cells of seconds / {baseline} seconds",
        "",
    ]
    metric_names = [m for m in METRIC_ORDER if any(m in r["metrics"] for r in records)]
    floor_of = {w: floors.get("guidance", {}).get(f"w{w:g}", floors) if w is not None else floors for w in per_w}
    for w, rs in per_w.items():
        lines += _main_table(rs, main, w, floor_of[w].get("floors", []), baseline)
    for w, rs in per_w.items():
        lines += _metric_tables(rs, w, floor_of[w], metric_names)
    skipped = config.get("skipped") or {}
    if skipped:
        lines += ["## Skipped cells", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    lines += _peer_lines(config.get("peer_enumeration"))
    lines += ["## Sampler settings", ""]
    for name in dict.fromkeys(r["sampler"] for r in records):
        s = config["sampler_settings"].get(name, {})
        lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    plots = "`quality_vs_nfe.png`" if None in per_w else "`quality_vs_nfe_w<W>.png` (one per guidance scale)"
    lines += ["", f"Files: `results.json` (one record per cell), {plots}, `grids/<sampler>_nfe<N>[_w<W>].png` "
              "(first 64 samples of the first seed), `grids/reference[_w<W>].png`, `config.json`, `floors.json`, "
              "`reference/` (a copy of each cached reference set).", ""]
    return "\n".join(lines)


def write_outputs(out: Path, log: Callable[[str], None] | None = None) -> list[dict]:
    """(Re)write results.json, results.md, the quality-vs-NFE plots and the grids from the finished cells."""
    out = Path(out)
    records = load_records(out)
    atomic_write_json(out / "results.json", records)
    atomic_write_bytes(out / "results.md", render_markdown(out, records).encode())
    for w, rs in by_guidance(records).items():
        plot_quality(out, rs, w)
    write_grids(out, records)
    return records


__all__ = ["CELL_KEYS", "GRID_COUNT", "LOWER_IS_BETTER", "METRIC_ORDER", "METRIC_TITLES", "by_guidance", "cell_paths",
           "check_cell_record", "format_value", "fs_name", "group_records", "guidance_suffix", "load_records",
           "render_markdown", "save_grid", "stat", "to_image_grid", "write_outputs"]
