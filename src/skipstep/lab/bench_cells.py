"""The cells of a benchmark directory: their file names, what a finished cell record is, reading them back and
grouping them (by guidance scale, by sampler and NFE), and the statistics the tables and plots show."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .run_dirs import read_json_record

__all__ = ["CELL_KEYS", "LOWER_IS_BETTER", "METRIC_ORDER", "METRIC_TITLES", "by_guidance", "cell_paths",
           "check_cell_record", "format_value", "fs_name", "group_records", "guidance_suffix", "load_records", "stat"]

#: metric -> True (lower is better), False (higher is better), None (1 is exact)
LOWER_IS_BETTER = {"fd": True, "sw": True, "fd_heldout": True, "mode_tv": True, "precision": False, "fid_ref": True,
                   "recall": False, "spread_ratio": None, "class_match": False}

METRIC_TITLES = {
    "fd": "FD vs reference (classifier features)",
    "sw": "sliced W2 vs reference (pixels)",
    "precision": "precision",
    "recall": "recall",
    "fd_heldout": "FD vs real held-out digits",
    "mode_tv": "mode-frequency TV (exact)",
    "spread_ratio": "within-mode spread ratio (exact = 1)",
    "fid_ref": "FID vs --fid-reference (--fid-features)",
    "class_match": "class match (digit classifier)",
}
METRIC_ORDER = ("fd", "fid_ref", "sw", "precision", "recall", "fd_heldout", "class_match", "mode_tv", "spread_ratio")


# --------------------------------------------------------------------------------------------------------------
# cell files
# --------------------------------------------------------------------------------------------------------------

def fs_name(sampler: str) -> str:
    """A sampler name as one path component (``tuned:dir/x.json`` names hold separators)."""
    return sampler.replace("/", "%2F").replace(os.sep, "%2F")

def guidance_suffix(guidance: float | None) -> str:
    """``""`` or ``_w<scale>`` (cell, grid and plot file names of a guidance scale)."""
    return "" if guidance is None else f"_w{guidance:g}"


def cell_paths(out: Path, sampler: str, nfe: int, seed: int, guidance: float | None = None) -> tuple[Path, Path]:
    base = out / "cells" / fs_name(sampler) / f"nfe{nfe}_seed{seed}{guidance_suffix(guidance)}"
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")


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
    w = record.get("guidance_scale")
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))):
        return "its guidance_scale has the wrong type"
    if (json_path.parent.name, json_path.name) != (fs_name(name), f"nfe{nfe}_seed{seed}{guidance_suffix(w)}.json"):
        return f"it describes {name} at NFE {nfe}, seed {seed}{guidance_suffix(w)}, which belongs elsewhere"
    if num_samples is not None and record["num_samples"] != num_samples:
        return f"it has {record['num_samples']} samples, not {num_samples}"
    if fingerprint is not None and record["model_fingerprint"] != fingerprint:
        return f"it was made with model {record['model_fingerprint']}, not {fingerprint}"
    return ""


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
    records.sort(key=lambda r: (_w_key(r.get("guidance_scale")), order.get(r["sampler"], len(order)), r["nfe"],
                                r["seed"]))
    return records


def _w_key(w) -> float:
    return -1.0 if w is None else float(w)


def by_guidance(records: list[dict]) -> dict[float | None, list[dict]]:
    """Records grouped by guidance scale (``None``: an unconditional model), in increasing scale."""
    out: dict = {}
    for r in sorted(records, key=lambda r: _w_key(r.get("guidance_scale"))):
        out.setdefault(r.get("guidance_scale"), []).append(r)
    return out


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


def group_records(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["sampler"], r["nfe"]), []).append(r)
    return groups

def stat(rs: list[dict], metric: str) -> tuple[float, float] | None:
    vals = [r["metrics"][metric] for r in rs if metric in r["metrics"]]
    if not vals:
        if any("nonfinite_fraction" in r["metrics"] for r in rs):
            return (float("nan"), float("nan"))
        return None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)  # no ± for one seed

