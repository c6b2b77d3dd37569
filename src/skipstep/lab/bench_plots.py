"""The plots and sample grids of a benchmark directory: the quality-vs-NFE plot (one per guidance scale of a
class-conditional model: ``quality_vs_nfe_w<W>.png``), ``grids/<sampler>_nfe<N>[_w<W>].png`` and the reference
grids."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..storage import atomic_write_bytes
from .bench_cells import LOWER_IS_BETTER, METRIC_TITLES, cell_paths, fs_name, group_records, guidance_suffix, stat
from .run_dirs import load_tensor

__all__ = ["GRID_COUNT", "plot_quality", "save_grid", "to_image_grid", "write_grids"]

GRID_COUNT = 64


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


def plot_quality(out: Path, records: list[dict], guidance: float | None = None) -> Path:
    """``quality_vs_nfe.png`` (``quality_vs_nfe_w<W>.png`` for the records of one guidance scale): the main metric
    and secondary metrics vs NFE, error bars std over seeds, floors as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    floors = json.loads((out / "floors.json").read_text()) if (out / "floors.json").is_file() else {}
    main = floors.get("main_metric", "fd")
    if guidance is not None:
        floors = floors.get("guidance", {}).get(f"w{guidance:g}", floors)
    panels = [main] + [m for m in ("sw", "class_match", "mode_tv", "spread_ratio", "recall")
                       if m != main and any(m in r["metrics"] for r in records)]
    panels = panels[:4]
    regular = [r for r in records if r.get("family") != "reference"]
    refs = [r for r in records if r.get("family") == "reference"]
    groups = group_records(regular)
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
                st = stat(groups[(name, next(n for (s_, n) in groups if s_ == name))], metric)
                if st is not None and not math.isnan(st[0]):
                    h = ax.bar(i, st[0], yerr=st[1] or 0.0, capsize=3, color=colors(i % 10), label=name)
                    handles.setdefault(name, h)
            ax.set_xticks(range(len(samplers)))
            ax.set_xticklabels(samplers, rotation=20, fontsize=8)
        for i, name in enumerate(samplers if not single_nfe else []):
            xs, ys, es = [], [], []
            for n in sorted({r["nfe"] for r in regular if r["sampler"] == name}):
                rs = groups[(name, n)]
                st = stat(rs, metric)
                if st is None or math.isnan(st[0]):
                    continue
                xs.append(float(np.mean([r.get("actual_nfe", n) for r in rs]))), ys.append(st[0]), es.append(st[1] or 0.0)
            if xs:
                ours = groups[(name, n)][0].get("family") not in ("diffusers", "k-diffusion")
                h = ax.errorbar(xs, ys, yerr=es, ls="-" if ours else "--", marker=markers[i % len(markers)], ms=4,
                                capsize=2, lw=1.6 if ours else 1.2, color=colors(i % 10), label=name)
                handles.setdefault(name, h)
        if refs:
            st = stat(refs, metric)
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
    scale = "" if guidance is None else f", guidance scale {guidance:g}"
    fig.suptitle(f"{records[0]['model'] if records else ''}{scale}: quality vs NFE "
                 + ("(error bars: std over seeds)" if single_nfe else
                    "(solid: skipstep, dashed: peers; error bars: std over seeds)"), fontsize=11)
    rows_of_legend = int(math.ceil(len(handles) / 6))
    # fixed margins: tight_layout measures every tick label and costs seconds on a busy CPU
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.55 / height,
                        bottom=(0.75 + 0.22 * rows_of_legend) / height, wspace=0.22, hspace=0.42)
    path = out / f"quality_vs_nfe{guidance_suffix(guidance)}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path

def write_grids(out: Path, records: list[dict]) -> list[Path]:
    """``grids/<sampler>_nfe<N>[_w<W>].png`` (the first seed's first samples) and ``grids/reference[_w<W>].png``."""
    paths = []
    first_seed: dict[tuple, int] = {}
    for r in records:
        key = (r["sampler"], r["nfe"], r.get("guidance_scale"))
        first_seed[key] = min(first_seed.get(key, r["seed"]), r["seed"])
    for (name, nfe, w), seed in first_seed.items():
        _, tensor_path = cell_paths(out, name, nfe, seed, w)
        if tensor_path.is_file():
            paths.append(save_grid(load_tensor(tensor_path)[:GRID_COUNT],
                                   out / "grids" / f"{fs_name(name)}_nfe{nfe}{guidance_suffix(w)}.png"))
    for w in dict.fromkeys(r.get("guidance_scale") for r in records):
        ref = out / "reference" / ("" if w is None else f"w{w:g}") / "reference.safetensors"
        if ref.is_file():
            paths.append(save_grid(load_tensor(ref)[:GRID_COUNT], out / "grids" / f"reference{guidance_suffix(w)}.png"))
    return paths
