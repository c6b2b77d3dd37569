"""Large-scale sample generation: sharded, resumable, reproducible, and distributed with ``torchrun``.

``skipstep generate --model M --sampler S --nfe N --num-samples 50000 --seed 0 --out DIR``, or on 8 GPUs::

    torchrun --nproc_per_node=8 -m skipstep generate --model M ... --device cuda --out DIR

Layout of ``DIR`` (see ``docs/generate.md``)::

    DIR/config.json                         the pinned configuration (+ a log of the runs that wrote into DIR)
    DIR/shards/shard-00000.safetensors      samples [0, K): tensors "samples" (K, C, H, W) float32, "indices" (K,)
    DIR/shards/shard-00000.json             who wrote it (rank, world size, batch size, device, seconds)
    DIR/shards/shard-00001.safetensors      samples [K, 2K) ...
    DIR/index.json                          written last: shard list with sample ranges and sha256 of each file

Reproducibility. Sample ``i`` is a function of ``(seed, i)`` only: its initial noise and every per-step noise are
drawn from its own CPU ``torch.Generator`` seeded with :func:`sample_seed` ``(seed, i)`` (diffusers'
``randn_tensor`` and every scheduler's ``step(..., generator=[...])`` accept one generator per sample). Which
process or batch draws a sample does not change its noise, so the output is the same for any number of
processes; with the same batch size it is the same bit for bit (a different batch size can change the
network's floating-point round-off on some backends, never the noise).

Distribution. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the processes join
PyTorch's own process group (gloo on CPU, nccl on CUDA; each process uses ``cuda:LOCAL_RANK``). Rank 0 checks
the directory and lists the shards still missing; the list is broadcast and dealt round-robin (missing shard
number ``m`` of the list goes to rank ``m % world_size``). A plain ``python``/``skipstep`` call is a world of one.

Resumption. Each shard is written atomically (a temporary file, then ``os.replace``), so a shard file that exists
is complete; a rerun computes only the missing shards and never rewrites a finished one. Because shards do not
depend on who computed them, a run may be resumed with a different number of processes (the change is detected,
logged in ``config.json`` and the missing shards are dealt over the new world). ``index.json`` is written
atomically by rank 0 after a barrier, once every shard exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import diffusers
import torch
from diffusers.utils.torch_utils import randn_tensor
from safetensors import safe_open
from tqdm.auto import tqdm

from .. import __version__
from ..storage import atomic_write_bytes, atomic_write_json, derived_seed, env_int, file_sha256, json_sha256
from .cli_args import (HelpFormatter, add_model_args, add_threads_arg, apply_threads, check_device, check_seed,
                       model_options, positive_int)
from .distributed import DistContext, init_distributed
from .fid import (fid_from_stats, iter_image_batches, load_reference_stats, resolve_feature_extractor, save_stats,
                  stats_of_samples)
from .models import LoadedModel, load_model
from .run_dirs import RunDirectory, RunDirectoryError, identity_differences, now_utc, read_json_record, seal
from .shards import (INDEX_FORMAT, SHARD_FORMAT, load_samples, provenance_path, read_shard_metadata, shard_bytes,
                     shard_path)
from .sampler_registry import (CallCounter, SamplerError, build_scheduler, check_sampler_for_model, get_sampler,
                               run_standard_loop, sampler_refusal, sampler_settings, scheduler_config_for,
                               steps_for_nfe)

__all__ = [
    "GenerateConfig",
    "GenerateConfigError",
    "GenerateInterrupted",
    "GenerateResult",
    "add_subcommand",
    "generate",
    "generate_batch",
    "load_samples",
    "sample_generators",
    "sample_seed",
    "provenance_path",
    "read_shard_metadata",
    "shard_path",
]

FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH_SIZE = 250
#: Set to ``n`` to make every process raise :class:`GenerateInterrupted` after writing ``n`` new shards
#: (a stand-in for a killed run, to test resumption; ``SKIPSTEP_KILL_AT_WRITE`` kills for real).
FAIL_AFTER_ENV = "SKIPSTEP_FAIL_AFTER_SHARDS"
SEED_FUNCTION = ("sample_seed(seed, i) = int.from_bytes(sha256(f'skipstep-sample:{seed}:{i}').digest()[:8], "
                 "'little') & (2**63 - 1); one CPU torch.Generator per sample, used for x_T and then for every "
                 "step's noise, in order")
#: What generate writes into its directory (``--overwrite`` removes these and nothing else).
OWNED_NAMES = ("shards", "index.json", "config.json", "fid", "fid.json")


class GenerateConfigError(ValueError):
    """``--out`` holds samples of a different configuration (or is not a generate directory), or bad options."""


def run_directory(out: Path) -> RunDirectory:
    """The run directory of a generate output (marker, lock, owned names: :mod:`skipstep.lab.run_dirs`)."""
    return RunDirectory(out, "generate", OWNED_NAMES, legacy_identity_key="seed_function")


class GenerateInterrupted(RuntimeError):
    """Raised by the fail-after hook (:data:`FAIL_AFTER_ENV`) to simulate a killed run; finished shards are kept."""


# --------------------------------------------------------------------------------------------------------------
# per-sample noise
# --------------------------------------------------------------------------------------------------------------
def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s generator: the first 8 bytes (little endian) of
    ``sha256(f"skipstep-sample:{seed}:{index}")``, masked to 63 bits. Independent streams for every sample."""
    return derived_seed("skipstep-sample", int(seed), int(index))


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded with :func:`sample_seed` (CPU, so the noise is the same on any device)."""
    return [torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in indices]


@torch.no_grad()
def generate_batch(loaded: LoadedModel, sampler_name: str, num_steps: int, seed: int, indices: Sequence[int],
                   device: str | torch.device = "cpu", counter: CallCounter | None = None) -> torch.Tensor:
    """Samples ``indices`` (one batch) with the standard loop; returns float32 on the CPU.

    ``x_T`` is ``randn_tensor`` with the per-sample generators, which then feed every ``step(..., generator=)``.
    A class-conditional model's sample ``i`` asks for label ``real_labels[i mod K]`` at ``loaded``'s guidance scale."""
    sampler = get_sampler(sampler_name)
    sched = build_scheduler(sampler, scheduler_config_for(sampler, loaded), num_steps)
    gens = sample_generators(seed, indices)
    noise = randn_tensor((len(gens), *loaded.sample_shape), generator=gens, device=torch.device(device),
                         dtype=torch.float32)
    model = loaded.model_for_batch(list(indices), with_variance=loaded.learned_variance and sampler.learned_variance)
    model = counter.counting(model) if counter is not None else model
    x = run_standard_loop(sched, model, noise, num_steps, generator=gens)
    return x.detach().float().cpu()






# --------------------------------------------------------------------------------------------------------------
# configuration and files
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GenerateConfig:
    model: str
    sampler: str
    nfe: int
    num_samples: int
    seed: int
    out: Path
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True
    fid_features: str | None = None
    fid_reference: str | None = None
    inception_weights: str | None = None
    guidance_scale: float | None = None  # class-conditional models (default 1: the plain conditional model)
    null_label: int | None = None
    flow_mu: float | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        for name in ("nfe", "num_samples", "shard_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GenerateConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        self.seed = check_seed(self.seed, "--seed")
        self.device = check_device(self.device)
        get_sampler(self.sampler)  # unknown names fail here, with the list of valid ones
        if self.fid_reference and not self.fid_features:
            raise GenerateConfigError("--fid-reference needs --fid-features (the feature network to compare in)")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def shard_range(self, j: int) -> tuple[int, int]:
        return j * self.shard_size, min((j + 1) * self.shard_size, self.num_samples)


def _identity(cfg: GenerateConfig, loaded: LoadedModel, steps: int, nfe: int) -> dict[str, Any]:
    """What every shard of DIR must share (the world size, batch size and device are not part of it)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": loaded.name,
        "model_fingerprint": loaded.fingerprint,
        "sample_shape": list(loaded.sample_shape),
        "sampler": cfg.sampler,
        "sampler_settings": json.loads(json.dumps(sampler_settings(get_sampler(cfg.sampler)), default=str)),
        # the effective scheduler config (e.g. an estimated optimal-variance table): every rank must use the same
        "scheduler_config_sha256": json_sha256(scheduler_config_for(get_sampler(cfg.sampler), loaded)),
        **({"guidance_scale": loaded.guidance_scale, "class_labels": loaded.conditioning.info()["label_rule"]
            + " (i: the global sample index)"} if loaded.conditioning is not None else {}),
        "nfe": cfg.nfe,
        "actual_nfe": nfe,
        "num_inference_steps": steps,
        "seed": cfg.seed,
        "seed_function": SEED_FUNCTION,
        "num_samples": cfg.num_samples,
        "shard_size": cfg.shard_size,
        "dtype": "float32",
    }


def _recorded_hash(out: Path, j: int, index_hashes: dict[int, str]) -> tuple[str | None, str]:
    """The sha256 recorded for shard ``j`` when it was written (its sidecar; for shards of an older skipstep, the
    index), or ``(None, reason)`` when the sidecar that should hold it is damaged."""
    prov, reason = read_json_record(provenance_path(out, j))
    if prov is None and reason != "missing":
        return None, f"its sidecar {provenance_path(out, j).name} is {reason}"
    recorded = (prov or {}).get("sha256") or index_hashes.get(j)
    return recorded, "" if recorded else "no-hash"


def _check_shard(cfg: GenerateConfig, identity: dict[str, Any], j: int, recorded: str | None = None) -> None:
    """Raise GenerateConfigError unless shard ``j`` is readable, belongs to this configuration and (when a hash
    was recorded) has exactly the recorded bytes."""
    path = shard_path(cfg.out, j)
    start, stop = cfg.shard_range(j)
    if recorded is not None:
        actual = file_sha256(path)
        if actual != recorded:
            raise GenerateConfigError(f"shard {path}: its sha256 ({actual[:16]}...) differs from the one recorded "
                                      f"when it was written ({recorded[:16]}...): the file was damaged or changed")
    try:
        meta = read_shard_metadata(path)
        with safe_open(str(path), framework="pt") as fh:
            indices = fh.get_tensor("indices")
            shape = tuple(fh.get_slice("samples").get_shape())
    except Exception as err:  # noqa: BLE001 - a foreign or damaged file
        raise GenerateConfigError(f"shard {path} cannot be read ({err})") from err
    expected = {"format": SHARD_FORMAT, "model_fingerprint": identity["model_fingerprint"], "sampler": cfg.sampler,
                "seed": cfg.seed, "num_inference_steps": identity["num_inference_steps"], "start": start,
                "stop": stop}
    bad = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if bad or not torch.equal(indices, torch.arange(start, stop)) or shape[0] != stop - start:
        raise GenerateConfigError(f"shard {path} does not belong to this configuration ({bad or 'wrong indices'})")


def _prepare_dir(cfg: GenerateConfig, rundir: RunDirectory, identity: dict[str, Any], model_info: dict[str, Any],
                 world_size: int, log: Callable[[str], None]) -> dict:
    """Rank 0: claim DIR (refuse a foreign or busy one, lock it, remove stale temporary files), check it against
    its config.json (refuse a different configuration unless --overwrite), verify every finished shard against
    its recorded hash (a damaged one is recomputed), log this run, and return ``{"missing": [...], "done": n}``."""
    out = cfg.out
    previous = rundir.claim(cfg.overwrite, log)
    if previous is not None:
        diffs = identity_differences(previous["identity"], identity)
        if diffs:
            if not cfg.overwrite:
                raise GenerateConfigError(
                    f"--out {out} holds samples of a different configuration ({'; '.join(diffs)}). Pass --overwrite "
                    "to discard them (only skipstep's own files are removed), or choose another --out.")
            rundir.discard_results()
            previous = None
    (out / "shards").mkdir(parents=True, exist_ok=True)
    index_hashes: dict[int, str] = {}
    index, _ = read_json_record(out / "index.json") if previous is not None else (None, "")
    for entry in (index or {}).get("shards", []):
        if isinstance(entry, dict) and isinstance(entry.get("shard"), int) and entry.get("sha256"):
            index_hashes[entry["shard"]] = entry["sha256"]
    missing = []
    for j in range(cfg.num_shards):
        if not shard_path(out, j).is_file():
            provenance_path(out, j).unlink(missing_ok=True)  # a sidecar whose shard never landed describes nothing
            missing.append(j)
            continue
        recorded, reason = _recorded_hash(out, j, index_hashes)
        try:
            if recorded is None and reason != "no-hash":
                raise GenerateConfigError(f"shard {shard_path(out, j)}: {reason}")
            _check_shard(cfg, identity, j, recorded)
        except GenerateConfigError as err:
            log(f"{err}; recomputing it")
            missing.append(j)
    runs = list((previous or {}).get("runs", []))
    done = cfg.num_shards - len(missing)
    if runs and done:
        last = runs[-1].get("world_size")
        if last != world_size:
            log(f"resuming with a different world size ({last} -> {world_size}): the {len(missing)} missing shards "
                f"are dealt over {world_size} process(es); shards do not depend on the world size")
        last_batch = runs[-1].get("batch_size")
        if last_batch != cfg.batch_size:
            log(f"note: --batch-size changed ({last_batch} -> {cfg.batch_size}); every sample's noise is unchanged, "
                "but a network's floating-point round-off can depend on the batch size (the batch size of each "
                "shard is recorded in index.json)")
    if done:
        log(f"resuming: {done} of {cfg.num_shards} shards already complete and verified (kept as they are)")
    runs.append({"started": now_utc(), "world_size": world_size, "device": cfg.device, "batch_size": cfg.batch_size,
                 "shards_done_at_start": done, "skipstep": __version__, "torch": torch.__version__,
                 "diffusers": diffusers.__version__, "python": platform.python_version(),
                 "host": platform.node()})
    rundir.write_config(seal({
        "identity": identity,
        "model": model_info,
        "num_shards": cfg.num_shards,
        "layout": "shards/shard-{j:05d}.safetensors holds samples [j*shard_size, min((j+1)*shard_size, num_samples))",
        "created": (previous or {}).get("created", now_utc()),
        "runs": runs,
    }))
    return {"missing": missing, "done": done}


def _build_index(cfg: GenerateConfig, identity: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, after the barrier: check every shard (its recorded hash, metadata and indices) and list it with
    its sha256."""
    shards = []
    for j in range(cfg.num_shards):
        path = shard_path(cfg.out, j)
        start, stop = cfg.shard_range(j)
        if not path.is_file():
            raise GenerateConfigError(f"shard {path} is missing after all processes finished; rerun to compute it")
        prov, _ = read_json_record(provenance_path(cfg.out, j))
        prov = prov or {}
        try:
            _check_shard(cfg, identity, j, prov.get("sha256"))
        except GenerateConfigError as err:
            raise GenerateConfigError(f"{err}; rerun the same command to recompute it") from None
        shards.append({"file": str(path.relative_to(cfg.out)), "shard": j, "start": start, "stop": stop,
                       "num_samples": stop - start, "sha256": prov.get("sha256") or file_sha256(path),
                       "written_by": {k: prov.get(k) for k in ("rank", "world_size", "batch_size", "device",
                                                               "seconds", "written")}})
    return {
        "format": INDEX_FORMAT,
        **identity,
        "num_shards": cfg.num_shards,
        "shards": shards,
        "tensors": {"samples": "(n, C, H, W) float32, the sampler's final x_0 (not clipped)",
                    "indices": "(n,) int64, global sample indices"},
        "finished": now_utc(),
        **extra,
    }


# --------------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GenerateResult:
    out: Path
    computed: list[int] = field(default_factory=list)  # shards this process wrote
    reused: int = 0
    seconds: float = 0.0
    sampling_seconds: float = 0.0
    rank: int = 0
    world_size: int = 1
    index: dict | None = None
    fid: dict | None = None


def generate(cfg: GenerateConfig, log: Callable[[str], None] | None = print) -> GenerateResult:
    """Run (or resume) a generate job in this process -- one rank of a torchrun world, or a world of one."""
    ctx, device = init_distributed(cfg.device)
    rundir = run_directory(cfg.out)  # claimed (and locked) by rank 0 only, released when the run ends
    try:
        return _generate(cfg, ctx, device, log, rundir)
    finally:
        rundir.release()
        ctx.close()


def _generate(cfg: GenerateConfig, ctx: DistContext, device: str, log: Callable[[str], None] | None,
              rundir: RunDirectory) -> GenerateResult:
    t_start = time.perf_counter()
    fail_after = env_int(FAIL_AFTER_ENV, 0)
    say = (log or (lambda m: None)) if ctx.rank == 0 else (lambda m: None)
    options = {k: v for k, v in {"null_label": cfg.null_label, "flow_mu": cfg.flow_mu}.items() if v is not None}
    loaded = load_model(cfg.model, device=device, **options).at_guidance(cfg.guidance_scale)
    for note in loaded.notes:
        say(f"note: {note}")
    sampler = get_sampler(cfg.sampler)
    for note in check_sampler_for_model(sampler, loaded.fingerprint, loaded.num_train_timesteps,
                                        [loaded.guidance_scale]):
        say(f"warning: {note}")
    if sampler_refusal(sampler, loaded) is not None:
        raise SamplerError(f"--sampler {cfg.sampler}: it cannot sample model {loaded.name!r} ({loaded.regime_text}): "
                           f"{sampler_refusal(sampler, loaded)}")
    steps, expected_nfe = steps_for_nfe(sampler, cfg.nfe, loaded.num_train_timesteps)
    identity = _identity(cfg, loaded, steps, expected_nfe)

    extractor, fid_error = None, None
    if cfg.fid_features and ctx.rank == 0:
        try:
            extractor = _resolve_fid(cfg, device)  # fail early (missing weights) -- before any sampling
        except (ValueError, FileNotFoundError) as err:  # FeatureNetworkError is a ValueError
            fid_error = err  # raised below on every rank, so no rank waits for the others in a collective

    # every rank must agree on what it is about to compute (same model weights, same code)
    digest = json_sha256(identity)
    digests = ctx.all_gather(digest)
    state: dict[str, Any] | None = None
    error: str | None = None
    prepare_error: Exception | None = None
    if ctx.rank == 0:
        if fid_error is not None:
            error = str(fid_error)
        elif len(set(digests)) != 1:
            error = ("the processes disagree on the configuration (different model weights or skipstep versions "
                     "on different nodes?)")
        else:
            try:
                state = _prepare_dir(cfg, rundir, identity, loaded.info(), ctx.world_size, say)
            except Exception as err:  # noqa: BLE001 - told to every rank, so none waits in the broadcast
                prepare_error, error = err, str(err)
    error, state = ctx.broadcast((error, state))
    if fid_error is not None:
        raise fid_error
    if isinstance(prepare_error, RunDirectoryError):
        raise GenerateConfigError(str(prepare_error)) from None
    if prepare_error is not None:
        raise prepare_error
    if error is not None:
        raise GenerateConfigError(error)
    assert state is not None
    missing: list[int] = state["missing"]
    mine = missing[ctx.rank::ctx.world_size]
    result = GenerateResult(out=cfg.out, reused=state["done"], rank=ctx.rank, world_size=ctx.world_size)
    say(f"{cfg.num_samples} samples in {cfg.num_shards} shards of {cfg.shard_size}: {len(missing)} to compute "
        f"over {ctx.world_size} process(es); {sampler.name} with {steps} steps ({expected_nfe} NFE); device {device}")

    counter = CallCounter(loaded.model)
    bar = tqdm(mine, disable=not (cfg.progress and ctx.rank == 0), desc=f"shards (rank 0 of {ctx.world_size})",
               unit="shard")
    for j in bar:
        start, stop = cfg.shard_range(j)
        chunks = []
        _sync(device)
        t0 = time.perf_counter()
        for b in range(start, stop, cfg.batch_size):
            idx = list(range(b, min(b + cfg.batch_size, stop)))
            before = counter.calls
            chunks.append(generate_batch(loaded, cfg.sampler, steps, cfg.seed, idx, device, counter))
            if counter.calls - before != expected_nfe:
                raise RuntimeError(f"{cfg.sampler}: expected {expected_nfe} NFE, counted {counter.calls - before}")
        _sync(device)
        seconds = time.perf_counter() - t0
        result.sampling_seconds += seconds
        # the shard's own metadata is deterministic (so equal runs give byte-identical files, whatever the world
        # size); who/where/how fast goes into a sidecar JSON, written first: the shard file marks completion
        meta = {"format": SHARD_FORMAT, "shard": j, "start": start, "stop": stop, "seed": cfg.seed,
                "model_fingerprint": loaded.fingerprint, "sampler": cfg.sampler, "nfe": cfg.nfe,
                "num_inference_steps": steps}
        data = shard_bytes(torch.cat(chunks), torch.arange(start, stop), meta)
        provenance = {"shard": j, "sha256": hashlib.sha256(data).hexdigest(), "batch_size": cfg.batch_size,
                      "device": str(device), "rank": ctx.rank, "world_size": ctx.world_size, "seconds": seconds,
                      "written": now_utc(), "host": platform.node()}
        atomic_write_json(provenance_path(cfg.out, j), seal(provenance))
        atomic_write_bytes(shard_path(cfg.out, j), data)
        result.computed.append(j)
        if fail_after and len(result.computed) >= fail_after:
            raise GenerateInterrupted(f"rank {ctx.rank} stopped after {len(result.computed)} new shards "
                                      f"({FAIL_AFTER_ENV}={fail_after})")
    bar.close()
    ctx.barrier()  # every shard exists now
    if ctx.rank == 0:
        index = _build_index(cfg, identity, {"seconds_last_run": time.perf_counter() - t_start,
                                             "world_size_last_run": ctx.world_size,
                                             "shards_computed_last_run": len(missing)})
        atomic_write_json(cfg.out / "index.json", index)
        result.index = index
        if extractor is not None:
            result.fid = _fid_of_output(cfg, extractor, say)
    result.seconds = time.perf_counter() - t_start
    return result


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------------------
# FID of the output
# --------------------------------------------------------------------------------------------------------------
def _resolve_fid(cfg: GenerateConfig, device: str):
    extractor = resolve_feature_extractor(cfg.fid_features, device=device, inception_weights=cfg.inception_weights)
    if cfg.fid_reference:
        ref = Path(cfg.fid_reference)
        if not ref.exists():
            raise FileNotFoundError(f"--fid-reference {ref} not found")
        if ref.suffix == ".npz":
            load_reference_stats(ref, extractor)  # validate now (fingerprint, shapes), not after sampling
    return extractor


def _fid_of_output(cfg: GenerateConfig, extractor, say: Callable[[str], None]) -> dict[str, Any]:
    """Features of every sample -> ``DIR/fid/<name>.npz`` statistics; FID against ``--fid-reference`` if given."""
    batches, _ = iter_image_batches(cfg.out, cfg.batch_size)  # shard by shard: never all samples in memory
    stats = stats_of_samples(batches, extractor, batch_size=cfg.batch_size)
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in extractor.name)
    stats_file = cfg.out / "fid" / f"{safe_name}.npz"
    save_stats(stats_file, stats, extractor, source=f"skipstep generate {cfg.out}", num_samples=cfg.num_samples)
    record: dict[str, Any] = {"features": extractor.name, "feature_fingerprint": extractor.fingerprint,
                              "num_samples": cfg.num_samples, "stats": str(stats_file.relative_to(cfg.out))}
    if cfg.fid_reference:
        ref_stats, ref_info = load_reference_stats(cfg.fid_reference, extractor, batch_size=cfg.batch_size)
        record["reference"] = {"path": str(cfg.fid_reference), **ref_info}
        record["fid"] = fid_from_stats(stats, ref_stats)
        say(f"FID ({extractor.name} features) vs {cfg.fid_reference}: {record['fid']:.4f}")
    else:
        say(f"feature statistics ({extractor.name}) written to {stats_file} (pass --fid-reference for an FID)")
    atomic_write_json(cfg.out / "fid.json", record)
    return record


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate many samples into resumable shards (multi-GPU with torchrun)",
        description="Draw --num-samples samples with one sampler into DIR/shards/*.safetensors (--shard-size "
                    "samples each) and write DIR/index.json. Sample i depends only on (--seed, i), so the result "
                    "is the same for any number of processes. Resumable: rerun the same command; finished shards "
                    "are verified against their recorded sha256 and kept. Multi-process: torchrun "
                    "--nproc_per_node=K -m skipstep generate ...",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="gmm, digits, a zoo model, or a path to a local diffusers "
                   "directory (required)")
    add_model_args(p)
    p.add_argument("--sampler", default="default",
                   help="sampler name; `skipstep bench --samplers` lists them all with their meanings")
    p.add_argument("--nfe", type=positive_int, default=10, help="network evaluations per sample")
    p.add_argument("--num-samples", type=positive_int, required=True, help="total number of samples (required)")
    p.add_argument("--seed", type=check_seed, default=0,
                   help="base seed, 0 <= seed < 2**63; sample i uses its own generator seeded with "
                        "sample_seed(seed, i)")
    p.add_argument("--out", type=Path, required=True,
                   help="output directory (required): new or empty, or an earlier generate run to resume")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE, help="samples per shard file")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="samples per network batch (does not change the noise of any sample)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (under torchrun, cuda means cuda:LOCAL_RANK), an explicit cuda:N, or mps")
    add_threads_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="discard the samples of a different configuration in --out (only files generate wrote "
                        "there are removed; a directory skipstep did not create is always refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fid-features", default=None,
                   help="compute feature statistics of the output (and an FID with --fid-reference) with this "
                        "feature network: inception, digits, a TorchScript file, or module:function (default: none)")
    p.add_argument("--fid-reference", default=None,
                   help="reference for the FID: a statistics .npz (mu, sigma), a generate output directory, a "
                        "folder of images or a .safetensors tensor file (default: none, statistics only)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 weights for --fid-features inception (never downloaded; default: "
                        "$SKIPSTEP_INCEPTION_WEIGHTS or torch's hub cache)")
    p.set_defaults(func=main_generate)


def main_generate(args: argparse.Namespace) -> int:
    apply_threads(args)
    cfg = GenerateConfig(model=args.model, sampler=args.sampler, nfe=args.nfe, num_samples=args.num_samples,
                         seed=args.seed, out=args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                         device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
                         fid_features=args.fid_features, fid_reference=args.fid_reference,
                         inception_weights=args.inception_weights, guidance_scale=args.guidance_scale,
                         **model_options(args))
    result = generate(cfg)
    if result.rank == 0:
        n = cfg.num_samples
        print(f"{n} samples in {cfg.out}/ ({cfg.num_shards} shards; {len(result.computed)} written by rank 0, "
              f"{result.reused} reused from earlier runs; world size {result.world_size}); {result.seconds:.1f} s "
              f"total, sampling {result.sampling_seconds:.1f} s on rank 0. Index: {cfg.out / 'index.json'}",
              file=sys.stdout)
    return 0
