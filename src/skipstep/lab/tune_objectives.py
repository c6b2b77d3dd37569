"""What ``skipstep tune`` minimises, and the model's own converged samples it is measured against.

Every objective scores the ``N`` few-step samples ``x_i^S`` of a candidate schedule ``S`` drawn from one seed's
common random numbers (:class:`~skipstep.lab.tune_search.CommonNoise`: initial noise ``x_T^(i)``, sample ``i``
asking for label ``real_labels[i mod K]`` of a class-conditional model, at the run's guidance scale). None of the
first three needs a feature network.

``paired`` (the default for a deterministic member: ``eta = 0`` at every step): the mean over samples of the
root-mean-square pixel distance to the model's own converged solution from the *same* ``x_T``,

    D_paired(S) = 1/N * sum_i ( 1/D * || x_i^S - x_i^* ||^2 )^{1/2},

``D`` the number of pixels, ``x_i^*`` the :func:`ode_solution` of ``x_T^(i)``: ``reference_steps`` (default
:data:`DEFAULT_REFERENCE_STEPS`) steps of the deterministic second-order skipstep sampler (``eta = 0``, trailing
spacing -- FlowMatchEuler's own sigmas on a flow model --, the run's x0 clipping and guidance) -- at 200 steps its
own distance to a 400-step solution is about
1/1000 of a 10-step sampler's on the digits model. A deterministic sampler maps ``x_T`` to ``x_0``; ``D_paired`` is
its error against the converged map, sample by sample, so it has little noise and no finite-sample floor. The
root per sample (rather than one mean square over all) keeps the few samples that a coarse schedule sends to
another mode (another digit) from dominating the mean: they count linearly in their distance, not squared.

``pixel-fd`` (the default for a stochastic member, ``eta > 0`` somewhere -- its samples do not follow ``x_T``, so
a paired distance is meaningless -- and under classifier-free guidance, :func:`mixes_scores`): the Fréchet
distance of Gaussians fitted to the flattened pixels,

    FD_pix(S) = ||mu_S - mu_R||^2 + Tr(C_S + C_R - 2 (C_S C_R)^{1/2}),

``mu``, ``C`` the mean and (unbiased) covariance of the candidate's samples and of a reference set ``R`` drawn
from *independent* noise (:data:`~skipstep.lab.sample_sets.REFERENCE_SEED`, so a sampler is not rewarded for
following its ``x_T``): ``--reference ode`` (the default for a deterministic base) the same converged ODE
solution of that noise, ``--reference ancestral`` (the default for a stochastic base and under guidance) the
benchmark's 1000-step ancestral reference set (five times the cost; the limit of the stochastic members). Its
cost grows as ``D^3`` (two ``D x D`` eigendecompositions).

``sw``: the sliced 2-Wasserstein distance in pixels against the same reference (:func:`~skipstep.lab.metrics.
sliced_wasserstein`, 256 fixed directions). ``fd``: the Fréchet distance in the model's feature network's space
(``LoadedModel.feature_fn``; the digits classifier for 8x8 models) -- the objective of earlier versions.

Converged solutions and reference sets are cached under :func:`skipstep.storage.cache_dir` (``tune-references/``
for the ODE solutions, keyed by the model fingerprint, guidance scale, seed, count, batch size, clipping and
steps; ``references/`` for the ancestral sets, shared with the benchmark), verified by their recorded sha256.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from ..storage import atomic_write_json, cache_dir, file_sha256
from . import metrics as M
from .run_dirs import load_tensor, read_json_record, remove_stale_temp_files, save_tensor, seal
from .sample_sets import REFERENCE_SEED, reference_cache_dir
from .sample_sets import reference_samples as bench_reference_samples
from .tune_grids import reference_indices
from .tune_search import BaseSampler, CommonNoise, draw_samples

OBJECTIVES = ("paired", "pixel-fd", "sw", "fd")
DISTRIBUTION_OBJECTIVES = ("pixel-fd", "sw", "fd")
REFERENCE_KINDS = ("ode", "ancestral")
#: Steps of the converged deterministic solution (second order, trailing spacing).
DEFAULT_REFERENCE_STEPS = 200
REFERENCE_SOLVER_ORDER = 2
ODE_FILES = ("solution.safetensors", "solution.json")
#: Samples per seed by default: paired distances are precise with few samples, distribution distances are not.
DEFAULT_NUM_SAMPLES = {"paired": 256, "pixel-fd": 500, "sw": 500, "fd": 1000}


def mixes_scores(guidance_scale: float | None) -> bool:
    """Whether classifier-free guidance at this scale mixes two models' scores, ``(1 - w) eps(x, null) + w eps(x,
    c)`` with ``w`` not 0 or 1. Such a mixture is the score of no diffusion, so its probability-flow ODE and its
    ancestral chain end at different distributions."""
    return guidance_scale is not None and float(guidance_scale) not in (0.0, 1.0)


def default_objective(deterministic: bool, guided: bool = False) -> str:
    """``paired`` for a deterministic base, ``pixel-fd`` for a stochastic one and under guidance (``guided``: see
    :func:`mixes_scores`). Under guidance the paired distance pulls a schedule toward the guided ODE's map, not
    the ancestral samples the bench scores against: on ``digits-cfg`` at w = 4, NFE 5, the paired schedule was
    1.6x worse than the default in the bench's FD, the ``pixel-fd`` one (vs ancestral samples) 0.5x; on
    ``digits-cfg-b``, which the choice did not see, 2.7x and 0.45x (docs/results.md, tune under guidance)."""
    return "pixel-fd" if guided or not deterministic else "paired"


def default_reference(deterministic: bool, guided: bool = False) -> str:
    """The distribution objectives' reference set: ``ancestral`` wherever :func:`default_objective` is a
    distribution objective (a stochastic base, whose samples converge to it, or guidance), else ``ode``."""
    return "ode" if default_objective(deterministic, guided) == "paired" else "ancestral"


def check_objective(objective: str | None, deterministic: bool, has_features: bool, base_text: str,
                    guided: bool = False) -> str:
    """The objective to use (``None``: :func:`default_objective`); refuses, naming ``--objective``, a paired
    objective for a stochastic base and ``fd`` without a feature network."""
    objective = objective or default_objective(deterministic, guided)
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "paired" and not deterministic:
        raise ValueError(f"--objective paired needs a deterministic base (eta = 0 at every step, e.g. --base "
                         f"skipstep-ddim); {base_text} is stochastic, so its samples do not follow x_T: use "
                         f"--objective pixel-fd (or sw, fd)")
    if objective == "fd" and not has_features:
        raise ValueError("--objective fd needs the model's feature network, and this model has none: use "
                         "--objective paired (deterministic bases), pixel-fd or sw")
    return objective


# --------------------------------------------------------------------------------------------------------------
# converged samples
# --------------------------------------------------------------------------------------------------------------

def ode_cache_dir(loaded, seed: int, num_samples: int, steps: int, batch_size: int,
                  root: str | Path | None = None) -> Path:
    """``<cache>/tune-references/<model>-<fingerprint>/ode<steps>o2_seed<S>_n<N>_bs<B>_clip<on|off>[_w<W>]``."""
    # the bench's folder name of the same model, seed, count, batch size, clipping and guidance
    bench_dir = reference_cache_dir(loaded, num_samples, seed, batch_size, root)
    return (Path(root or cache_dir()) / "tune-references" / bench_dir.parent.name
            / f"ode{int(steps)}o{REFERENCE_SOLVER_ORDER}_{bench_dir.name}")


def _read_cached(folder: Path, num_samples: int) -> tuple[torch.Tensor | None, dict]:
    data_file, meta_file = (folder / name for name in ODE_FILES)
    if not (data_file.is_file() and meta_file.is_file()):
        return None, {}
    meta, _ = read_json_record(meta_file)
    if meta is None or file_sha256(data_file) != meta.get("samples_sha256"):
        return None, {}
    samples = load_tensor(data_file)
    return (samples, meta) if samples.shape[0] == num_samples else (None, {})


def ode_cached(loaded, seed: int, num_samples: int, steps: int, batch_size: int, root=None) -> bool:
    """Whether :func:`ode_solution` would read these samples from the cache (no model calls)."""
    return _read_cached(ode_cache_dir(loaded, seed, num_samples, steps, batch_size, root), num_samples)[0] is not None


def ode_solution(loaded, seed: int, num_samples: int, steps: int = DEFAULT_REFERENCE_STEPS, batch_size: int = 500,
                 device: str = "cpu", root: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, dict]:
    """The model's converged deterministic samples from seed ``seed``'s ``x_T`` (see the module docstring), read
    from the cache when they were drawn before (and their sha256 matches), else drawn and cached atomically."""
    folder = ode_cache_dir(loaded, seed, num_samples, steps, batch_size, root)
    remove_stale_temp_files(folder)  # of killed writers only
    samples, meta = _read_cached(folder, num_samples)
    if samples is not None:
        return samples, meta
    if log:
        log(f"converged solution: {num_samples} samples of seed {seed}, {steps} deterministic order-"
            f"{REFERENCE_SOLVER_ORDER} steps, cached in {folder}")
    ts = reference_indices(loaded, steps)
    base = BaseSampler("ode-reference", 0.0, REFERENCE_SOLVER_ORDER, "small")
    samples = draw_samples(loaded, None, ts, [0.0] * steps, base, CommonNoise(seed, num_samples, loaded.sample_shape),
                           batch_size, device)
    spacing = "FlowMatchEuler's sigmas" if loaded.regime == "flow" else "trailing spacing"
    meta = {"source": f"{steps}-step deterministic order-{REFERENCE_SOLVER_ORDER} skipstep samples (eta 0, "
                      f"{spacing})", "seed": int(seed), "num_samples": int(num_samples), "steps": int(steps),
            "guidance_scale": loaded.guidance_scale, "model_fingerprint": loaded.fingerprint, "cache": str(folder)}
    meta["samples_sha256"] = save_tensor(folder / ODE_FILES[0], samples)
    meta = seal(meta)
    atomic_write_json(folder / ODE_FILES[1], meta)  # last: the metadata marks a complete set
    return samples, meta


def ancestral_reference(loaded, num_reference: int, reference_seed: int | None = None,
                        directory: str | Path | None = None, batch_size: int = 500, device: str = "cpu",
                        progress: bool = False) -> tuple[torch.Tensor, dict]:
    """The benchmark's reference set (1000-step ancestral samples; exact data for analytic models), cached as the
    benchmark caches it (:func:`skipstep.lab.sample_sets.reference_samples`)."""
    seed = REFERENCE_SEED if reference_seed is None else int(reference_seed)
    samples, meta = bench_reference_samples(loaded, int(num_reference), seed, batch_size, device, progress,
                                            cache_root=directory)
    meta = dict(meta)
    meta["cache"] = str(reference_cache_dir(loaded, int(num_reference), seed, batch_size, directory))
    return samples, meta


def reference_set(loaded, kind: str, num_reference: int, seed: int, steps: int, batch_size: int, device: str,
                  root=None, progress: bool = False, log=None) -> tuple[torch.Tensor, dict]:
    """The reference set of the distribution objectives: ``kind`` ``ode`` or ``ancestral`` (module docstring)."""
    if kind == "ode":
        return ode_solution(loaded, seed, num_reference, steps, batch_size, device, root, log)
    if kind == "ancestral":
        return ancestral_reference(loaded, num_reference, seed, root, batch_size, device, progress)
    raise ValueError(f"--reference must be one of {', '.join(REFERENCE_KINDS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------------------------
# the objectives
# --------------------------------------------------------------------------------------------------------------

def paired_distance(samples: torch.Tensor, target: torch.Tensor) -> float:
    """``D_paired``: the mean over samples of ``sqrt(mean over pixels of (samples - target)^2)``; ``inf`` for
    non-finite samples."""
    samples, target = samples.double(), target.double()
    if samples.shape != target.shape:
        raise ValueError(f"paired samples must match their targets' shape {tuple(target.shape)}, got "
                         f"{tuple(samples.shape)}")
    if not bool(torch.isfinite(samples).all()):
        return math.inf
    return float(((samples - target) ** 2).flatten(1).mean(dim=1).sqrt().mean())


def pixel_frechet_distance(samples: torch.Tensor, reference_stats: M.GaussianStats) -> float:
    """``FD_pix`` of ``samples`` against the Gaussian fit of the reference's pixels."""
    return float(M.frechet_distance_from_stats(*M.gaussian_stats(samples.double().flatten(1)), *reference_stats))


class PairedObjective:
    """``D_paired`` against each seed's converged solution (``targets``: seed -> samples)."""

    name = "paired"

    def __init__(self, targets: dict[int, torch.Tensor]):
        self.targets = {int(k): v.float() for k, v in targets.items()}

    def add(self, seed: int, target: torch.Tensor) -> None:
        self.targets[int(seed)] = target.float()

    def __call__(self, samples: torch.Tensor, noise: CommonNoise) -> float:
        if noise.seed not in self.targets:
            raise KeyError(f"no converged solution for seed {noise.seed}")
        return paired_distance(samples, self.targets[noise.seed])


class DistributionObjective:
    """``pixel-fd``, ``sw`` or ``fd`` of a sample set against a fixed reference set (the noise is not used)."""

    def __init__(self, name: str, loaded, reference: torch.Tensor, sw_projections: int = 256):
        if name not in DISTRIBUTION_OBJECTIVES:
            raise ValueError(f"a distribution objective is one of {DISTRIBUTION_OBJECTIVES}, got {name!r}")
        if name == "fd" and loaded.feature_fn is None:
            raise ValueError(f"model {loaded.name!r} has no feature network: use objective 'pixel-fd' or 'sw'")
        self.name, self.loaded, self.reference, self.sw_projections = name, loaded, reference.float(), sw_projections
        if name == "fd":
            self.stats = M.gaussian_stats(M.compute_features(self.reference, loaded.feature_fn, 1000))
        elif name == "pixel-fd":
            self.stats = M.gaussian_stats(self.reference.double().flatten(1))

    def __call__(self, samples: torch.Tensor, noise: CommonNoise | None = None) -> float:
        samples = samples.float()
        if not bool(torch.isfinite(samples).all()):
            return math.inf
        if self.name == "pixel-fd":
            return pixel_frechet_distance(samples, self.stats)
        if self.name == "fd":
            feats = M.compute_features(samples, self.loaded.feature_fn, 1000)
            return float(M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.stats))
        return float(M.sliced_wasserstein(samples, self.reference, num_projections=self.sw_projections, seed=0))


def objective_text(name: str) -> str:
    return {"paired": "paired RMS distance to the converged solution from the same x_T",
            "pixel-fd": "Fréchet distance in pixels vs the reference set",
            "sw": "sliced W2 in pixels vs the reference set",
            "fd": "Fréchet distance in feature space vs the reference set"}.get(name, name)


__all__ = ["DEFAULT_NUM_SAMPLES", "DEFAULT_REFERENCE_STEPS", "DISTRIBUTION_OBJECTIVES", "DistributionObjective",
           "OBJECTIVES", "PairedObjective", "REFERENCE_KINDS", "REFERENCE_SOLVER_ORDER", "ancestral_reference",
           "check_objective", "default_objective", "default_reference", "mixes_scores", "objective_text",
           "ode_cache_dir", "ode_cached", "ode_solution", "paired_distance", "pixel_frechet_distance", "reference_set"]
