"""Sample-quality metrics: compare a set of generated samples with a reference set.

Every function here is a pure function of tensors or arrays (``torch.Tensor``, ``numpy.ndarray`` or anything
``numpy.asarray`` accepts). A set of ``N`` samples has shape ``(N, ...)`` and is flattened to ``(N, D)``, so
``N x 1 x 8 x 8`` images and ``N x D`` vectors are handled alike. All arithmetic is float64.

* Fréchet distance between Gaussian fits of two feature sets (FID when the features come from a classifier):
  :func:`gaussian_stats`, :func:`frechet_distance_from_stats`, :func:`frechet_distance`, and
  :func:`feature_frechet_distance`, which also computes the features in batches.
* Improved precision and recall (Kynkäänniemi et al. 2019): :func:`precision_recall`.
* Sliced 2-Wasserstein distance in sample space: :func:`sliced_wasserstein`.
* The fraction of samples a classifier assigns to the class they asked for: :func:`class_match`.
* Metrics that are exact for a Gaussian-mixture data distribution with isotropic modes:
  :func:`mode_assignments`, :func:`mode_frequencies`, :func:`mode_frequency_tv`,
  :func:`within_mode_spread_ratio` and :func:`mixture_metrics`, which returns all of them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = [
    "GaussianStats",
    "gaussian_stats",
    "frechet_distance_from_stats",
    "frechet_distance",
    "compute_features",
    "feature_frechet_distance",
    "precision_recall",
    "sliced_wasserstein",
    "mode_assignments",
    "mode_frequencies",
    "mode_frequency_tv",
    "within_mode_spread_ratio",
    "mixture_metrics",
    "class_match",
]

# An input covariance may have negative eigenvalues down to this fraction of its largest eigenvalue (round-off);
# anything more negative means the matrix is not a covariance and is rejected.
_PSD_RELATIVE_TOLERANCE = 1e-8
_SYMMETRY_RELATIVE_TOLERANCE = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------------


def _as_sample_matrix(x: Any, name: str, min_samples: int = 2) -> torch.Tensor:
    """``x`` of shape ``(N, ...)`` as a float64 tensor of shape ``(N, D)`` (on ``x``'s device if a tensor)."""
    if isinstance(x, torch.Tensor):
        matrix = x.detach().to(torch.float64)
    else:
        try:
            matrix = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from error
    if matrix.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with one row per sample, got shape {tuple(matrix.shape)}")
    matrix = matrix.reshape(matrix.shape[0], -1)
    if matrix.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples, got {matrix.shape[0]}")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has zero features per sample (shape {tuple(matrix.shape)})")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _check_same_dimension(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of features per sample, "
            f"got {a.shape[1]} and {b.shape[1]}"
        )


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------------------


class GaussianStats(NamedTuple):
    """Mean ``(F,)`` and covariance ``(F, F)`` of a feature set, float64; cache these for a reference set."""

    mean: np.ndarray
    cov: np.ndarray


def gaussian_stats(feats: ArrayLike) -> GaussianStats:
    """Gaussian fit of a feature set: ``mu = mean_i f_i`` and ``S = sum_i (f_i - mu)(f_i - mu)^T / (N - 1)``.

    ``feats`` has shape ``(N, ...)`` with ``N >= 2``; trailing dimensions are flattened into ``F`` features.
    The covariance is the unbiased estimate (as ``numpy.cov``, and as the reference FID code uses).
    """
    matrix = _as_sample_matrix(feats, "feats").cpu().numpy()
    mean = matrix.mean(axis=0)
    centered = matrix - mean
    cov = centered.T @ centered / (matrix.shape[0] - 1)
    return GaussianStats(mean, cov)


def _validate_stats(mean: Any, cov: Any, mean_name: str, cov_name: str) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mean.ndim != 1 or mean.shape[0] == 0:
        raise ValueError(f"{mean_name} must be a non-empty 1-D vector, got shape {mean.shape}")
    dim = mean.shape[0]
    if cov.shape != (dim, dim):
        raise ValueError(f"{cov_name} must have shape ({dim}, {dim}) to match {mean_name}, got {cov.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        raise ValueError(f"{mean_name} and {cov_name} must contain only finite values")
    scale = max(float(np.abs(cov).max()), np.finfo(np.float64).tiny)
    if float(np.abs(cov - cov.T).max()) > _SYMMETRY_RELATIVE_TOLERANCE * scale:
        raise ValueError(f"{cov_name} must be symmetric")
    return mean, 0.5 * (cov + cov.T)


def _check_psd_eigenvalues(eigenvalues: np.ndarray, name: str) -> None:
    largest = max(float(np.abs(eigenvalues).max()), np.finfo(np.float64).tiny)
    if float(eigenvalues.min()) < -_PSD_RELATIVE_TOLERANCE * largest:
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {eigenvalues.min():.3g})")


def _psd_square_root(cov: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root ``V diag(sqrt(lambda)) V^T`` of a covariance from its eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    _check_psd_eigenvalues(eigenvalues, name)
    # Negative eigenvalues this small are round-off of a PSD matrix (e.g. a rank-deficient covariance).
    root_eigenvalues = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * root_eigenvalues) @ eigenvectors.T


def frechet_distance_from_stats(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Fréchet (2-Wasserstein squared) distance between ``N(mu1, S1)`` and ``N(mu2, S2)``.

        FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

    computed in float64 through the symmetric form ``Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}``:
    ``S1^{1/2}`` comes from an eigendecomposition of ``S1`` and the trace from the eigenvalues of the symmetric
    PSD matrix ``S1^{1/2} S2 S1^{1/2}``. Both stay real, unlike ``scipy.linalg.sqrtm(S1 @ S2)``, which can return
    complex values or fail for singular covariances. Eigenvalues that round-off pushes slightly below zero are
    clamped to zero (an input covariance with clearly negative eigenvalues is rejected), and the result, which
    is non-negative in exact arithmetic, is clamped at zero for the same reason.
    """
    mu1, cov1 = _validate_stats(mu1, cov1, "mu1", "cov1")
    mu2, cov2 = _validate_stats(mu2, cov2, "mu2", "cov2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must have the same dimension, got {mu1.shape[0]} and {mu2.shape[0]}")
    sqrt_cov1 = _psd_square_root(cov1, "cov1")
    _check_psd_eigenvalues(np.linalg.eigvalsh(cov2), "cov2")
    middle = sqrt_cov1 @ cov2 @ sqrt_cov1
    middle_eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt_product = float(np.sqrt(np.clip(middle_eigenvalues, 0.0, None)).sum())
    mean_difference = mu1 - mu2
    trace_term = float(np.trace(cov1) + np.trace(cov2)) - 2.0 * trace_sqrt_product
    distance = float(mean_difference @ mean_difference) + trace_term
    return max(distance, 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussian fits of two feature sets of shapes ``(N_a, F)`` and ``(N_b, F)``.

    ``FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with the statistics of
    :func:`gaussian_stats`; see :func:`frechet_distance_from_stats` for how it is computed.
    """
    a = _as_sample_matrix(feats_a, "feats_a")
    b = _as_sample_matrix(feats_b, "feats_b")
    _check_same_dimension(a, b, "feats_a", "feats_b")
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def compute_features(
    samples: ArrayLike, feature_fn: Callable[[torch.Tensor], Any], batch_size: int = 256
) -> np.ndarray:
    """``feature_fn`` applied to ``samples`` in batches of ``batch_size`` under ``torch.no_grad()``.

    ``feature_fn`` maps a batch ``(B, ...)`` to features ``(B, F)`` (put the network in eval mode and on the
    right device yourself). Returns the concatenated features as a float64 array ``(N, F)``.
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    samples = samples if isinstance(samples, torch.Tensor) else torch.as_tensor(np.asarray(samples))
    if samples.ndim < 1 or samples.shape[0] == 0:
        raise ValueError(f"samples must have shape (N, ...) with N >= 1, got shape {tuple(samples.shape)}")
    batches = []
    with torch.no_grad():
        for start in range(0, samples.shape[0], batch_size):
            batch = samples[start : start + batch_size]
            feats = feature_fn(batch)
            feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
            if feats.ndim < 1 or feats.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"feature_fn must return one feature row per sample: got shape {feats.shape} "
                    f"for a batch of {batch.shape[0]}"
                )
            batches.append(feats.reshape(feats.shape[0], -1).astype(np.float64))
    return np.concatenate(batches, axis=0)


def feature_frechet_distance(
    samples: ArrayLike,
    reference: ArrayLike | GaussianStats | tuple[Any, Any],
    feature_fn: Callable[[torch.Tensor], Any],
    batch_size: int = 256,
) -> float:
    """Fréchet distance in the feature space of ``feature_fn`` (FID with a classifier's features).

    ``FD(features(samples), features(reference))``. ``reference`` is either a sample set, whose features are
    computed here, or cached reference statistics ``(mean, cov)`` such as :func:`gaussian_stats` returns.
    """
    sample_stats = gaussian_stats(compute_features(samples, feature_fn, batch_size))
    if isinstance(reference, tuple):
        if len(reference) != 2:
            raise ValueError(f"reference statistics must be a (mean, cov) pair, got {len(reference)} items")
        reference_stats = GaussianStats(*reference)
    else:
        reference_stats = gaussian_stats(compute_features(reference, feature_fn, batch_size))
    return frechet_distance_from_stats(*sample_stats, *reference_stats)


# ----------------------------------------------------------------------------------------------------------------
# Improved precision and recall
# ----------------------------------------------------------------------------------------------------------------


def _rows_per_chunk(num_columns: int, max_chunk_elements: int) -> int:
    return max(1, max_chunk_elements // max(1, num_columns))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The direct difference form is exact for coincident points (distance 0); the matmul shortcut is not.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_neighbour_radii(points: torch.Tensor, k: int, max_chunk_elements: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in the same set."""
    rows = _rows_per_chunk(points.shape[0], max_chunk_elements)
    radii = []
    for start in range(0, points.shape[0], rows):
        distances = _pairwise_distances(points[start : start + rows], points)
        # The k+1 smallest include the point itself at distance 0 (or a duplicate of it, also at 0).
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _fraction_inside_manifold(
    queries: torch.Tensor, manifold_points: torch.Tensor, radii: torch.Tensor, max_chunk_elements: int
) -> float:
    """Fraction of queries q with ||q - p_j|| <= radius_j for at least one manifold point p_j."""
    rows = _rows_per_chunk(manifold_points.shape[0], max_chunk_elements)
    inside = 0
    for start in range(0, queries.shape[0], rows):
        distances = _pairwise_distances(queries[start : start + rows], manifold_points)
        inside += int((distances <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3, max_chunk_elements: int = 2**24
) -> tuple[float, float]:
    """Improved precision and recall of Kynkäänniemi et al. (2019), with k-nearest-neighbour manifolds.

    The manifold of a set ``Phi`` is the union of balls ``B(phi, r_k(phi))``, where ``r_k(phi)`` is the distance
    from ``phi`` to its k-th nearest neighbour in ``Phi`` other than itself. With ``f(x, Phi) = 1`` iff ``x`` lies
    in the manifold of ``Phi`` (``||x - phi|| <= r_k(phi)`` for some ``phi``)::

        precision = mean_{g in fake} f(g, real)      recall = mean_{r in real} f(r, fake)

    Precision is the share of generated samples that look real; recall is the share of the real distribution
    the generated samples cover. Swapping the two sets swaps precision and recall.

    Pairwise distances are computed with ``torch.cdist`` in float64 in row chunks of at most
    ``max_chunk_elements`` distances, so memory stays bounded for any set size. They use direct differences
    rather than the faster matrix-product expansion, so a sample equal to a manifold point is at distance
    exactly 0 and counts as inside even where duplicates make a radius 0. ``k`` must be smaller than the size of
    each set.
    """
    real = _as_sample_matrix(real_feats, "real_feats")
    fake = _as_sample_matrix(fake_feats, "fake_feats").to(real.device)
    _check_same_dimension(real, fake, "real_feats", "fake_feats")
    k = _check_positive_int(k, "k")
    max_chunk_elements = _check_positive_int(max_chunk_elements, "max_chunk_elements")
    for name, feats in (("real_feats", real), ("fake_feats", fake)):
        if k >= feats.shape[0]:
            raise ValueError(
                f"k must be smaller than the number of samples in {name}, got k={k} and N={feats.shape[0]}"
            )
    real_radii = _kth_neighbour_radii(real, k, max_chunk_elements)
    fake_radii = _kth_neighbour_radii(fake, k, max_chunk_elements)
    precision = _fraction_inside_manifold(fake, real, real_radii, max_chunk_elements)
    recall = _fraction_inside_manifold(real, fake, fake_radii, max_chunk_elements)
    return precision, recall


# ----------------------------------------------------------------------------------------------------------------
# Sliced Wasserstein distance
# ----------------------------------------------------------------------------------------------------------------


def _squared_w2_of_sorted(sorted_a: torch.Tensor, sorted_b: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between 1-D empirical measures, one per column of the sorted ``(N, P)`` inputs.

    ``W2^2 = int_0^1 (Q_a(t) - Q_b(t))^2 dt`` with the step quantile functions ``Q(t) = x_(ceil(t N))``.
    """
    size_a, size_b = sorted_a.shape[0], sorted_b.shape[0]
    if size_a == size_b:
        return (sorted_a - sorted_b).square().mean(dim=0)
    # Both quantile functions are constant between consecutive levels i/N_a and j/N_b. Levels are kept as
    # integers over the common denominator N_a N_b so that coinciding levels are found exactly.
    device = sorted_a.device
    levels = torch.cat(
        [
            torch.arange(1, size_a + 1, device=device, dtype=torch.int64) * size_b,
            torch.arange(1, size_b + 1, device=device, dtype=torch.int64) * size_a,
        ]
    ).unique()
    widths = torch.diff(levels, prepend=levels.new_zeros(1)).to(torch.float64) / (size_a * size_b)
    index_a = torch.div(levels + size_b - 1, size_b, rounding_mode="floor") - 1
    index_b = torch.div(levels + size_a - 1, size_a, rounding_mode="floor") - 1
    return (widths.unsqueeze(1) * (sorted_a[index_a] - sorted_b[index_b]).square()).sum(dim=0)


def sliced_wasserstein(
    a: ArrayLike,
    b: ArrayLike,
    num_projections: int = 256,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance between two sample sets, in sample (pixel) space.

        SW2(a, b) = ( E_{u ~ Uniform(S^{D-1})} W2^2(<u, a>, <u, b>) )^{1/2}

    estimated with ``num_projections`` random unit directions ``u`` (normalised Gaussian vectors drawn from
    ``generator``, a CPU generator, or from a fresh one seeded with ``seed``), so the result is deterministic for a
    given seed. Samples of shape ``(N, ...)`` are flattened to ``(N, D)``. Each 1-D ``W2`` is exact for the two
    empirical measures: for equal set sizes it pairs the sorted projections, ``mean_i (a_(i) - b_(i))^2``; for
    unequal sizes it integrates the squared difference of the two step quantile functions over ``[0, 1]``.
    A shift by ``d`` gives ``SW2^2 -> ||d||^2 / D`` as the number of projections grows.
    """
    samples_a = _as_sample_matrix(a, "a", min_samples=1)
    samples_b = _as_sample_matrix(b, "b", min_samples=1).to(samples_a.device)
    _check_same_dimension(samples_a, samples_b, "a", "b")
    num_projections = _check_positive_int(num_projections, "num_projections")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    # Directions are drawn on the CPU so that a seed gives the same directions on every device.
    directions = torch.randn(num_projections, samples_a.shape[1], generator=generator, dtype=torch.float64)
    directions = (directions / directions.norm(dim=1, keepdim=True)).to(samples_a.device)
    sorted_a = (samples_a @ directions.T).sort(dim=0).values
    sorted_b = (samples_b @ directions.T).sort(dim=0).values
    return math.sqrt(float(_squared_w2_of_sorted(sorted_a, sorted_b).mean()))


# ----------------------------------------------------------------------------------------------------------------
# Gaussian-mixture metrics
# ----------------------------------------------------------------------------------------------------------------


def _validate_mixture(
    samples: ArrayLike, means: ArrayLike, weights: ArrayLike, std: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    mode_means = _as_sample_matrix(means, "means", min_samples=1)
    points = _as_sample_matrix(samples, "samples", min_samples=1).to(mode_means.device)
    _check_same_dimension(points, mode_means, "samples", "means")
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    mode_weights = torch.as_tensor(np.asarray(weights, dtype=np.float64)).to(mode_means.device)
    num_modes = mode_means.shape[0]
    if mode_weights.shape != (num_modes,):
        raise ValueError(f"weights must have shape ({num_modes},) to match means, got {tuple(mode_weights.shape)}")
    if not bool(torch.isfinite(mode_weights).all()) or bool((mode_weights < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    if abs(float(mode_weights.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {float(mode_weights.sum())}")
    std = float(std)
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a positive finite number, got {std}")
    return points, mode_means, mode_weights, std


def _assign(points: torch.Tensor, mode_means: torch.Tensor, mode_weights: torch.Tensor, std: float) -> torch.Tensor:
    squared_distances = _pairwise_distances(points, mode_means).square()
    # log w_k - ||x - mu_k||^2 / (2 std^2); the Gaussian normaliser is the same for every mode and cancels.
    log_posterior = torch.log(mode_weights).unsqueeze(0) - squared_distances / (2.0 * std**2)
    return log_posterior.argmax(dim=1)


def mode_assignments(samples: ArrayLike, means: ArrayLike, weights: ArrayLike, std: float) -> torch.Tensor:
    """Most probable mixture component of each sample, ``(N,)`` int64.

    ``c(x) = argmax_k p(k | x) = argmax_k [log w_k - ||x - mu_k||^2 / (2 std^2)]`` for the mixture
    ``sum_k w_k N(mu_k, std^2 I)`` with ``means (K, D)``, ``weights (K,)`` summing to 1 and a scalar ``std``.
    """
    return _assign(*_validate_mixture(samples, means, weights, std))


def _frequencies(assignments: torch.Tensor, num_modes: int) -> torch.Tensor:
    return torch.bincount(assignments, minlength=num_modes).to(torch.float64) / assignments.shape[0]


def mode_frequencies(samples: ArrayLike, means: ArrayLike, weights: ArrayLike, std: float) -> np.ndarray:
    """Share of samples assigned to each mode, ``freq_k = #{i : c(x_i) = k} / N``, as a ``(K,)`` array."""
    points, mode_means, mode_weights, std = _validate_mixture(samples, means, weights, std)
    return _frequencies(_assign(points, mode_means, mode_weights, std), mode_means.shape[0]).cpu().numpy()


def _total_variation(frequencies: torch.Tensor, mode_weights: torch.Tensor) -> float:
    return 0.5 * float((frequencies - mode_weights).abs().sum())


def mode_frequency_tv(samples: ArrayLike, means: ArrayLike, weights: ArrayLike, std: float) -> float:
    """Total variation between the mode frequencies and the mixture weights, ``0.5 * sum_k |freq_k - w_k|``.

    0 means every mode receives its share of samples; all samples in mode ``k`` gives ``1 - w_k``. For exact
    samples it is 0 up to sampling error when the modes are well separated (separation much larger than ``std``).
    """
    points, mode_means, mode_weights, std = _validate_mixture(samples, means, weights, std)
    frequencies = _frequencies(_assign(points, mode_means, mode_weights, std), mode_means.shape[0])
    return _total_variation(frequencies, mode_weights)


def _spread_ratio(points: torch.Tensor, mode_means: torch.Tensor, assignments: torch.Tensor, std: float) -> float:
    mean_squared_deviation = float((points - mode_means[assignments]).square().mean())
    return math.sqrt(mean_squared_deviation) / std


def within_mode_spread_ratio(samples: ArrayLike, means: ArrayLike, weights: ArrayLike, std: float) -> float:
    """Root-mean-square per-coordinate distance to the assigned mode mean, in units of the mode ``std``.

        ratio = sqrt( (1 / (N D)) * sum_i ||x_i - mu_{c(x_i)}||^2 ) / std

    with ``c`` from :func:`mode_assignments`. Exact samples from well-separated modes give 1 (since
    ``E||x - mu_k||^2 = D std^2`` within mode ``k``); samples collapsed onto the means give 0, and an
    over-dispersed sampler gives more than 1. When modes overlap, exact samples score slightly below 1 because
    a sample is assigned to its nearest plausible mean rather than to the mode that generated it.
    """
    points, mode_means, mode_weights, std = _validate_mixture(samples, means, weights, std)
    return _spread_ratio(points, mode_means, _assign(points, mode_means, mode_weights, std), std)


def mixture_metrics(samples: ArrayLike, means: ArrayLike, weights: ArrayLike, std: float) -> dict[str, Any]:
    """All Gaussian-mixture metrics from a single mode assignment.

    Returns ``{"mode_frequency_tv": float, "within_mode_spread_ratio": float, "mode_frequencies": list[float]}``
    as defined in :func:`mode_frequency_tv`, :func:`within_mode_spread_ratio` and :func:`mode_frequencies`.
    """
    points, mode_means, mode_weights, std = _validate_mixture(samples, means, weights, std)
    assignments = _assign(points, mode_means, mode_weights, std)
    frequencies = _frequencies(assignments, mode_means.shape[0])
    return {
        "mode_frequency_tv": _total_variation(frequencies, mode_weights),
        "within_mode_spread_ratio": _spread_ratio(points, mode_means, assignments, std),
        "mode_frequencies": frequencies.cpu().tolist(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Class-conditional samples
# ----------------------------------------------------------------------------------------------------------------


def class_match(logits: ArrayLike, labels: ArrayLike) -> float:
    """``mean_i [argmax_k logits_ik = labels_i]``: the fraction of samples a classifier assigns to the class they
    asked for. ``logits`` ``(N, K)``, ``labels`` ``(N,)`` integers."""
    scores = _as_sample_matrix(logits, "logits", min_samples=1)
    targets = torch.as_tensor(np.asarray(labels)).reshape(-1).to(scores.device)
    if targets.shape[0] != scores.shape[0]:
        raise ValueError(f"logits and labels must have one row per sample, got {scores.shape[0]} and {targets.shape[0]}")
    return float((scores.argmax(1) == targets).double().mean())
