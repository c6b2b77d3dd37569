"""Sample sets: ``N`` samples of one sampler on one model from one seed, drawn under the benchmark's noise protocol.

* ``x_T`` for a seed is :func:`initial_noise` (``randn`` from a CPU generator seeded with the seed, for all samples
  at once), so every sampler of a run starts from the same noise;
* the per-step noise of the batch starting at index ``b`` comes from :func:`step_generator` ``(seed, b)``;
* a class-conditional model's sample ``i`` asks for label ``real_labels[i mod K]`` at the view's guidance scale
  (:mod:`skipstep.lab.conditioning`), the same for every sampler;
* every sampler is driven by the one standard loop (:func:`~skipstep.lab.sampler_registry.run_standard_loop`),
  its NFE counted by wrapping the model, and only the sampling loop is timed.

The reference sets the benchmark and the tuner score against are such sample sets too (:func:`reference_samples`):
exact data draws for analytic models, the model's own converged samples otherwise (``reference-1000``: 1000-step
ancestral sampling of a VP model, 1000 FlowMatchEuler steps of a flow model, at the view's guidance scale). They
are cached once under :func:`skipstep.storage.cache_dir` (:func:`reference_cache_dir`: keyed by the model's
fingerprint, guidance scale, seed, count, batch size and clipping), shared by bench, tune and repeated benches;
a benchmark keeps a verified copy in its own directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..storage import atomic_write_bytes, atomic_write_json, cache_dir, derived_seed, file_sha256
from .loaded_model import LoadedModel
from .run_dirs import load_tensor, read_json_record, remove_stale_temp_files, save_tensor, seal
from .sampler_registry import (CallCounter, SamplerRecipe, build_scheduler, get_sampler, run_standard_loop,
                               scheduler_config_for, steps_for_nfe)

#: Seed of the reference set (kept apart from the sampler seeds so the comparison is between independent sets).
REFERENCE_SEED = 1_000_003
REFERENCE_FILES = ("reference.safetensors", "reference.json")


def initial_noise(seed: int, num_samples: int, shape: Sequence[int]) -> torch.Tensor:
    """``x_T`` for a seed: ``randn((N, *shape))`` from a CPU generator seeded with ``seed`` (float32)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(num_samples), *shape), generator=g, dtype=torch.float32)


def step_generator(seed: int, batch_start: int) -> torch.Generator:
    """The per-step noise generator of the batch starting at ``batch_start`` (a CPU generator)."""
    return torch.Generator().manual_seed(derived_seed("skipstep-steps", int(seed), int(batch_start)))


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class SampledCell:
    samples: torch.Tensor
    seconds: float
    actual_nfe: int
    num_steps: int
    #: network branches per NFE (2 for batched classifier-free guidance): unbatched calls = actual_nfe * this
    branches: int = 1
    #: the timesteps the model was evaluated at (the first batch's schedule)
    timesteps: list | None = None
    labels: torch.Tensor | None = None

    @property
    def network_calls_unbatched(self) -> int:
        return self.actual_nfe * self.branches


def _timesteps_of(sched) -> list | None:
    ts = getattr(sched, "timesteps", None)
    if ts is None:
        return None
    values = ts.tolist() if isinstance(ts, torch.Tensor) else list(ts)
    return [int(v) if float(v).is_integer() else round(float(v), 4) for v in values]


def sample_cell(loaded: LoadedModel, sampler: SamplerRecipe, num_steps: int, seed: int, num_samples: int,
                batch_size: int, device: str, progress: bool = False, desc: str = "steps") -> SampledCell:
    """Draw ``num_samples`` with one sampler (batched); time the sampling loops only and count NFE. ``loaded`` is
    the view at the run's guidance scale (:meth:`LoadedModel.at_guidance`)."""
    if loaded.conditioning is not None and loaded.guidance_scale is None:
        loaded = loaded.at_guidance(None)
    noise = initial_noise(seed, num_samples, loaded.sample_shape)
    counter = CallCounter()
    chunks, seconds, nfes, branches, timesteps = [], 0.0, [], 1, None
    with_variance = loaded.learned_variance and sampler.learned_variance
    config = scheduler_config_for(sampler, loaded)
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        sched = build_scheduler(sampler, config, num_steps)
        model = counter.counting(loaded.model_for_batch(range(start, stop), with_variance=with_variance))
        branches = model.branches
        x_t = noise[start:stop].to(device)
        gen = step_generator(seed, start)
        before = counter.calls
        _sync(device)
        t0 = time.perf_counter()
        x = run_standard_loop(sched, model, x_t, num_steps, generator=gen, progress=progress, desc=desc)
        _sync(device)
        seconds += time.perf_counter() - t0
        nfes.append(counter.calls - before)
        chunks.append(x.detach().float().cpu())
        timesteps = timesteps or _timesteps_of(sched)
    if len(set(nfes)) != 1:
        raise RuntimeError(f"sampler {sampler.name} used a different NFE per batch: {nfes}")
    return SampledCell(torch.cat(chunks), seconds, nfes[0], num_steps, branches, timesteps,
                       loaded.labels_for(range(num_samples)))


# --------------------------------------------------------------------------------------------------------------
# reference sets
# --------------------------------------------------------------------------------------------------------------
def _cached_reference(data_file: Path, meta_file: Path, num_samples: int, seed: int
                      ) -> tuple[torch.Tensor | None, dict, str]:
    """A reference set drawn before, if its files are intact: ``(samples, meta, "")`` or ``(None, {}, reason)``."""
    meta, reason = read_json_record(meta_file)
    if meta is None:
        return None, {}, f"{meta_file.name} is {reason}"
    recorded = meta.get("samples_sha256")
    if recorded is not None and file_sha256(data_file) != recorded:
        return None, {}, f"{data_file.name} differs from the sha256 recorded when it was written"
    try:
        samples = load_tensor(data_file)
    except Exception as err:  # noqa: BLE001 - a damaged file of an older skipstep (no recorded hash)
        return None, {}, f"{data_file.name} cannot be read ({err})"
    if (meta.get("num_samples"), meta.get("seed")) != (int(num_samples), int(seed)) or samples.shape[0] != num_samples:
        return None, {}, f"it holds {samples.shape[0]} samples of seed {meta.get('seed')}, not {num_samples} of {seed}"
    return samples, meta, ""


def _read_reference(directory: Path, num_samples: int, seed: int, log: Callable[[str], None]):
    data_file, meta_file = (directory / name for name in REFERENCE_FILES)
    if data_file.is_file() and meta_file.is_file():
        samples, meta, problem = _cached_reference(data_file, meta_file, num_samples, seed)
        if samples is not None:
            return samples, meta
        log(f"reference in {directory}: {problem}; drawing it again")
    return None, {}


def draw_reference(loaded: LoadedModel, num_samples: int, seed: int, batch_size: int, device: str = "cpu",
                   progress: bool = False) -> tuple[torch.Tensor, dict]:
    """A fresh reference set: exact data samples for analytic models, else ``reference-1000`` samples."""
    t0 = time.perf_counter()
    if loaded.reference is not None:
        return loaded.reference.sample(num_samples, seed).float(), {"source": "exact data samples",
                                                                    "seconds": time.perf_counter() - t0}
    ref = get_sampler("reference-1000")
    steps, _ = steps_for_nfe(ref, loaded.num_train_timesteps, loaded.num_train_timesteps)
    kind = "FlowMatchEulerDiscreteScheduler (ODE)" if loaded.regime == "flow" else "ancestral"
    if progress:
        print(f"reference: {num_samples} samples with {steps}-step {kind} sampling"
              + (f" at guidance scale {loaded.guidance_scale:g}" if loaded.guidance_scale is not None else ""))
    cell = sample_cell(loaded, ref, steps, seed, num_samples, batch_size, device, progress=progress, desc="reference")
    meta = {"source": f"{steps}-step {kind} samples (reference-1000)", "seconds": cell.seconds,
            "actual_nfe": cell.actual_nfe}
    if loaded.guidance_scale is not None:
        meta.update(guidance_scale=loaded.guidance_scale, network_calls_unbatched=cell.network_calls_unbatched)
    return cell.samples, meta


def reference_cache_dir(loaded: LoadedModel, num_samples: int, seed: int, batch_size: int,
                        root: str | Path | None = None) -> Path:
    """``<cache>/references/<model>-<fingerprint>/seed<S>_n<N>_bs<B>_clip<on|off>[_w<W>]`` (see the module doc)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in loaded.name)[-40:]
    clip = "on" if loaded.regime == "vp" and bool(loaded.scheduler_config.get("clip_sample", False)) else "off"
    guidance = f"_{loaded.guidance_key}" if loaded.guidance_key else ""
    return (Path(root or cache_dir()) / "references" / f"{safe}-{loaded.fingerprint}" /
            f"seed{int(seed)}_n{int(num_samples)}_bs{int(batch_size)}_clip{clip}{guidance}")


def reference_samples(loaded: LoadedModel, num_samples: int, seed: int, batch_size: int, device: str = "cpu",
                      progress: bool = False, log: Callable[[str], None] | None = None,
                      cache_root: str | Path | None = None, keep_in: Path | None = None) -> tuple[torch.Tensor, dict]:
    """The reference set of ``loaded`` (the view at its guidance scale): read from the cache if drawn before (and
    its files match the hash recorded when they were written; otherwise it is drawn again), else drawn and
    cached. ``keep_in``: a directory that keeps a verified copy (a benchmark's ``reference/``), read first."""
    log = log or (print if progress else (lambda msg: None))
    if keep_in is not None:
        remove_stale_temp_files(Path(keep_in))
        samples, meta = _read_reference(Path(keep_in), num_samples, seed, log)
        if samples is not None:
            return samples, meta
    directory = reference_cache_dir(loaded, num_samples, seed, batch_size, cache_root) / "reference"
    remove_stale_temp_files(directory)  # of killed writers only: a cache folder may be shared by live runs
    samples, meta = _read_reference(directory, num_samples, seed, log)
    if samples is None:
        samples, meta = draw_reference(loaded, num_samples, seed, batch_size, device, progress)
        meta.update({"num_samples": int(samples.shape[0]), "seed": int(seed), "cache": str(directory.parent)})
        meta["samples_sha256"] = save_tensor(directory / REFERENCE_FILES[0], samples)
        meta = seal(meta)
        atomic_write_json(directory / REFERENCE_FILES[1], meta)  # last: the metadata marks a complete set
    if keep_in is not None:
        keep = Path(keep_in)
        atomic_write_bytes(keep / REFERENCE_FILES[0], (directory / REFERENCE_FILES[0]).read_bytes())
        atomic_write_json(keep / REFERENCE_FILES[1], meta)
    return samples, meta


__all__ = ["REFERENCE_SEED", "SampledCell", "draw_reference", "initial_noise", "reference_cache_dir",
           "reference_samples", "sample_cell", "step_generator"]
