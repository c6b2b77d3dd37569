"""Sample sets: ``N`` samples of one sampler on one model from one seed, drawn under the benchmark's noise protocol.

* ``x_T`` for a seed is :func:`initial_noise` (``randn`` from a CPU generator seeded with the seed, for all samples
  at once), so every sampler of a run starts from the same noise;
* the per-step noise of the batch starting at index ``b`` comes from :func:`step_generator` ``(seed, b)``;
* every sampler is driven by the one standard diffusers loop (:func:`~skipstep.lab.sampler_registry.run_standard_loop`),
  its NFE counted by wrapping the model, and only the sampling loop is timed.

The reference sets the benchmark and the tuner score against are such sample sets too (:func:`reference_samples`):
exact data draws for analytic models, the model's own 1000-step ancestral samples otherwise, cached on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..storage import atomic_write_json, derived_seed, file_sha256
from .models import LoadedModel
from .run_dirs import load_tensor, read_json_record, remove_stale_temp_files, save_tensor, seal
from .sampler_registry import (CallCounter, SamplerRecipe, build_scheduler, get_sampler, run_standard_loop,
                               scheduler_config_for, steps_for_nfe)

#: Seed of the reference set (kept apart from the sampler seeds so the comparison is between independent sets).
REFERENCE_SEED = 1_000_003


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

def sample_cell(loaded: LoadedModel, sampler: SamplerRecipe, num_steps: int, seed: int, num_samples: int,
                batch_size: int, device: str, progress: bool = False, desc: str = "steps") -> SampledCell:
    """Draw ``num_samples`` with one sampler (batched); time the sampling loops only and count NFE."""
    noise = initial_noise(seed, num_samples, loaded.sample_shape)
    counter = CallCounter(loaded.model)
    chunks, seconds, nfes = [], 0.0, []
    for start in range(0, num_samples, batch_size):
        sched = build_scheduler(sampler, scheduler_config_for(sampler, loaded), num_steps)
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


def reference_samples(loaded: LoadedModel, num_samples: int, seed: int, directory: Path, batch_size: int,
                      device: str = "cpu", progress: bool = False,
                      log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, dict]:
    """The reference set of ``loaded``: read from ``directory`` if drawn before (and its files match the hash
    recorded when they were written; otherwise it is drawn again), else drawn and saved there -- exact data
    samples for analytic models, else ``num_samples`` 1000-step ancestral samples (the sampler
    ``reference-1000``, x0 clipped as the model's scheduler config says) from ``seed``."""
    directory = Path(directory)
    log = log or (print if progress else (lambda msg: None))
    data_file, meta_file = directory / "reference.safetensors", directory / "reference.json"
    remove_stale_temp_files(directory)  # of killed writers only: a cache folder may be shared by live runs
    if data_file.is_file() and meta_file.is_file():
        samples, meta, problem = _cached_reference(data_file, meta_file, num_samples, seed)
        if samples is not None:
            return samples, meta
        log(f"reference in {directory}: {problem}; drawing it again")
    t0 = time.perf_counter()
    if loaded.reference is not None:
        samples = loaded.reference.sample(num_samples, seed).float()
        meta = {"source": "exact data samples", "seconds": time.perf_counter() - t0}
    else:
        ref = get_sampler("reference-1000")
        steps, _ = steps_for_nfe(ref, loaded.num_train_timesteps, loaded.num_train_timesteps)
        if progress:
            print(f"reference: {num_samples} samples with {steps}-step ancestral sampling (cached in {directory})")
        cell = sample_cell(loaded, ref, steps, seed, num_samples, batch_size, device, progress=progress,
                           desc="reference")
        samples = cell.samples
        meta = {"source": f"{steps}-step ancestral samples (reference-1000)", "seconds": cell.seconds,
                "actual_nfe": cell.actual_nfe}
    meta.update({"num_samples": int(samples.shape[0]), "seed": int(seed)})
    meta["samples_sha256"] = save_tensor(data_file, samples)
    meta = seal(meta)
    atomic_write_json(meta_file, meta)  # last: the metadata marks a complete set
    return samples, meta


__all__ = ["REFERENCE_SEED", "SampledCell", "initial_noise", "reference_samples", "sample_cell", "step_generator"]
