"""Side-by-side benchmark: our samplers and diffusers' schedulers on one model, same noise, same sample count.

``skipstep bench --model gmm --samplers skipstep,ddim,dpmpp-2m --nfe 5,10,20 --num-samples 1000 --seed 0,1 --out DIR``

Protocol (see ``docs/bench.md``):

* every (sampler, NFE, seed) cell starts from the same ``x_T`` for a seed (``randn`` from a CPU generator seeded
  with the seed, drawn for all samples at once) and gets the same per-step noise seeding (one CPU generator per
  batch, seeded from the seed and the batch's first index);
* every sampler is driven by the one standard diffusers loop (:func:`skipstep.samplers.run_standard_loop`) and
  its NFE is counted by wrapping the model;
* quality is measured against a reference set drawn once per output directory with its own seed: exact data
  samples for analytic models (``gmm``), the model's own 1000-step ancestral samples otherwise;
* wall-clock time covers the sampling loop only; ratios against DDIM are taken from cells of the same run.

Each finished cell is written atomically to ``DIR/cells/<sampler>/nfe<N>_seed<S>.json`` (plus the first
samples for grids), so an interrupted run resumes where it stopped. ``DIR/config.json`` pins the configuration.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import metrics as M
from .models import ModelSpec, load_model
from .samplers import (
    COMMON_SETTINGS,
    CallCounter,
    SamplerError,
    SamplerSpec,
    available_samplers,
    build_scheduler,
    scheduler_config_for,
    check_sampler_for_model,
    get_sampler,
    run_standard_loop,
    steps_for_nfe,
)

__all__ = [
    "BenchConfig",
    "BenchConfigError",
    "BenchInterrupted",
    "BenchResult",
    "add_subcommand",
    "expand_sampler_names",
    "initial_noise",
    "run_bench",
    "save_grid",
]

PROTOCOL_VERSION = 1
#: Seed of the reference set (kept apart from the sampler seeds so the comparison is between independent sets).
REFERENCE_SEED = 1_000_003
DEFAULT_BATCH_SIZE = 500
GRID_COUNT = 64
#: Set to N to stop a run with :class:`BenchInterrupted` after N freshly computed cells (testing resumption).
STOP_AFTER_ENV = "SKIPSTEP_BENCH_STOP_AFTER"
SW_PROJECTIONS = 256
PR_K = 3
#: Precision/recall in pixel space is skipped above this many dimensions (it is O(N^2 D)).
PR_PIXEL_MAX_DIM = 4096

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


CLIP_MODES = ("model", "on", "off")


def apply_clip_mode(spec: ModelSpec, mode: str) -> str:
    """Set ``clip_sample`` in the model's scheduler config for ``--clip`` (``model`` keeps it); every sampler
    reads it from there (:func:`skipstep.samplers.clip_overrides`). Returns a description for the outputs."""
    if mode not in CLIP_MODES:
        raise ValueError(f"--clip must be one of {CLIP_MODES}, got {mode!r}")
    if mode != "model":
        spec.scheduler_config = {**spec.scheduler_config, "clip_sample": mode == "on"}
    on = bool(spec.scheduler_config.get("clip_sample", False))
    rng = float(spec.scheduler_config.get("clip_sample_range", 1.0) or 1.0)
    origin = "the model's scheduler config" if mode == "model" else f"--clip {mode}"
    return (f"x0_hat clipped to [-{rng:g}, {rng:g}] ({origin}) by every sampler that can clip "
            "(clip_sample: ours, DDPM, DDIM, Heun; thresholding with sample_max_value: DPM-Solver, UniPC, DEIS; "
            "Euler, Euler-ancestral and PNDM cannot)") if on else f"no x0_hat clipping ({origin})"


class BenchConfigError(ValueError):
    """The output directory holds results of a different configuration (or is not a benchmark directory)."""


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
    fid_features: str | None = None  # a feature network for FD (skipstep.fid.resolve_feature_extractor)
    fid_reference: str | None = None  # external reference for the fid_ref metric (stats .npz or samples)
    inception_weights: str | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        self.samplers = expand_sampler_names(self.samplers)
        self.nfes = sorted({int(n) for n in self.nfes})
        self.seeds = list(dict.fromkeys(int(s) for s in self.seeds))
        if not self.samplers:
            raise ValueError("give at least one sampler")
        if not self.nfes:
            raise ValueError("give at least one NFE")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if int(self.num_samples) < 4:
            raise ValueError(f"--num-samples must be >= 4 (metrics need several samples), got {self.num_samples}")
        self.num_samples = int(self.num_samples)
        if int(self.batch_size) < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.batch_size = int(self.batch_size)
        self.num_reference = int(self.num_reference or self.num_samples)
        if self.num_reference < 4:
            raise ValueError("the reference set needs >= 4 samples")
        if self.clip not in CLIP_MODES:
            raise ValueError(f"--clip must be one of {CLIP_MODES}, got {self.clip!r}")
        if self.reference_seed in self.seeds:
            raise ValueError(f"seed {self.reference_seed} is the reference set's seed; choose other seeds so the "
                             "samples are independent of the reference")


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
    from .samplers import _SAMPLERS  # registry view

    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in ("all", "ours", "peers"):
            fam = {"ours": ("skipstep",), "peers": ("diffusers",), "all": ("skipstep", "diffusers")}[name]
            out += [n for n, s in _SAMPLERS.items() if s.family in fam]
        else:
            get_sampler(name)
            out.append(name)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------------------
# noise and sampling
# --------------------------------------------------------------------------------------------------------------
def initial_noise(seed: int, num_samples: int, shape: Sequence[int]) -> torch.Tensor:
    """``x_T`` for a seed: ``randn((N, *shape))`` from a CPU generator seeded with ``seed`` (float32)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(num_samples), *shape), generator=g, dtype=torch.float32)


def step_generator(seed: int, batch_start: int) -> torch.Generator:
    """The per-step noise generator of the batch starting at ``batch_start`` (a CPU generator)."""
    digest = hashlib.sha256(f"skipstep-steps:{int(seed)}:{int(batch_start)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class SampledCell:
    samples: torch.Tensor
    seconds: float
    actual_nfe: int
    num_steps: int


def sample_cell(spec: ModelSpec, sampler: SamplerSpec, num_steps: int, seed: int, num_samples: int,
                batch_size: int, device: str, progress: bool = False, desc: str = "steps") -> SampledCell:
    """Draw ``num_samples`` with one sampler (batched); time the sampling loops only and count NFE."""
    noise = initial_noise(seed, num_samples, spec.sample_shape)
    counter = CallCounter(spec.model)
    chunks, seconds, nfes = [], 0.0, []
    for start in range(0, num_samples, batch_size):
        sched = build_scheduler(sampler, scheduler_config_for(sampler, spec), num_steps)
        x_t = noise[start:start + batch_size].to(device)
        gen = step_generator(seed, start)
        before = counter.calls
        _sync(device)
        t0 = time.perf_counter()
        x = run_standard_loop(sched, counter, x_t, num_steps, generator=gen, progress=progress, desc=desc)
        _sync(device)
        seconds += time.perf_counter() - t0
        nfes.append(counter.calls - before)
        chunks.append(x.detach().float().cpu())
    if len(set(nfes)) != 1:
        raise RuntimeError(f"sampler {sampler.name} used a different NFE per batch: {nfes}")
    return SampledCell(torch.cat(chunks), seconds, nfes[0], num_steps)


# --------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------
class MetricContext:
    """Reference-side quantities computed once per run (features, Gaussian statistics)."""

    def __init__(self, spec: ModelSpec, reference: torch.Tensor):
        self.spec = spec
        self.reference = reference
        self.dim = int(np.prod(spec.sample_shape))
        self.ref_feats = self._features(reference) if spec.feature_fn is not None else None
        self.ref_stats = M.gaussian_stats(self.ref_feats) if self.ref_feats is not None else None
        self.heldout_stats = None
        if spec.real_data is not None and spec.feature_fn is not None and "heldout" in spec.real_data:
            self.heldout_stats = M.gaussian_stats(self._features(spec.real_data["heldout"]))

    def _features(self, x: torch.Tensor) -> np.ndarray:
        return M.compute_features(x, self.spec.feature_fn, batch_size=1000)

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
        if self.spec.reference is not None:
            out.update(self.spec.reference.metrics(samples))
        return {k: float(v) for k, v in out.items()}


def _pair_metrics(spec: ModelSpec, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    out = {"sw": M.sliced_wasserstein(a, b, num_projections=SW_PROJECTIONS, seed=0)}
    if spec.feature_fn is not None:
        fa = M.compute_features(a, spec.feature_fn, 1000)
        fb = M.compute_features(b, spec.feature_fn, 1000)
        out["fd"] = M.frechet_distance(fa, fb)
    return out


# --------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------
def read_pinned_config(config_file: Path, overwrite: bool, error: type[Exception]) -> dict | None:
    """The configuration an output directory was made with (its config.json), or None if it has none; a corrupt
    file raises ``error`` unless ``overwrite`` (then it is treated as absent)."""
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if not overwrite:
            raise error(f"{config_file} is corrupt ({err}); use --overwrite to start afresh") from err
        return None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if callable(obj):
        return getattr(obj, "__name__", repr(obj))
    return str(obj)


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    from safetensors.torch import save

    _atomic_write_bytes(path, save({"samples": tensor.contiguous().float().cpu()}))


def _load_tensor(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["samples"]


def _cell_key(sampler: str, nfe: int, seed: int) -> str:
    return f"{sampler}/nfe{nfe}_seed{seed}"


def _fs_name(sampler: str) -> str:
    """A sampler name as one path component (``tuned:dir/x.json`` names hold separators)."""
    return sampler.replace("/", "%2F").replace(os.sep, "%2F")


def _cell_paths(out: Path, sampler: str, nfe: int, seed: int) -> tuple[Path, Path]:
    base = out / "cells" / _fs_name(sampler) / f"nfe{nfe}_seed{seed}"
    return base.with_suffix(".json"), base.with_suffix(".safetensors")


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
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg

    path = Path(path)
    grid = to_image_grid(samples, ncols=ncols)
    buf = io.BytesIO()
    mpimg.imsave(buf, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, format="png")
    _atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------------------------------
_OWNED = ("cells", "reference", "grids", "results.json", "results.md", "quality_vs_nfe.png", "floors.json",
          "config.json")


def _identity(cfg: BenchConfig, spec: ModelSpec) -> dict[str, Any]:
    """What must match for cells to be reused (samplers, NFEs and seeds may be added)."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "model": spec.name,
        "model_fingerprint": spec.fingerprint,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,  # fixes the per-step noise streams
        "num_reference": cfg.num_reference,
        "reference_seed": cfg.reference_seed,
        "x0_clip": bool(spec.scheduler_config.get("clip_sample", False)),
        # the chosen feature network changes every FD (present only when chosen: older directories stay valid)
        **({"fid_features": getattr(spec.feature_fn, "fingerprint", cfg.fid_features)} if cfg.fid_features else {}),
        **({"fid_reference": str(cfg.fid_reference)} if cfg.fid_reference else {}),
    }


def sampler_settings(spec: SamplerSpec) -> dict[str, Any]:
    settings = {}
    for k, v in spec.settings.items():
        if v in ("DEFAULT_ETA", "DEFAULT_SOLVER_ORDER"):  # the 'default' sampler: record what it resolves to
            from . import sampling

            v = getattr(sampling, v)
        settings[k] = v
    return settings


def _prepare_dir(cfg: BenchConfig, spec: ModelSpec, skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """Check ``cfg.out`` against its config.json; return the merged config to write."""
    out = cfg.out
    identity = _identity(cfg, spec)
    settings = {name: sampler_settings(get_sampler(name)) for name in cfg.samplers}
    config_file = out / "config.json"
    previous = read_pinned_config(config_file, cfg.overwrite, BenchConfigError)
    if not config_file.is_file() and out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise BenchConfigError(f"{out} is not empty and holds no skipstep benchmark (no config.json); choose "
                               "another --out or pass --overwrite")
    if previous is not None:
        diffs = []
        old_id = previous.get("identity", {})
        for key, value in identity.items():
            if old_id.get(key) != value:
                diffs.append(f"{key}: {old_id.get(key)!r} -> {value!r}")
        old_settings = previous.get("sampler_settings", {})
        for name, s in settings.items():
            if name in old_settings and json.loads(json.dumps(old_settings[name], default=str)) != json.loads(
                    json.dumps(s, default=str)):
                diffs.append(f"settings of sampler {name!r} changed: {old_settings[name]} -> {s}")
        if diffs:
            if not cfg.overwrite:
                raise BenchConfigError(
                    f"{out} holds results of a different configuration ({'; '.join(diffs)}). Pass --overwrite to "
                    "discard them, or choose another --out. (Adding samplers, NFEs or seeds to the same "
                    "model/num-samples is allowed and reuses finished cells.)")
            previous = None
    if cfg.overwrite and previous is None and config_file.is_file():
        # only a directory we wrote (it has our config.json) is cleaned, and only of the files we write
        for name in _OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def union(key, new):
        old = (previous or {}).get(key, [])
        return list(dict.fromkeys(list(old) + list(new)))

    import diffusers

    from . import __version__

    merged = {
        "identity": identity,
        "model": spec.info(),
        "samplers": union("samplers", cfg.samplers),
        "nfes": sorted(set(union("nfes", cfg.nfes))),
        "seeds": union("seeds", cfg.seeds),
        "sampler_settings": {**(previous or {}).get("sampler_settings", {}), **settings},
        "skipped": {**(previous or {}).get("skipped", {}), **(skipped or {})},
        "common_settings": {**COMMON_SETTINGS, "x0_clipping": spec.clip_description
                            or COMMON_SETTINGS["x0_clipping"]},
        "noise": "x_T = randn((N, C, H, W)) from torch.Generator().manual_seed(seed) on the CPU, for all samples "
                 "at once; per-step noise from one CPU generator per batch seeded from (seed, first index)",
        "reference": ("exact data samples" if spec.reference is not None else
                      "1000-step ancestral samples (sampler reference-1000)")
                     + f", {cfg.num_reference} samples, seed {cfg.reference_seed}",
        "created": (previous or {}).get("created", now),
        "updated": now,
        "environment": {"skipstep": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "device": cfg.device, "torch_threads": torch.get_num_threads()},
    }
    _atomic_write_json(config_file, merged)
    return merged


# --------------------------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------------------------
def _plan(cfg: BenchConfig, spec: ModelSpec) -> tuple[list[tuple[str, int, int, int, int]], dict[str, str]]:
    """Cells ``(sampler, nfe, seed, steps, expected_nfe)`` in run order, and the refused (sampler, NFE) pairs.

    Order: seed, then NFE, then sampler -- samplers of one NFE run back to back, which keeps timing fair."""
    T = spec.num_train_timesteps
    too_big = [n for n in cfg.nfes if n > T]
    if too_big:
        raise SamplerError(f"NFE {too_big} exceed the model's {T} training timesteps")
    cells, skipped, fixed_done = [], {}, set()
    for seed in cfg.seeds:
        for nfe in cfg.nfes:
            for name in cfg.samplers:
                spec_s = get_sampler(name)
                check_sampler_for_model(spec_s, spec.fingerprint, T)
                if spec_s.fixed_steps is not None:
                    if (name, seed) in fixed_done:
                        continue
                    fixed_done.add((name, seed))
                    steps, expected = steps_for_nfe(spec_s, T, T)
                    cells.append((name, expected, seed, steps, expected))
                    continue
                try:
                    steps, expected = steps_for_nfe(spec_s, nfe, T)
                except SamplerError as err:
                    skipped[f"{name} @ NFE {nfe}"] = str(err)
                    continue
                cells.append((name, nfe, seed, steps, expected))
    return cells, skipped


def _reference(cfg: BenchConfig, spec: ModelSpec, progress: bool) -> tuple[torch.Tensor, dict]:
    """The reference set: cached in DIR/reference, else exact draws (analytic models) or 1000-step samples."""
    ref_dir = cfg.out / "reference"
    data_file, meta_file = ref_dir / "reference.safetensors", ref_dir / "reference.json"
    if data_file.is_file() and meta_file.is_file():
        return _load_tensor(data_file), json.loads(meta_file.read_text())
    t0 = time.perf_counter()
    if spec.reference is not None:
        samples = spec.reference.sample(cfg.num_reference, cfg.reference_seed).float()
        meta = {"source": "exact data samples", "seconds": time.perf_counter() - t0}
    else:
        ref = get_sampler("reference-1000")
        steps, _ = steps_for_nfe(ref, spec.num_train_timesteps, spec.num_train_timesteps)
        if progress:
            print(f"reference: {cfg.num_reference} samples with {steps}-step ancestral sampling (cached in {ref_dir})")
        cell = sample_cell(spec, ref, steps, cfg.reference_seed, cfg.num_reference, cfg.batch_size, cfg.device,
                           progress=progress, desc="reference")
        samples = cell.samples
        meta = {"source": f"{steps}-step ancestral samples (reference-1000)", "seconds": cell.seconds,
                "actual_nfe": cell.actual_nfe}
    meta.update({"num_samples": int(samples.shape[0]), "seed": cfg.reference_seed})
    _save_tensor(data_file, samples)
    _atomic_write_json(meta_file, meta)
    return samples, meta


def _warm_up(spec: ModelSpec, cfg: BenchConfig) -> None:
    """One untimed short run, so that lazy initialisation does not land in the first timed cell."""
    ddim = get_sampler("ddim")
    sample_cell(spec, ddim, 2, 0, min(cfg.batch_size, cfg.num_samples), cfg.batch_size, cfg.device)


def _floors(cfg: BenchConfig, spec: ModelSpec, reference: torch.Tensor, ctx: MetricContext) -> list[dict]:
    """What a perfect sampler would score: exact samples vs the reference (analytic models), and real-data
    comparisons (digits)."""
    rows = []
    if spec.reference is not None:
        per_seed = [ctx(spec.reference.sample(cfg.num_samples, seed)) for seed in cfg.seeds]
        rows.append({"name": f"exact data samples ({cfg.num_samples} per seed) vs reference",
                     "what": "finite-sample floor: a perfect sampler scores this",
                     "metrics": _mean_std_dicts(per_seed)})
    if spec.real_data is not None:
        train, heldout = spec.real_data.get("train"), spec.real_data.get("heldout")
        if train is not None and heldout is not None:
            rows.append({"name": f"real train ({len(train)}) vs real held-out ({len(heldout)})",
                         "what": "data floor: FD between two real digit sets",
                         "metrics": {k: [v, None] for k, v in _pair_metrics(spec, train, heldout).items()}})
        if heldout is not None:
            rows.append({"name": f"reference ({len(reference)}) vs real held-out ({len(heldout)})",
                         "what": "how far the model's 1000-step samples are from real data",
                         "metrics": {k: [v, None] for k, v in _pair_metrics(spec, reference, heldout).items()}})
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
    from tqdm.auto import tqdm

    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    spec = load_model(cfg.model, device=cfg.device)
    spec.clip_description = apply_clip_mode(spec, cfg.clip)
    if cfg.fid_features:
        from .fid import use_feature_network

        use_feature_network(spec, cfg.fid_features, cfg.device, cfg.inception_weights)
    cells, skipped = _plan(cfg, spec)
    _prepare_dir(cfg, spec, skipped)
    for key, reason in skipped.items():
        log(f"skipped {key}: {reason}")
    reference, ref_meta = _reference(cfg, spec, cfg.progress)
    ctx = MetricContext(spec, reference)
    if cfg.fid_reference:
        from .fid import load_reference_stats

        if not cfg.fid_features:
            raise BenchConfigError("--fid-reference needs --fid-features (the feature network to compare in)")
        ctx.fid_reference_stats, _ = load_reference_stats(cfg.fid_reference, spec.feature_fn)
    run_id = uuid.uuid4().hex[:8]
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    result = BenchResult(records=[], skipped=skipped, out=cfg.out)
    todo = []
    for cell in cells:
        name, nfe, seed, steps, expected = cell
        json_path, _ = _cell_paths(cfg.out, name, nfe, seed)
        (result.reused if json_path.is_file() else todo).append(cell)
    result.reused = [_cell_key(c[0], c[1], c[2]) for c in result.reused]
    if todo:
        _warm_up(spec, cfg)
    bar = tqdm(todo, disable=not cfg.progress, desc="cells", unit="cell")
    for name, nfe, seed, steps, expected in bar:
        sampler = get_sampler(name)
        bar.set_postfix_str(f"{name} nfe={nfe} seed={seed}")
        cell = sample_cell(spec, sampler, steps, seed, cfg.num_samples, cfg.batch_size, cfg.device,
                           progress=cfg.progress and steps >= 200, desc=name)
        if cell.actual_nfe != expected:
            raise RuntimeError(f"{name}: expected {expected} NFE for {steps} steps, counted {cell.actual_nfe}")
        record = {
            "model": spec.name,
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
            "model_fingerprint": spec.fingerprint,
            "batch_size": cfg.batch_size,
            "device": cfg.device,
            "run_id": run_id,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        json_path, tensor_path = _cell_paths(cfg.out, name, nfe, seed)
        _save_tensor(tensor_path, cell.samples[:GRID_COUNT])
        _atomic_write_json(json_path, record)
        result.computed.append(_cell_key(name, nfe, seed))
        if on_cell_done is not None:
            on_cell_done(record)
        if stop_after and len(result.computed) >= stop_after:
            raise BenchInterrupted(f"stopped after {len(result.computed)} cells ({STOP_AFTER_ENV}={stop_after})")
    bar.close()
    floors = _floors(cfg, spec, reference, ctx)
    _atomic_write_json(cfg.out / "floors.json", {"reference": ref_meta, "floors": floors,
                                                 "main_metric": ctx.main_metric})
    result.records = write_outputs(cfg.out, log=log)
    result.markdown = (cfg.out / "results.md").read_text()
    result.seconds = time.perf_counter() - t_start
    return result


# --------------------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------------------
def load_records(out: Path) -> list[dict]:
    """All finished cells of a directory, ordered by the config's sampler order, NFE and seed."""
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    order = {name: i for i, name in enumerate(config.get("samplers", []))}
    records = []
    for path in sorted((out / "cells").glob("*/*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn file cannot exist (atomic writes); ignore foreign junk
    records.sort(key=lambda r: (order.get(r["sampler"], len(order)), r["nfe"], r["seed"]))
    return records


def _fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
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
            cell = "—" if st is None else _fmt(*st)
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
            lines += [f"Below the exact-data floor ({_fmt(*exact_floor)}): {', '.join(below)}. Scoring better than "
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
            vals.append("—" if st is None else _fmt(*st))
        ms = _fmt(1000 * float(np.mean([r["seconds_per_sample"] for r in rs])))
        lines.append(f"| {name} | {n} | {rs[0].get('actual_nfe', n)} | " + " | ".join(vals) + f" | {ms} |")
    lines += ["", "Arrows: " + ", ".join(f"{m} {'↓' if LOWER_IS_BETTER.get(m) else ('↑' if LOWER_IS_BETTER.get(m) is False else '→1')}"
                                         for m in metric_names), ""]
    if refs or floors.get("floors"):
        lines += ["## Reference and floors", "",
                  "| what | " + " | ".join(metric_names) + " | note |", "|---|" + "---:|" * len(metric_names) + "---|"]
        for (name, n), rs in groups.items():
            if rs[0].get("family") != "reference":
                continue
            vals = ["—" if _stat(rs, m) is None else _fmt(*_stat(rs, m)) for m in metric_names]
            lines.append(f"| {name} (seeds {sorted(r['seed'] for r in rs)}) | " + " | ".join(vals)
                         + " | independent 1000-step set vs the reference: the finite-sample floor |")
        for row in floors.get("floors", []):
            vals = ["—" if m not in row["metrics"] else _fmt(*row["metrics"][m]) for m in metric_names]
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
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write_bytes(path, buf.getvalue())
    return path


def write_grids(out: Path, records: list[dict]) -> list[Path]:
    paths = []
    first_seed: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r["sampler"], r["nfe"])
        first_seed[key] = min(first_seed.get(key, r["seed"]), r["seed"])
    for (name, nfe), seed in first_seed.items():
        _, tensor_path = _cell_paths(out, name, nfe, seed)
        if tensor_path.is_file():
            paths.append(save_grid(_load_tensor(tensor_path)[:GRID_COUNT],
                                   out / "grids" / f"{_fs_name(name)}_nfe{nfe}.png"))
    ref = out / "reference" / "reference.safetensors"
    if ref.is_file():
        paths.append(save_grid(_load_tensor(ref)[:GRID_COUNT], out / "grids" / "reference.png"))
    return paths


def write_outputs(out: Path, log: Callable[[str], None] | None = None) -> list[dict]:
    """(Re)write results.json, results.md, quality_vs_nfe.png and the grids from the finished cells."""
    out = Path(out)
    records = load_records(out)
    _atomic_write_json(out / "results.json", records)
    _atomic_write_bytes(out / "results.md", render_markdown(out, records).encode())
    if records:
        plot_quality(out, records)
        write_grids(out, records)
    return records


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...); default cpu")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"samples per batch (default {DEFAULT_BATCH_SIZE}; part of the configuration because it "
                        "fixes the per-step noise streams)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--clip", choices=CLIP_MODES, default="model",
                   help="clip x0_hat to the data range: as the model's scheduler config says (clip_sample), or "
                        "force it on/off for every sampler that can clip")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op CPU threads (default 1: on a busy machine oversubscribed threads made the "
                        "digits UNet 15-30x slower; 0 keeps torch's default)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (0 or absent: leave torch's default)."""
    threads = getattr(args, "threads", 0)
    if threads and threads > 0:
        torch.set_num_threads(int(threads))


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="side-by-side benchmark of samplers on one model",
        description="Run every (sampler, NFE, seed) cell with the same initial noise, score it against a reference "
                    "set and write results.json, results.md, quality_vs_nfe.png and sample grids into --out. "
                    "Resumable: finished cells are reused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="gmm, digits, or a path to a local diffusers directory")
    p.add_argument("--samplers", type=_name_list, default=["skipstep", "skipstep-ddim", "ddim", "dpmpp-2m", "unipc"],
                   help="comma-separated sampler names, or the groups all / ours / peers. Available: "
                        + ", ".join(available_samplers()))
    p.add_argument("--nfe", type=_int_list, default=[5, 10, 20, 50, 100], help="comma-separated NFE values")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per cell")
    p.add_argument("--seed", "--seeds", dest="seeds", type=_int_list, default=[0], help="comma-separated seeds")
    p.add_argument("--num-reference", type=int, default=None, help="reference-set size (default: --num-samples)")
    p.add_argument("--out", type=Path, default=Path("skipstep-bench"), help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="discard results of a different configuration in --out")
    add_common_run_args(p)
    p.add_argument("--fid-features", default=None,
                   help="feature network for FD: inception (local weights only), digits, a TorchScript file or "
                        "module:function (default: the model's own, the digit classifier for 8x8 models)")
    p.add_argument("--fid-reference", default=None,
                   help="also report fid_ref: FD vs this reference (statistics .npz, generate output directory, "
                        "image folder or .safetensors samples) in the --fid-features space")
    p.add_argument("--inception-weights", default=None, help="local Inception-v3 weights (never downloaded)")
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
