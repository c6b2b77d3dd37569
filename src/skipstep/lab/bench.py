"""Side-by-side benchmark: our samplers and diffusers' schedulers on one model, same noise, same sample count.

``skipstep bench --model gmm --samplers skipstep,ddim,dpmpp-2m --nfe 5,10,20 --num-samples 1000 --seed 0,1 --out DIR``

Protocol (see ``docs/bench.md``):

* every (sampler, NFE, seed) cell starts from the same ``x_T`` for a seed (``randn`` from a CPU generator seeded
  with the seed, drawn for all samples at once) and gets the same per-step noise seeding (one CPU generator per
  batch, seeded from the seed and the batch's first index);
* every sampler is driven by the one standard diffusers loop (:func:`skipstep.lab.sampler_registry.run_standard_loop`) and
  its NFE is counted by wrapping the model;
* quality is measured against a reference set drawn once per output directory with its own seed: exact data
  samples for analytic models (``gmm``), the model's own 1000-step ancestral samples otherwise;
* wall-clock time covers the sampling loop only; ratios against DDIM are taken from cells of the same run.

Each finished cell is written atomically to ``DIR/cells/<sampler>/nfe<N>_seed<S>.json`` (plus the first
samples for grids), so an interrupted run resumes where it stopped. ``DIR/config.json`` pins the configuration.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import diffusers
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..storage import atomic_write_json, env_int, file_sha256
from . import metrics as M
from .bench_report import GRID_COUNT, cell_paths, check_cell_record, write_outputs
from .cli_args import (DEFAULT_BATCH_SIZE, HelpFormatter, add_common_run_args, apply_threads, check_device, check_seed,
                       name_list, positive_int, positive_int_list, seed_list)
from .fid import load_reference_stats, use_feature_network
from .models import CLIP_MODES, LoadedModel, apply_clip_mode, load_model
from .run_dirs import RunDirectory, RunDirectoryError, identity_differences, now_utc, read_json_record, save_tensor, seal
from .sample_sets import REFERENCE_SEED, reference_samples, sample_cell
from .sampler_registry import (COMMON_SETTINGS, SamplerError, check_sampler_for_model, format_sampler_list,
                               get_sampler, sampler_names, sampler_settings, steps_for_nfe)


__all__ = [
    "BenchConfig",
    "BenchConfigError",
    "BenchInterrupted",
    "BenchResult",
    "MetricContext",
    "add_subcommand",
    "expand_sampler_names",
    "run_bench",
]

PROTOCOL_VERSION = 1

#: Set to N to stop a run with :class:`BenchInterrupted` after N freshly computed cells (testing resumption).
STOP_AFTER_ENV = "SKIPSTEP_BENCH_STOP_AFTER"

SW_PROJECTIONS = 256

PR_K = 3

#: Precision/recall in pixel space is skipped above this many dimensions (it is O(N^2 D)).
PR_PIXEL_MAX_DIM = 4096


class BenchConfigError(ValueError):
    """The output directory holds results of a different configuration (or is not a benchmark directory)."""


#: What the benchmark writes into its directory (``--overwrite`` removes these and nothing else).
OWNED_NAMES = ("cells", "reference", "grids", "results.json", "results.md", "quality_vs_nfe.png", "floors.json",
               "config.json")


def run_directory(out: Path) -> RunDirectory:
    """The run directory of a benchmark (marker, lock, owned names: :mod:`skipstep.lab.run_dirs`)."""
    return RunDirectory(out, "bench", OWNED_NAMES, legacy_identity_key="protocol_version")

class BenchInterrupted(RuntimeError):
    """Raised (by the stop-after hook) to simulate a killed run; finished cells are kept."""

@dataclass
class BenchConfig:
    model: str
    samplers: list[str]
    nfes: list[int]
    seeds: list[int]
    num_samples: int
    out: Path
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    num_reference: int | None = None
    reference_seed: int = REFERENCE_SEED
    progress: bool = True
    overwrite: bool = False
    clip: str = "model"  # x0_hat clipping: "model" (the model's scheduler config), "on" or "off"
    fid_features: str | None = None  # a feature network for FD (skipstep.lab.fid.resolve_feature_extractor)
    fid_reference: str | None = None  # external reference for the fid_ref metric (stats .npz or samples)
    inception_weights: str | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        self.samplers = expand_sampler_names(self.samplers)
        bad = [n for n in self.nfes if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1]
        if bad:
            raise ValueError(f"--nfe: every NFE must be a positive integer, got {bad}")
        self.nfes = sorted({int(n) for n in self.nfes})
        self.seeds = list(dict.fromkeys(check_seed(s, "--seed") for s in self.seeds))
        self.device = check_device(self.device)
        if not self.samplers:
            raise ValueError("--samplers: give at least one sampler")
        if not self.nfes:
            raise ValueError("--nfe: give at least one NFE")
        if not self.seeds:
            raise ValueError("--seed: give at least one seed")
        if int(self.num_samples) < 4:
            raise ValueError(f"--num-samples must be >= 4 (metrics need several samples), got {self.num_samples}")
        self.num_samples = int(self.num_samples)
        if int(self.batch_size) < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.batch_size = int(self.batch_size)
        self.num_reference = int(self.num_reference or self.num_samples)
        if self.num_reference < 4:
            raise ValueError(f"--num-reference must be >= 4 (the reference set's size), got {self.num_reference}")
        if self.clip not in CLIP_MODES:
            raise ValueError(f"--clip must be one of {CLIP_MODES}, got {self.clip!r}")
        if self.reference_seed in self.seeds:
            raise ValueError(f"seed {self.reference_seed} is the reference set's seed; choose other seeds so the "
                             "samples are independent of the reference")
        if self.fid_reference and not self.fid_features:
            raise BenchConfigError("--fid-reference needs --fid-features (the feature network to compare in)")

@dataclass
class BenchResult:
    records: list[dict]
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    markdown: str = ""
    seconds: float = 0.0

def expand_sampler_names(names: Sequence[str]) -> list[str]:
    """Sampler names with the groups ``all``, ``ours`` (skipstep family) and ``peers`` (diffusers) expanded;
    unknown names raise :class:`SamplerError` listing the valid ones."""
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in ("all", "ours", "peers"):
            fam = {"ours": ("skipstep",), "peers": ("diffusers",), "all": ("skipstep", "diffusers")}[name]
            out += sampler_names(*fam)
        else:
            get_sampler(name)
            out.append(name)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------

class MetricContext:
    """Reference-side quantities computed once per run (features, Gaussian statistics)."""

    def __init__(self, loaded: LoadedModel, reference: torch.Tensor):
        self.loaded = loaded
        self.reference = reference
        self.dim = int(np.prod(loaded.sample_shape))
        self.ref_feats = self._features(reference) if loaded.feature_fn is not None else None
        self.ref_stats = M.gaussian_stats(self.ref_feats) if self.ref_feats is not None else None
        self.heldout_stats = None
        if loaded.real_data is not None and loaded.feature_fn is not None and "heldout" in loaded.real_data:
            self.heldout_stats = M.gaussian_stats(self._features(loaded.real_data["heldout"]))

    def _features(self, x: torch.Tensor) -> np.ndarray:
        return M.compute_features(x, self.loaded.feature_fn, batch_size=1000)

    @property
    def main_metric(self) -> str:
        return "fd" if self.ref_feats is not None else "sw"

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        samples = samples.float()
        if not bool(torch.isfinite(samples).all()):
            bad = float((~torch.isfinite(samples.reshape(samples.shape[0], -1))).any(1).float().mean())
            return {"nonfinite_fraction": bad}
        out: dict[str, float] = {}
        if self.ref_feats is not None:
            feats = self._features(samples)
            out["fd"] = M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.ref_stats)
            if getattr(self, "fid_reference_stats", None) is not None:
                out["fid_ref"] = M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.fid_reference_stats)
            out["precision"], out["recall"] = M.precision_recall(self.ref_feats, feats, k=PR_K)
            if self.heldout_stats is not None:
                out["fd_heldout"] = M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.heldout_stats)
        elif self.dim <= PR_PIXEL_MAX_DIM:
            out["precision"], out["recall"] = M.precision_recall(self.reference, samples, k=PR_K)
        out["sw"] = M.sliced_wasserstein(samples, self.reference, num_projections=SW_PROJECTIONS, seed=0)
        if self.loaded.reference is not None:
            out.update(self.loaded.reference.metrics(samples))
        return {k: float(v) for k, v in out.items()}

def _pair_metrics(loaded: LoadedModel, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    out = {"sw": M.sliced_wasserstein(a, b, num_projections=SW_PROJECTIONS, seed=0)}
    if loaded.feature_fn is not None:
        fa = M.compute_features(a, loaded.feature_fn, 1000)
        fb = M.compute_features(b, loaded.feature_fn, 1000)
        out["fd"] = M.frechet_distance(fa, fb)
    return out


# --------------------------------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------------------------------

def _cell_key(sampler: str, nfe: int, seed: int) -> str:
    return f"{sampler}/nfe{nfe}_seed{seed}"

def _identity(cfg: BenchConfig, loaded: LoadedModel) -> dict[str, Any]:
    """What must match for cells to be reused (samplers, NFEs and seeds may be added)."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "model": loaded.name,
        "model_fingerprint": loaded.fingerprint,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,  # fixes the per-step noise streams
        "num_reference": cfg.num_reference,
        "reference_seed": cfg.reference_seed,
        "x0_clip": bool(loaded.scheduler_config.get("clip_sample", False)),
        # the chosen feature network changes every FD (present only when chosen: older directories stay valid)
        **({"fid_features": getattr(loaded.feature_fn, "fingerprint", cfg.fid_features)} if cfg.fid_features else {}),
        **({"fid_reference": str(cfg.fid_reference)} if cfg.fid_reference else {}),
    }


def _prepare_dir(cfg: BenchConfig, loaded: LoadedModel, rundir: RunDirectory, cells: list[tuple],
                 skipped: dict[str, str], log: Callable[[str], None]) -> tuple[list[tuple], list[tuple]]:
    """Claim ``cfg.out`` (refuse a foreign or busy directory, lock it, remove stale temporary files), check it
    against its config.json and verify its finished cells; write the merged config; return the planned cells
    as (reused, todo)."""
    identity = _identity(cfg, loaded)
    settings = {name: sampler_settings(get_sampler(name)) for name in cfg.samplers}
    try:
        previous = rundir.claim(cfg.overwrite, log)
    except RunDirectoryError as err:
        raise BenchConfigError(str(err)) from None
    if previous is not None:
        diffs = identity_differences(previous["identity"], identity)
        old_settings = previous.get("sampler_settings", {})
        for name, s in settings.items():
            if name in old_settings and json.loads(json.dumps(old_settings[name], default=str)) != json.loads(
                    json.dumps(s, default=str)):
                diffs.append(f"settings of sampler {name!r} changed: {old_settings[name]} -> {s}")
        if diffs:
            if not cfg.overwrite:
                raise BenchConfigError(
                    f"--out {cfg.out} holds results of a different configuration ({'; '.join(diffs)}). Pass "
                    "--overwrite to discard them (only the benchmark's own files are removed), or choose another "
                    "--out. (Adding samplers, NFEs or seeds to the same model/num-samples is allowed and reuses "
                    "finished cells.)")
            rundir.discard_results()
            previous = None
    verified = _verify_cells(cfg, loaded, cells, log)  # before config.json is rewritten: refusals change nothing
    now = now_utc()

    def union(key, new):
        old = (previous or {}).get(key, [])
        return list(dict.fromkeys(list(old) + list(new)))

    merged = {
        "identity": identity,
        "model": loaded.info(),
        "samplers": union("samplers", cfg.samplers),
        "nfes": sorted(set(union("nfes", cfg.nfes))),
        "seeds": union("seeds", cfg.seeds),
        "sampler_settings": {**(previous or {}).get("sampler_settings", {}), **settings},
        "skipped": {**(previous or {}).get("skipped", {}), **(skipped or {})},
        "common_settings": {**COMMON_SETTINGS, "x0_clipping": loaded.clip_description
                            or COMMON_SETTINGS["x0_clipping"]},
        "noise": "x_T = randn((N, C, H, W)) from torch.Generator().manual_seed(seed) on the CPU, for all samples "
                 "at once; per-step noise from one CPU generator per batch seeded from (seed, first index)",
        "reference": ("exact data samples" if loaded.reference is not None else
                      "1000-step ancestral samples (sampler reference-1000)")
                     + f", {cfg.num_reference} samples, seed {cfg.reference_seed}",
        "created": (previous or {}).get("created", now),
        "updated": now,
        "environment": {"skipstep": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "device": cfg.device, "torch_threads": torch.get_num_threads()},
    }
    rundir.write_config(seal(merged))
    return verified


def _verify_cells(cfg: BenchConfig, loaded: LoadedModel, cells: list[tuple], log: Callable[[str], None]
                  ) -> tuple[list[tuple], list[tuple]]:
    """Split the planned cells into (reused, todo): a finished cell is reused only if its record and samples
    match what was recorded when it was written; a damaged one is recomputed. A damaged or foreign file under
    ``cells/`` that this run would not rewrite is refused, naming it (it would silently vanish from the tables)."""
    reused, todo, planned = [], [], set()
    for cell in cells:
        name, nfe, seed = cell[:3]
        json_path, tensor_path = cell_paths(cfg.out, name, nfe, seed)
        planned.add(json_path)
        if not json_path.exists():
            todo.append(cell)
            continue
        record, reason = read_json_record(json_path)
        problem = reason or check_cell_record(record, json_path, cfg.num_samples, loaded.fingerprint)
        recorded = (record or {}).get("samples_sha256")
        if not problem and recorded and (not tensor_path.is_file() or file_sha256(tensor_path) != recorded):
            problem = f"{tensor_path.name} is missing or differs from the sha256 recorded when it was written"
        if problem:
            log(f"cell {json_path.relative_to(cfg.out)}: {problem}; recomputing it")
            todo.append(cell)
        else:
            reused.append(cell)
    for path in sorted((cfg.out / "cells").glob("*/*.json")):
        if path in planned:
            continue
        record, reason = read_json_record(path)
        problem = reason or check_cell_record(record, path, None, None)
        if problem:
            raise BenchConfigError(f"--out {cfg.out}: {path.relative_to(cfg.out)} is not a finished benchmark "
                                   f"cell ({problem}) and this run would not "
                                   "recompute it; remove the file, or rerun with the sampler, NFE and seed it "
                                   "names")
    return reused, todo


# --------------------------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------------------------

def _plan(cfg: BenchConfig, loaded: LoadedModel) -> tuple[list[tuple[str, int, int, int, int]], dict[str, str]]:
    """Cells ``(sampler, nfe, seed, steps, expected_nfe)`` in run order, and the refused (sampler, NFE) pairs.

    Order: seed, then NFE, then sampler -- samplers of one NFE run back to back, which keeps timing fair."""
    T = loaded.num_train_timesteps
    too_big = [n for n in cfg.nfes if n > T]
    if too_big:
        raise SamplerError(f"--nfe {','.join(map(str, too_big))}: NFE {too_big} exceed the model's {T} training "
                           "timesteps")
    cells, skipped, fixed_done = [], {}, set()
    for seed in cfg.seeds:
        for nfe in cfg.nfes:
            for name in cfg.samplers:
                recipe = get_sampler(name)
                check_sampler_for_model(recipe, loaded.fingerprint, T)
                if recipe.fixed_steps is not None:
                    if (name, seed) in fixed_done:
                        continue
                    fixed_done.add((name, seed))
                    steps, expected = steps_for_nfe(recipe, T, T)
                    cells.append((name, expected, seed, steps, expected))
                    continue
                try:
                    steps, expected = steps_for_nfe(recipe, nfe, T)
                except SamplerError as err:
                    skipped[f"{name} @ NFE {nfe}"] = str(err)
                    continue
                cells.append((name, nfe, seed, steps, expected))
    return cells, skipped

def _warm_up(loaded: LoadedModel, cfg: BenchConfig) -> None:
    """One untimed short run, so that lazy initialisation does not land in the first timed cell."""
    ddim = get_sampler("ddim")
    sample_cell(loaded, ddim, 2, 0, min(cfg.batch_size, cfg.num_samples), cfg.batch_size, cfg.device)

def _floors(cfg: BenchConfig, loaded: LoadedModel, reference: torch.Tensor, ctx: MetricContext) -> list[dict]:
    """What a perfect sampler would score: exact samples vs the reference (analytic models), and real-data
    comparisons (digits)."""
    rows = []
    if loaded.reference is not None:
        per_seed = [ctx(loaded.reference.sample(cfg.num_samples, seed)) for seed in cfg.seeds]
        rows.append({"name": f"exact data samples ({cfg.num_samples} per seed) vs reference",
                     "what": "finite-sample floor: a perfect sampler scores this",
                     "metrics": _mean_std_dicts(per_seed)})
    if loaded.real_data is not None:
        train, heldout = loaded.real_data.get("train"), loaded.real_data.get("heldout")
        if train is not None and heldout is not None:
            rows.append({"name": f"real train ({len(train)}) vs real held-out ({len(heldout)})",
                         "what": "data floor: FD between two real digit sets",
                         "metrics": {k: [v, None] for k, v in _pair_metrics(loaded, train, heldout).items()}})
        if heldout is not None:
            rows.append({"name": f"reference ({len(reference)}) vs real held-out ({len(heldout)})",
                         "what": "how far the model's 1000-step samples are from real data",
                         "metrics": {k: [v, None] for k, v in _pair_metrics(loaded, reference, heldout).items()}})
    return rows

def _mean_std_dicts(dicts: list[dict]) -> dict[str, list[float]]:
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    out = {}
    for k in keys:
        vals = [d[k] for d in dicts if k in d]
        out[k] = [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None]
    return out

def run_bench(cfg: BenchConfig, on_cell_done: Callable[[dict], None] | None = None,
              log: Callable[[str], None] | None = print) -> BenchResult:
    """Run (or resume) a benchmark and write all outputs into ``cfg.out``; returns the records."""
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    stop_after = env_int(STOP_AFTER_ENV, 0)
    loaded = load_model(cfg.model, device=cfg.device)
    loaded.clip_description = apply_clip_mode(loaded, cfg.clip)
    for note in loaded.notes:
        log(f"note: {note}")
    if cfg.fid_features:
        use_feature_network(loaded, cfg.fid_features, cfg.device, cfg.inception_weights)
    cells, skipped = _plan(cfg, loaded)
    if not cells:
        raise BenchConfigError("nothing to compute: every requested cell is below its sampler's order ("
                               + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "); choose a larger --nfe")
    rundir = run_directory(cfg.out)
    try:
        reused, todo = _prepare_dir(cfg, loaded, rundir, cells, skipped, log)  # refusals before any sampling
        return _run_cells(cfg, loaded, reused, todo, skipped, on_cell_done, log, t_start, stop_after)
    finally:
        rundir.release()


def _run_cells(cfg: BenchConfig, loaded: LoadedModel, reused: list[tuple], todo: list[tuple],
               skipped: dict[str, str], on_cell_done, log: Callable[[str], None], t_start: float,
               stop_after: int) -> BenchResult:
    for key, reason in skipped.items():
        log(f"skipped {key}: {reason}")
    reference, ref_meta = reference_samples(loaded, cfg.num_reference, cfg.reference_seed, cfg.out / "reference",
                                             cfg.batch_size, cfg.device, cfg.progress, log)
    ctx = MetricContext(loaded, reference)
    if cfg.fid_reference:
        ctx.fid_reference_stats, _ = load_reference_stats(cfg.fid_reference, loaded.feature_fn)
    run_id = uuid.uuid4().hex[:8]
    result = BenchResult(records=[], skipped=skipped, out=cfg.out)
    result.reused = [_cell_key(c[0], c[1], c[2]) for c in reused]
    if todo:
        _warm_up(loaded, cfg)
    bar = tqdm(todo, disable=not cfg.progress, desc="cells", unit="cell")
    for name, nfe, seed, steps, expected in bar:
        sampler = get_sampler(name)
        bar.set_postfix_str(f"{name} nfe={nfe} seed={seed}")
        cell = sample_cell(loaded, sampler, steps, seed, cfg.num_samples, cfg.batch_size, cfg.device,
                           progress=cfg.progress and steps >= 200, desc=name)
        if cell.actual_nfe != expected:
            raise RuntimeError(f"{name}: expected {expected} NFE for {steps} steps, counted {cell.actual_nfe}")
        record = {
            "model": loaded.name,
            "sampler": name,
            "nfe": int(nfe),
            "seed": int(seed),
            "num_samples": cfg.num_samples,
            "metrics": ctx(cell.samples),
            "seconds": cell.seconds,
            "actual_nfe": cell.actual_nfe,
            "num_inference_steps": steps,
            "seconds_per_sample": cell.seconds / cfg.num_samples,
            "family": sampler.family,
            "stochastic": sampler.stochastic,
            "model_fingerprint": loaded.fingerprint,
            "batch_size": cfg.batch_size,
            "device": cfg.device,
            "run_id": run_id,
            "finished_at": now_utc(),
        }
        json_path, tensor_path = cell_paths(cfg.out, name, nfe, seed)
        record["samples_sha256"] = save_tensor(tensor_path, cell.samples[:GRID_COUNT])
        record = seal(record)
        atomic_write_json(json_path, record)
        result.computed.append(_cell_key(name, nfe, seed))
        if on_cell_done is not None:
            on_cell_done(record)
        if stop_after and len(result.computed) >= stop_after:
            raise BenchInterrupted(f"stopped after {len(result.computed)} cells ({STOP_AFTER_ENV}={stop_after})")
    bar.close()
    floors = _floors(cfg, loaded, reference, ctx)
    atomic_write_json(cfg.out / "floors.json", {"reference": ref_meta, "floors": floors,
                                                 "main_metric": ctx.main_metric})
    result.records = write_outputs(cfg.out, log=log)
    result.markdown = (cfg.out / "results.md").read_text()
    result.seconds = time.perf_counter() - t_start
    return result


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------

class ListOrChooseSamplers(argparse.Action):
    """``--samplers LIST`` chooses samplers; ``--samplers`` alone prints every sampler with its meaning and exits."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            print(format_sampler_list())
            parser.exit(0)
        setattr(namespace, self.dest, name_list(values))


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="side-by-side benchmark of samplers on one model",
        description="Run every (sampler, NFE, seed) cell with the same initial noise, score it against a reference "
                    "set and write results.json, results.md, quality_vs_nfe.png and sample grids into --out. "
                    "Resumable: finished cells are verified and reused. `skipstep bench --samplers` lists every "
                    "sampler.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="gmm, digits, or a path to a local diffusers directory (required)")
    p.add_argument("--samplers", nargs="?", action=ListOrChooseSamplers,
                   default=["skipstep", "skipstep-ddim", "ddim", "dpmpp-2m", "unipc"],
                   help="comma-separated sampler names, the groups all / ours / peers, or tuned:FILE.json; alone "
                        "(no value) it lists every sampler with its meaning")
    p.add_argument("--nfe", type=positive_int_list, default=[5, 10, 20, 50, 100],
                   help="comma-separated network evaluations per sample (positive; cells below a sampler's order "
                        "are skipped with the reason)")
    p.add_argument("--num-samples", type=positive_int, default=1000, help="samples per cell (at least 4)")
    p.add_argument("--seed", "--seeds", dest="seeds", type=seed_list, default=[0],
                   help="comma-separated seeds, 0 <= seed < 2**63 (tables show mean ± std over seeds)")
    p.add_argument("--num-reference", type=positive_int, default=None,
                   help="reference-set size (default: --num-samples)")
    p.add_argument("--out", type=Path, default=Path("skipstep-bench"),
                   help="output directory: new or empty, or an earlier benchmark directory to resume or extend")
    p.add_argument("--overwrite", action="store_true",
                   help="discard results of a different configuration in --out (only files the benchmark wrote "
                        "there are removed; a directory skipstep did not create is always refused)")
    add_common_run_args(p)
    p.add_argument("--fid-features", default=None,
                   help="feature network for FD: inception (local weights only), digits, a TorchScript file or "
                        "module:function (default: the model's own, the digit classifier for 8x8 models)")
    p.add_argument("--fid-reference", default=None,
                   help="also report fid_ref: FD vs this reference (statistics .npz, generate output directory, "
                        "image folder or .safetensors samples) in the --fid-features space (default: none)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 weights (never downloaded; default: $SKIPSTEP_INCEPTION_WEIGHTS or "
                        "torch's hub cache)")
    p.set_defaults(func=main_bench)


def main_bench(args: argparse.Namespace) -> int:
    apply_threads(args)
    cfg = BenchConfig(model=args.model, samplers=args.samplers, nfes=args.nfe, seeds=args.seeds,
                      num_samples=args.num_samples, out=args.out, batch_size=args.batch_size, device=args.device,
                      num_reference=args.num_reference, progress=not args.no_progress, overwrite=args.overwrite,
                      clip=args.clip, fid_features=args.fid_features, fid_reference=args.fid_reference,
                      inception_weights=args.inception_weights)
    result = run_bench(cfg)
    print(result.markdown.split("## All metrics")[0].rstrip())
    print(f"\n{len(result.computed)} cells computed, {len(result.reused)} reused, {len(result.skipped)} skipped; "
          f"{result.seconds:.1f} s. Outputs in {cfg.out}/ (results.md, results.json, quality_vs_nfe.png, grids/)")
    return 0
