"""Reports of a benchmark directory: ``results.json``, the Markdown tables, the quality-vs-NFE plot, sample grids."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..storage import atomic_write_bytes, atomic_write_json
from .run_dirs import load_tensor, read_json_record
from .sampler_registry import available_samplers, get_sampler

GRID_COUNT = 64


LOWER_IS_BETTER = {"fd": True, "sw": True, "fd_heldout": True, "mode_tv": True, "precision": False, "fid_ref": True,
                   "recall": False, "spread_ratio": None}

METRIC_TITLES = {
    "fd": "FD vs reference (classifier features)",
    "sw": "sliced W2 vs reference (pixels)",
    "precision": "precision",
    "recall": "recall",
    "fd_heldout": "FD vs real held-out digits",
    "mode_tv": "mode-frequency TV (exact)",
    "spread_ratio": "within-mode spread ratio (exact = 1)",
    "fid_ref": "FID vs --fid-reference (--fid-features)",
}


# --------------------------------------------------------------------------------------------------------------
# cell files
# --------------------------------------------------------------------------------------------------------------

def fs_name(sampler: str) -> str:
    """A sampler name as one path component (``tuned:dir/x.json`` names hold separators)."""
    return sampler.replace("/", "%2F").replace(os.sep, "%2F")

def cell_paths(out: Path, sampler: str, nfe: int, seed: int) -> tuple[Path, Path]:
    base = out / "cells" / fs_name(sampler) / f"nfe{nfe}_seed{seed}"
    return base.with_suffix(".json"), base.with_suffix(".safetensors")


#: Keys every finished cell record has.
CELL_KEYS = ("sampler", "nfe", "seed", "num_samples", "metrics", "model_fingerprint")


def check_cell_record(record: dict, json_path: Path, num_samples: int | None = None,
                      fingerprint: str | None = None) -> str:
    """'' if ``record`` is a finished cell that belongs at ``json_path`` (and, when given, has this sample count
    and model fingerprint); otherwise the reason."""
    missing = [k for k in CELL_KEYS if k not in record]
    if missing:
        return f"it lacks {', '.join(missing)}"
    name, nfe, seed = record["sampler"], record["nfe"], record["seed"]
    if not (isinstance(name, str) and isinstance(nfe, int) and isinstance(seed, int)
            and isinstance(record["metrics"], dict)):
        return "its sampler, nfe, seed or metrics have the wrong type"
    if (json_path.parent.name, json_path.name) != (fs_name(name), f"nfe{nfe}_seed{seed}.json"):
        return f"it describes {name} at NFE {nfe}, seed {seed}, which belongs elsewhere"
    if num_samples is not None and record["num_samples"] != num_samples:
        return f"it has {record['num_samples']} samples, not {num_samples}"
    if fingerprint is not None and record["model_fingerprint"] != fingerprint:
        return f"it was made with model {record['model_fingerprint']}, not {fingerprint}"
    return ""


# --------------------------------------------------------------------------------------------------------------
# sample grids
# --------------------------------------------------------------------------------------------------------------

def to_image_grid(samples: torch.Tensor, ncols: int = 8, min_tile: int = 32) -> np.ndarray:
    """``(n, C, H, W)`` samples in [-1, 1] as one ``uint8`` image grid (grey for C=1, RGB for C=3)."""
    x = samples.detach().float().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    n, c, h, w = x.shape
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    if c not in (1, 3):
        x = x[:, :1]
        c = 1
    scale = max(1, int(math.ceil(min_tile / max(h, w))))
    if scale > 1:
        x = x.repeat(scale, axis=2).repeat(scale, axis=3)
        h, w = h * scale, w * scale
    ncols = min(ncols, n)
    nrows = int(math.ceil(n / ncols))
    pad = max(1, scale // 2)
    grid = np.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y0:y0 + h, x0:x0 + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)

def save_grid(samples: torch.Tensor, path: Path | str, ncols: int = 8) -> Path:
    """Write the samples as a PNG grid (atomically) and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg

    path = Path(path)
    grid = to_image_grid(samples, ncols=ncols)
    buf = io.BytesIO()
    mpimg.imsave(buf, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------------------------
# tables and plots
# --------------------------------------------------------------------------------------------------------------

def load_records(out: Path) -> list[dict]:
    """All finished cells of a directory, ordered by the config's sampler order, NFE and seed."""
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    order = {name: i for i, name in enumerate(config.get("samplers", []))}
    records = []
    for path in sorted((out / "cells").glob("*/*.json")):
        record, reason = read_json_record(path)
        reason = reason or check_cell_record(record, path)
        if reason:  # never a silent gap in the tables (run_bench recomputes or refuses such files first)
            raise ValueError(f"{path} is not a finished benchmark cell ({reason}); remove it")
        records.append(record)
    records.sort(key=lambda r: (order.get(r["sampler"], len(order)), r["nfe"], r["seed"]))
    return records


def format_value(mean: float, std: float | None = None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "NaN"

    def f(v):
        if v == 0:
            return "0"
        mag = abs(v)
        if mag >= 1000 or mag < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{max(0, digits - 1 - int(math.floor(math.log10(mag))))}f}"

    return f(mean) if std is None else f"{f(mean)} ± {f(std)}"


def _group(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["sampler"], r["nfe"]), []).append(r)
    return groups

def _stat(rs: list[dict], metric: str) -> tuple[float, float] | None:
    vals = [r["metrics"][metric] for r in rs if metric in r["metrics"]]
    if not vals:
        if any("nonfinite_fraction" in r["metrics"] for r in rs):
            return (float("nan"), float("nan"))
        return None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)  # no ± for one seed

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

def render_markdown(out: Path, records: list[dict]) -> str:
    config = json.loads((out / "config.json").read_text())
    floors = json.loads((out / "floors.json").read_text()) if (out / "floors.json").is_file() else {}
    main = floors.get("main_metric") or ("fd" if any("fd" in r["metrics"] for r in records) else "sw")
    model = config["model"]
    ident = config["identity"]
    regular = [r for r in records if r.get("family") != "reference"]
    refs = [r for r in records if r.get("family") == "reference"]
    nfes = sorted({r["nfe"] for r in regular})
    samplers = list(dict.fromkeys(r["sampler"] for r in regular))
    seeds = sorted({r["seed"] for r in records})
    groups = _group(records)
    ratios = _time_ratios(records)
    lines = [f"# skipstep benchmark: `{model['name']}`", ""]
    lines += [
        f"- model: {model['description']} (fingerprint `{model['fingerprint']}`, prediction {model['prediction_type']}, "
        f"shape {tuple(model['sample_shape'])}, T={model['num_train_timesteps']})",
        f"- {ident['num_samples']} samples per cell; seeds {seeds}; batch size {ident['batch_size']}; "
        f"device {config['environment']['device']}",
        f"- reference: {config['reference']}",
        f"- quality metrics against the reference set; FD in {model['features'] or 'n/a (no feature network)'} "
        "feature space, sliced W2 in pixel space",
        *(f"- {k.replace('_', ' ')}: {v}" for k, v in config["common_settings"].items()),
        "- time: wall clock of the sampling loop only (no metrics/I/O), summed over batches; "
        "'time vs DDIM' is the geometric mean over matched (NFE, seed) cells of seconds / DDIM seconds",
        "",
    ]
    arrow = {True: " (lower is better)", False: " (higher is better)", None: ""}
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else ""
    lines += [f"## {METRIC_TITLES.get(main, main)}: {spread}{arrow[LOWER_IS_BETTER.get(main)]}",
              "", "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " | time vs DDIM |",
              "|---|" + "---:|" * (len(nfes) + 1)]
    short_nfe = []
    for name in samplers:
        cells = []
        for n in nfes:
            rs = groups.get((name, n))
            st = _stat(rs, main) if rs else None
            cell = "—" if st is None else format_value(*st)
            if rs and any(r.get("actual_nfe", n) != n for r in rs):
                cell += f" (NFE {rs[0]['actual_nfe']})"
                short_nfe.append(f"{name} @ {n}: {rs[0]['actual_nfe']}")
            cells.append(cell)
        ratio = ratios.get(name)
        rtxt = "n/a (no DDIM cells)" if ratio is None else f"{ratio[0]:.2f}x" + ("" if ratio[1] else " †")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rtxt} |")
    lines.append("")
    exact_floor = next((row["metrics"].get(main) for row in floors.get("floors", [])
                        if row["name"].startswith("exact") and main in row["metrics"]), None)
    if exact_floor is not None and LOWER_IS_BETTER.get(main):
        below = [f"{name} @ {n}" for (name, n), rs in groups.items() if rs[0].get("family") != "reference"
                 and (_stat(rs, main) or (math.nan,))[0] < exact_floor[0]]
        if below:
            lines += [f"Below the exact-data floor ({format_value(*exact_floor)}): {', '.join(below)}. Scoring better than "
                      "exact samples means under-dispersed samples (collapsed onto the modes), which FD and sliced "
                      "W2 on finite sets reward; check spread_ratio (exact: 1) and recall below.", ""]
    if short_nfe:
        lines += ["Cells marked (NFE k) used fewer evaluations than the column's NFE: the sampler cannot spend "
                  "exactly that many (" + "; ".join(dict.fromkeys(short_nfe)) + ").", ""]
    if any(r and not r[1] for r in ratios.values()):
        lines += ["† some of these cells and their DDIM counterparts were timed in different runs (resumed "
                  "directory); the ratio is then not a side-by-side measurement.", ""]
    metric_names = [m for m in ("fd", "fid_ref", "sw", "precision", "recall", "fd_heldout", "mode_tv", "spread_ratio")
                    if any(m in r["metrics"] for r in records)]
    lines += ["## All metrics (mean ± std over seeds)", "",
              "| sampler | NFE | actual NFE | " + " | ".join(metric_names) + " | ms / sample |",
              "|---|---:|---:|" + "---:|" * (len(metric_names) + 1)]
    for (name, n), rs in groups.items():
        vals = []
        for m in metric_names:
            st = _stat(rs, m)
            vals.append("—" if st is None else format_value(*st))
        ms = format_value(1000 * float(np.mean([r["seconds_per_sample"] for r in rs])))
        lines.append(f"| {name} | {n} | {rs[0].get('actual_nfe', n)} | " + " | ".join(vals) + f" | {ms} |")
    lines += ["", "Arrows: " + ", ".join(f"{m} {'↓' if LOWER_IS_BETTER.get(m) else ('↑' if LOWER_IS_BETTER.get(m) is False else '→1')}"
                                         for m in metric_names), ""]
    if refs or floors.get("floors"):
        lines += ["## Reference and floors", "",
                  "| what | " + " | ".join(metric_names) + " | note |", "|---|" + "---:|" * len(metric_names) + "---|"]
        for (name, n), rs in groups.items():
            if rs[0].get("family") != "reference":
                continue
            vals = ["—" if _stat(rs, m) is None else format_value(*_stat(rs, m)) for m in metric_names]
            lines.append(f"| {name} (seeds {sorted(r['seed'] for r in rs)}) | " + " | ".join(vals)
                         + " | independent 1000-step set vs the reference: the finite-sample floor |")
        for row in floors.get("floors", []):
            vals = ["—" if m not in row["metrics"] else format_value(*row["metrics"][m]) for m in metric_names]
            lines.append(f"| {row['name']} | " + " | ".join(vals) + f" | {row['what']} |")
        ref = floors.get("reference", {})
        if ref:
            lines += ["", f"Reference set: {ref.get('source')}, {ref.get('num_samples')} samples, seed {ref.get('seed')}"
                      f" ({ref.get('seconds', 0):.1f} s to draw)."]
        lines.append("")
    skipped = config.get("skipped") or {}
    if skipped:
        lines += ["## Skipped cells", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    lines += ["## Sampler settings", ""]
    for name in dict.fromkeys(r["sampler"] for r in records):
        s = config["sampler_settings"].get(name, {})
        lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    lines += ["", "Files: `results.json` (one record per cell), `quality_vs_nfe.png`, `grids/<sampler>_nfe<N>.png` "
              "(first 64 samples of the first seed), `grids/reference.png`, `config.json`, `floors.json`.", ""]
    return "\n".join(lines)

def plot_quality(out: Path, records: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    floors = json.loads((out / "floors.json").read_text()) if (out / "floors.json").is_file() else {}
    main = floors.get("main_metric", "fd")
    panels = [main] + [m for m in ("sw", "mode_tv", "spread_ratio", "recall")
                       if m != main and any(m in r["metrics"] for r in records)]
    panels = panels[:4]
    regular = [r for r in records if r.get("family") != "reference"]
    refs = [r for r in records if r.get("family") == "reference"]
    groups = _group(regular)
    samplers = list(dict.fromkeys(r["sampler"] for r in regular))
    ncols = 2 if len(panels) == 4 else len(panels)
    nrows = int(math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 4.0 * nrows + 0.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    markers = "osD^vP*Xh<>p"
    handles = {}
    single_nfe = len({n for (_, n) in groups}) == 1  # one NFE: bars per sampler instead of curves
    for ax, metric in zip(axes.flat, panels):
        if single_nfe:
            for i, name in enumerate(samplers):
                st = _stat(groups[(name, next(n for (s_, n) in groups if s_ == name))], metric)
                if st is not None and not math.isnan(st[0]):
                    h = ax.bar(i, st[0], yerr=st[1] or 0.0, capsize=3, color=colors(i % 10), label=name)
                    handles.setdefault(name, h)
            ax.set_xticks(range(len(samplers)))
            ax.set_xticklabels(samplers, rotation=20, fontsize=8)
        for i, name in enumerate(samplers if not single_nfe else []):
            xs, ys, es = [], [], []
            for n in sorted({r["nfe"] for r in regular if r["sampler"] == name}):
                rs = groups[(name, n)]
                st = _stat(rs, metric)
                if st is None or math.isnan(st[0]):
                    continue
                xs.append(float(np.mean([r.get("actual_nfe", n) for r in rs]))), ys.append(st[0]), es.append(st[1] or 0.0)
            if xs:
                ours = get_sampler(name).family != "diffusers" if name in available_samplers() else True
                h = ax.errorbar(xs, ys, yerr=es, ls="-" if ours else "--", marker=markers[i % len(markers)], ms=4,
                                capsize=2, lw=1.6 if ours else 1.2, color=colors(i % 10), label=name)
                handles.setdefault(name, h)
        if refs:
            st = _stat(refs, metric)
            if st is not None and not math.isnan(st[0]):
                handles.setdefault("reference-1000 (independent set: floor)",
                                   ax.axhline(st[0], color="k", ls=":", lw=1))
        for row in floors.get("floors", []):
            if metric in row["metrics"] and row["name"].startswith("exact"):
                handles.setdefault("exact data samples (floor)",
                                   ax.axhline(row["metrics"][metric][0], color="grey", ls="-.", lw=1))
        if metric == "spread_ratio":
            ax.axhline(1.0, color="k", lw=0.6)
        if not single_nfe:
            ax.set_xscale("log")
            ticks = sorted({float(n) for (_, n) in groups})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("NFE (network evaluations)")
        else:
            ax.set_xlabel(f"NFE {next(iter(groups))[1]}")
        if not single_nfe and LOWER_IS_BETTER.get(metric) and all(r["metrics"].get(metric, 1) > 0 for r in regular):
            ax.set_yscale("log")
        ax.set_title(METRIC_TITLES.get(metric, metric) + {True: "  ↓", False: "  ↑"}.get(LOWER_IS_BETTER.get(metric), ""),
                     fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(6, len(handles)),
               fontsize=8, frameon=False)
    fig.suptitle(f"{records[0]['model'] if records else ''}: quality vs NFE "
                 + ("(error bars: std over seeds)" if single_nfe else
                    "(solid: skipstep, dashed: diffusers; error bars: std over seeds)"), fontsize=11)
    rows_of_legend = int(math.ceil(len(handles) / 6))
    # fixed margins: tight_layout measures every tick label and costs seconds on a busy CPU
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.55 / height,
                        bottom=(0.75 + 0.22 * rows_of_legend) / height, wspace=0.22, hspace=0.42)
    path = out / "quality_vs_nfe.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path

def write_grids(out: Path, records: list[dict]) -> list[Path]:
    paths = []
    first_seed: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r["sampler"], r["nfe"])
        first_seed[key] = min(first_seed.get(key, r["seed"]), r["seed"])
    for (name, nfe), seed in first_seed.items():
        _, tensor_path = cell_paths(out, name, nfe, seed)
        if tensor_path.is_file():
            paths.append(save_grid(load_tensor(tensor_path)[:GRID_COUNT],
                                   out / "grids" / f"{fs_name(name)}_nfe{nfe}.png"))
    ref = out / "reference" / "reference.safetensors"
    if ref.is_file():
        paths.append(save_grid(load_tensor(ref)[:GRID_COUNT], out / "grids" / "reference.png"))
    return paths

def write_outputs(out: Path, log: Callable[[str], None] | None = None) -> list[dict]:
    """(Re)write results.json, results.md, quality_vs_nfe.png and the grids from the finished cells."""
    out = Path(out)
    records = load_records(out)
    atomic_write_json(out / "results.json", records)
    atomic_write_bytes(out / "results.md", render_markdown(out, records).encode())
    if records:
        plot_quality(out, records)
        write_grids(out, records)
    return records


__all__ = ["CELL_KEYS", "GRID_COUNT", "LOWER_IS_BETTER", "METRIC_TITLES", "cell_paths", "check_cell_record", "format_value", "fs_name", "load_records",
           "plot_quality", "render_markdown", "save_grid", "to_image_grid", "write_grids", "write_outputs"]
