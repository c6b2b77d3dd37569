"""Side-by-side benchmark: our samplers and the peers on one model, same noise, same sample count.

``skipstep bench --model gmm --samplers skipstep,ddim,dpmpp-2m --nfe 5,10,20 --num-samples 1000 --seed 0,1 --out DIR``

Protocol (see ``docs/bench.md``):

* every (sampler, NFE, seed) cell starts from the same ``x_T`` for a seed (``randn`` from a CPU generator seeded
  with the seed, drawn for all samples at once) and gets the same per-step noise seeding (one CPU generator per
  batch, seeded from the seed and the batch's first index); a class-conditional model's sample ``i`` asks for
  label ``real_labels[i mod K]`` in every cell;
* a class-conditional model runs once per guidance scale (``--guidance-scale 1,2,4``): each scale is its own set
  of cells and its own reference set;
* every sampler is driven by the one standard loop (:func:`skipstep.lab.sampler_registry.run_standard_loop`) and
  its NFE is counted by wrapping the model (a batched CFG call is one NFE, ``network_calls_unbatched`` = 2 NFE);
* quality is measured against a reference set per guidance scale, drawn once with its own seed and cached
  (:func:`skipstep.lab.sample_sets.reference_samples`): exact data samples for analytic models, the model's own
  converged samples otherwise (1000-step ancestral for VP, 1000-step FlowMatchEuler for flow models);
* wall-clock time covers the sampling loop only; ratios against DDIM (FlowMatchEuler for flow models) are taken
  from cells of the same run.

Each finished cell is written atomically to ``DIR/cells/<sampler>/nfe<N>_seed<S>[_w<W>].json`` (plus the first
samples for grids), so an interrupted run resumes where it stopped. ``DIR/config.json`` pins the configuration.
"""

from __future__ import annotations

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
from .bench_metrics import MetricContext, floors
from .bench_report import GRID_COUNT, cell_paths, check_cell_record, write_outputs
from .cli_args import DEFAULT_BATCH_SIZE, check_device, check_seed
from .conditioning import check_guidance_scale
from .fid import load_reference_stats, use_feature_network
from .models import CLIP_MODES, LoadedModel, apply_clip_mode, load_model
from .run_dirs import RunDirectory, RunDirectoryError, identity_differences, now_utc, read_json_record, save_tensor, seal
from .sample_sets import REFERENCE_SEED, SampledCell, reference_samples, sample_cell
from .sampler_registry import (COMMON_SETTINGS, SamplerError, check_sampler_for_model, enumerate_peers, get_sampler,
                               sampler_names, sampler_refusal, sampler_settings, steps_for_nfe)

__all__ = ["BenchConfig", "BenchConfigError", "BenchInterrupted", "BenchResult", "MetricContext", "PEER_SPACINGS",
           "apply_clip_mode", "default_samplers", "expand_sampler_names", "run_bench", "sample_cell"]

PROTOCOL_VERSION = 1

#: Set to N to stop a run with :class:`BenchInterrupted` after N freshly computed cells (testing resumption).
STOP_AFTER_ENV = "SKIPSTEP_BENCH_STOP_AFTER"
#: ``--peer-spacing``: the peers' timesteps from the model's own timestep_spacing, or trailing
PEER_SPACINGS = ("config", "trailing")
GROUPS = ("all", "ours", "peers", "candidates")


class BenchConfigError(ValueError):
    """The output directory holds results of a different configuration (or is not a benchmark directory)."""


#: What the benchmark writes into its directory (``--overwrite`` removes these and nothing else).
OWNED_NAMES = ("cells", "reference", "grids", "results.json", "results.md", "quality_vs_nfe.png",
               "quality_vs_nfe_w*.png", "floors.json", "config.json")


def run_directory(out: Path) -> RunDirectory:
    """The run directory of a benchmark (marker, lock, owned names: :mod:`skipstep.lab.run_dirs`)."""
    return RunDirectory(out, "bench", OWNED_NAMES, legacy_identity_key="protocol_version")


class BenchInterrupted(RuntimeError):
    """Raised (by the stop-after hook) to simulate a killed run; finished cells are kept."""


@dataclass
class BenchConfig:
    model: str
    samplers: list[str] | None
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
    guidance_scales: list[float] | None = None  # class-conditional models: one set of cells per scale
    null_label: int | None = None  # --null-label
    flow_mu: float | None = None  # --flow-mu
    peer_spacing: str = "config"  # --peer-spacing

    def __post_init__(self):
        self.out = Path(self.out)
        if self.samplers is not None:
            self.samplers = expand_sampler_names(self.samplers)
            if not self.samplers:
                raise ValueError("--samplers: give at least one sampler")
        bad = [n for n in self.nfes if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1]
        if bad:
            raise ValueError(f"--nfe: every NFE must be a positive integer, got {bad}")
        self.nfes = sorted({int(n) for n in self.nfes})
        self.seeds = list(dict.fromkeys(check_seed(s, "--seed") for s in self.seeds))
        self.device = check_device(self.device)
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
        if self.peer_spacing not in PEER_SPACINGS:
            raise ValueError(f"--peer-spacing must be one of {PEER_SPACINGS}, got {self.peer_spacing!r}")
        if self.guidance_scales is not None:
            self.guidance_scales = list(dict.fromkeys(check_guidance_scale(w) for w in self.guidance_scales))
            if not self.guidance_scales:
                raise ValueError("--guidance-scale: give at least one guidance scale")
        if self.reference_seed in self.seeds:
            raise ValueError(f"seed {self.reference_seed} is the reference set's seed; choose other seeds so the "
                             "samples are independent of the reference")
        if self.fid_reference and not self.fid_features:
            raise BenchConfigError("--fid-reference needs --fid-features (the feature network to compare in)")

    def model_options(self) -> dict[str, Any]:
        return {k: v for k, v in {"null_label": self.null_label, "flow_mu": self.flow_mu}.items() if v is not None}


@dataclass
class BenchResult:
    records: list[dict]
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    markdown: str = ""
    seconds: float = 0.0
    peers: dict | None = None  # the peer enumeration


def expand_sampler_names(names: Sequence[str], loaded: LoadedModel | None = None) -> list[str]:
    """Sampler names with the groups ``all``, ``ours``, ``peers`` and ``candidates`` (the default's candidates,
    :mod:`skipstep.lab.candidates`) expanded for ``loaded`` (``ours``: our
    samplers that can sample it; ``peers``: :func:`skipstep.lab.peer_samplers.enumerate_peers`); without a model
    the groups are kept (they are expanded once the model is loaded). Unknown names raise :class:`SamplerError`
    listing the valid ones."""
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in GROUPS:
            get_sampler(name)
            out.append(name)
        elif loaded is None:
            out.append(name)
        else:
            if name in ("ours", "all"):
                out += [n for n in sampler_names("skipstep") if sampler_refusal(get_sampler(n), loaded) is None]
            if name in ("peers", "all"):
                out += enumerate_peers(loaded).peers
            if name == "candidates":
                out += sampler_names("candidate")
    return list(dict.fromkeys(out))


def default_samplers(loaded: LoadedModel) -> list[str]:
    """``--samplers`` left out: ours at eta 1 and 0, and the three most used peers of the model's path."""
    if loaded.regime == "flow":
        return ["skipstep", "skipstep-ddim", "flow-euler", "dpmpp-2m", "unipc"]
    return ["skipstep", "skipstep-ddim", "ddim", "dpmpp-2m", "unipc"]


def _cell_key(sampler: str, nfe: int, seed: int, guidance: float | None = None) -> str:
    return f"{sampler}/nfe{nfe}_seed{seed}" + ("" if guidance is None else f"_w{guidance:g}")


def _guidance_scales(cfg: BenchConfig, loaded: LoadedModel) -> list[float | None]:
    if loaded.conditioning is None:
        if cfg.guidance_scales is not None:
            loaded.at_guidance(cfg.guidance_scales[0])  # raises: the model is not conditional
        return [None]
    return list(cfg.guidance_scales or [1.0])


def _reference_dir(out: Path, view: LoadedModel) -> Path:
    return out / "reference" / view.guidance_key if view.guidance_key else out / "reference"


# --------------------------------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------------------------------
def _identity(cfg: BenchConfig, loaded: LoadedModel) -> dict[str, Any]:
    """What must match for cells to be reused (samplers, NFEs, seeds and guidance scales may be added)."""
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


def _prepare_dir(cfg: BenchConfig, loaded: LoadedModel, rundir: RunDirectory, samplers: list[str], cells: list[tuple],
                 skipped: dict[str, str], peers: dict, log: Callable[[str], None]) -> tuple[list[tuple], list[tuple]]:
    """Claim ``cfg.out`` (refuse a foreign or busy directory, lock it, remove stale temporary files), check it
    against its config.json and verify its finished cells; write the merged config; return the planned cells
    as (reused, todo)."""
    identity = _identity(cfg, loaded)
    settings = {name: sampler_settings(get_sampler(name), loaded) for name in samplers}
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
                    "--out. (Adding samplers, NFEs, seeds or guidance scales to the same model/num-samples is "
                    "allowed and reuses finished cells.)")
            rundir.discard_results()
            previous = None
    verified = _verify_cells(cfg, loaded, cells, log)  # before config.json is rewritten: refusals change nothing
    now = now_utc()

    def union(key, new):
        old = (previous or {}).get(key, [])
        return list(dict.fromkeys(list(old) + list(new)))

    kind = ("exact data samples" if loaded.reference is not None else
            "1000-step FlowMatchEuler (ODE) samples (sampler reference-1000)" if loaded.regime == "flow" else
            "1000-step ancestral samples (sampler reference-1000)")
    merged = {
        "identity": identity,
        "model": loaded.info(),
        "samplers": union("samplers", samplers),
        "nfes": sorted(set(union("nfes", cfg.nfes))),
        "seeds": union("seeds", cfg.seeds),
        "guidance_scales": union("guidance_scales", [c[5] for c in cells if c[5] is not None]),
        "sampler_settings": {**(previous or {}).get("sampler_settings", {}), **settings},
        "skipped": {**(previous or {}).get("skipped", {}), **(skipped or {})},
        "peer_enumeration": peers,
        "time_baseline": "flow-euler" if loaded.regime == "flow" else "ddim",
        "common_settings": {**COMMON_SETTINGS, "x0_clipping": loaded.clip_description
                            or COMMON_SETTINGS["x0_clipping"], "peer_spacing": cfg.peer_spacing},
        "noise": "x_T = randn((N, C, H, W)) from torch.Generator().manual_seed(seed) on the CPU, for all samples "
                 "at once; per-step noise from one CPU generator per batch seeded from (seed, first index)",
        "class_labels": None if loaded.conditioning is None else loaded.conditioning.info()["label_rule"],
        "reference": f"{kind}, {cfg.num_reference} samples, seed {cfg.reference_seed}"
                     + ("; one set per guidance scale, at that scale" if loaded.conditioning is not None else "")
                     + "; drawn once into the reference cache and copied into reference/",
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
        name, nfe, seed, w = cell[0], cell[1], cell[2], cell[5]
        json_path, tensor_path = cell_paths(cfg.out, name, nfe, seed, w)
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
def _plan(cfg: BenchConfig, loaded: LoadedModel, samplers: list[str]) -> tuple[list[tuple], dict[str, str]]:
    """Cells ``(sampler, nfe, seed, steps, expected_nfe, guidance)`` in run order, and the refused (sampler, NFE)
    pairs. Order: guidance scale, seed, NFE, sampler -- samplers of one NFE run back to back (fair timing)."""
    T = loaded.num_train_timesteps
    too_big = [n for n in cfg.nfes if n > T]
    if too_big:
        raise SamplerError(f"--nfe {','.join(map(str, too_big))}: NFE {too_big} exceed the model's {T} training "
                           "timesteps")
    for name in samplers:
        recipe = get_sampler(name)
        check_sampler_for_model(recipe, loaded.fingerprint, T, _guidance_scales(cfg, loaded))
        reason = sampler_refusal(recipe, loaded)
        if reason is not None:
            raise SamplerError(f"--samplers {name}: it cannot sample model {loaded.name!r} ({loaded.regime_text}): "
                               f"{reason}")
    cells, skipped, fixed_done = [], {}, set()
    for w in _guidance_scales(cfg, loaded):
        for seed in cfg.seeds:
            for nfe in cfg.nfes:
                for name in samplers:
                    recipe = get_sampler(name)
                    if recipe.fixed_steps is not None:
                        if (name, seed, w) in fixed_done:
                            continue
                        fixed_done.add((name, seed, w))
                        steps, expected = steps_for_nfe(recipe, T, T)
                        cells.append((name, expected, seed, steps, expected, w))
                        continue
                    try:
                        steps, expected = steps_for_nfe(recipe, nfe, T)
                    except SamplerError as err:
                        skipped[f"{name} @ NFE {nfe}"] = str(err)
                        continue
                    cells.append((name, nfe, seed, steps, expected, w))
    return cells, skipped


def _warm_up(loaded: LoadedModel, cfg: BenchConfig) -> None:
    """One untimed short run, so that lazy initialisation does not land in the first timed cell."""
    sample_cell(loaded, get_sampler("skipstep-ddim"), 2, 0, min(cfg.batch_size, cfg.num_samples), cfg.batch_size,
                cfg.device)


def run_bench(cfg: BenchConfig, on_cell_done: Callable[[dict], None] | None = None,
              log: Callable[[str], None] | None = print) -> BenchResult:
    """Run (or resume) a benchmark and write all outputs into ``cfg.out``; returns the records."""
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    stop_after = env_int(STOP_AFTER_ENV, 0)
    loaded = load_model(cfg.model, device=cfg.device, **cfg.model_options())
    loaded.clip_description = apply_clip_mode(loaded, cfg.clip)
    loaded.peer_spacing = cfg.peer_spacing
    for note in loaded.notes:
        log(f"note: {note}")
    if cfg.fid_features:
        use_feature_network(loaded, cfg.fid_features, cfg.device, cfg.inception_weights)
    samplers = expand_sampler_names(cfg.samplers or default_samplers(loaded), loaded)
    peers = enumerate_peers(loaded).to_dict()
    cells, skipped = _plan(cfg, loaded, samplers)
    if not cells:
        raise BenchConfigError("nothing to compute: every requested cell is below its sampler's order ("
                               + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "); choose a larger --nfe")
    rundir = run_directory(cfg.out)
    try:
        reused, todo = _prepare_dir(cfg, loaded, rundir, samplers, cells, skipped, peers, log)  # refusals first
        result = _run_cells(cfg, loaded, reused, todo, skipped, on_cell_done, log, t_start, stop_after)
        result.peers = peers
        return result
    finally:
        rundir.release()


class _Views:
    """Per guidance scale: the model's view, its reference set (cached, copied into ``reference/``) and metrics."""

    def __init__(self, cfg: BenchConfig, loaded: LoadedModel, log: Callable[[str], None]):
        self.cfg, self.loaded, self.log = cfg, loaded, log
        self.cache: dict[float | None, tuple[LoadedModel, torch.Tensor, dict, MetricContext]] = {}

    def __call__(self, w: float | None):
        if w not in self.cache:
            cfg = self.cfg
            view = self.loaded.at_guidance(w)
            reference, meta = reference_samples(view, cfg.num_reference, cfg.reference_seed, cfg.batch_size,
                                                cfg.device, cfg.progress, self.log,
                                                keep_in=_reference_dir(cfg.out, view))
            ctx = MetricContext(view, reference)
            if cfg.fid_reference:
                ctx.fid_reference_stats, _ = load_reference_stats(cfg.fid_reference, view.feature_fn)
            self.cache[w] = (view, reference, meta, ctx)
        return self.cache[w]


def _run_cells(cfg: BenchConfig, loaded: LoadedModel, reused: list[tuple], todo: list[tuple],
               skipped: dict[str, str], on_cell_done, log: Callable[[str], None], t_start: float,
               stop_after: int) -> BenchResult:
    for key, reason in skipped.items():
        log(f"skipped {key}: {reason}")
    views = _Views(cfg, loaded, log)
    for w in dict.fromkeys(c[5] for c in reused + todo):
        views(w)  # every reference first: a cell never waits for a 1000-step set mid-table
    run_id = uuid.uuid4().hex[:8]
    result = BenchResult(records=[], skipped=skipped, out=cfg.out)
    result.reused = [_cell_key(c[0], c[1], c[2], c[5]) for c in reused]
    if todo:
        _warm_up(views(todo[0][5])[0], cfg)
    bar = tqdm(todo, disable=not cfg.progress, desc="cells", unit="cell")
    for name, nfe, seed, steps, expected, w in bar:
        view, _, _, ctx = views(w)
        sampler = get_sampler(name)
        bar.set_postfix_str(f"{name} nfe={nfe} seed={seed}" + ("" if w is None else f" w={w:g}"))
        cell = _sample(cfg, view, sampler, steps, seed, log)
        if cell.actual_nfe != expected:
            raise RuntimeError(f"{name}: expected {expected} NFE for {steps} steps, counted {cell.actual_nfe}")
        record = {
            "model": loaded.name,
            "sampler": name,
            "nfe": int(nfe),
            "seed": int(seed),
            "num_samples": cfg.num_samples,
            "metrics": ctx(cell.samples, cell.labels),
            "seconds": cell.seconds,
            "guidance_scale": w,
            "regime": loaded.regime_text,
            "actual_nfe": cell.actual_nfe,
            "network_calls_unbatched": cell.network_calls_unbatched,
            "num_inference_steps": steps,
            "timesteps": cell.timesteps,
            "seconds_per_sample": cell.seconds / cfg.num_samples,
            "family": sampler.family,
            "stochastic": sampler.stochastic,
            "model_fingerprint": loaded.fingerprint,
            "batch_size": cfg.batch_size,
            "device": cfg.device,
            "run_id": run_id,
            "finished_at": now_utc(),
        }
        json_path, tensor_path = cell_paths(cfg.out, name, nfe, seed, w)
        record["samples_sha256"] = save_tensor(tensor_path, cell.samples[:GRID_COUNT])
        record = seal(record)
        atomic_write_json(json_path, record)
        result.computed.append(_cell_key(name, nfe, seed, w))
        if on_cell_done is not None:
            on_cell_done(record)
        if stop_after and len(result.computed) >= stop_after:
            raise BenchInterrupted(f"stopped after {len(result.computed)} cells ({STOP_AFTER_ENV}={stop_after})")
    bar.close()
    _write_floors(cfg, loaded, views)
    result.records = write_outputs(cfg.out, log=log)
    result.markdown = (cfg.out / "results.md").read_text()
    result.seconds = time.perf_counter() - t_start
    return result


def _sample(cfg: BenchConfig, view: LoadedModel, sampler, steps: int, seed: int, log: Callable[[str], None]
            ) -> SampledCell:
    """One cell's samples; a trained model's ``reference-1000`` cell (an independent reference set of seed
    ``seed``, the floor) comes through the reference cache, so benches and tune draw it once."""
    if sampler.family == "reference" and view.reference is None:
        samples, meta = reference_samples(view, cfg.num_samples, seed, cfg.batch_size, cfg.device, cfg.progress, log)
        nfe = int(meta["actual_nfe"])
        branches = int(meta.get("network_calls_unbatched", nfe)) // nfe
        return SampledCell(samples, float(meta["seconds"]), nfe, steps, branches, None,
                           view.labels_for(range(cfg.num_samples)))
    return sample_cell(view, sampler, steps, seed, cfg.num_samples, cfg.batch_size, cfg.device,
                       progress=cfg.progress and steps >= 200, desc=sampler.name)


def _write_floors(cfg: BenchConfig, loaded: LoadedModel, views: _Views) -> None:
    """``floors.json``: the reference metadata and floors of every guidance scale the directory holds."""
    config = json.loads((cfg.out / "config.json").read_text())
    scales: list[float | None] = list(config.get("guidance_scales") or []) or [None]
    entries = {}
    for w in scales:
        view, reference, meta, ctx = views(w)
        entries[view.guidance_key] = {"guidance_scale": w, "reference": meta,
                                      "floors": floors(view, reference, ctx, cfg.num_samples, cfg.seeds)}
    first = entries[next(iter(entries))]
    main = views(scales[0])[3].main_metric
    out: dict[str, Any] = {"reference": first["reference"], "floors": first["floors"], "main_metric": main}
    if loaded.conditioning is not None:
        out["guidance"] = entries
    atomic_write_json(cfg.out / "floors.json", out)
