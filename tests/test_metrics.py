import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skipstep.lab.metrics import (
    GaussianStats,
    compute_features,
    feature_frechet_distance,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    mixture_metrics,
    mode_assignments,
    mode_frequencies,
    mode_frequency_tv,
    precision_recall,
    sliced_wasserstein,
    within_mode_spread_ratio,
)


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T + 0.1 * np.eye(dim)


def sqrtm_frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula, as the reference FID code computes it."""
    cross_sqrt = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross_sqrt))


small_sample_sets = st.integers(2, 8).flatmap(
    lambda num_features: st.tuples(
        *[
            arrays(
                np.float64,
                st.tuples(st.integers(2, 12), st.just(num_features)),
                elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False),
            )
            for _ in range(2)
        ]
    )
)


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------------


def test_gaussian_stats_match_numpy():
    feats = np.random.default_rng(0).normal(size=(50, 3, 2))
    mean, cov = gaussian_stats(feats)
    flat = feats.reshape(50, 6)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(flat, rowvar=False), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_frechet_distance_of_identical_sets_is_zero(scale):
    feats = scale * np.random.default_rng(1).normal(size=(500, 6)) @ random_spd(np.random.default_rng(2), 6)
    mean_variance = np.trace(np.cov(feats, rowvar=False)) / 6
    assert frechet_distance(feats, feats) <= 1e-10 * mean_variance


def test_frechet_distance_from_stats_of_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(3)
    cov = random_spd(rng, 5)
    mean = rng.normal(size=5)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance_from_stats(mean, cov, mean + shift, cov) == pytest.approx(shift @ shift, rel=1e-10)


def test_frechet_distance_from_stats_of_diagonal_covariances_has_closed_form():
    variances_a = np.array([1.0, 4.0, 0.25, 2.0])
    variances_b = np.array([1.0, 1.0, 1.0, 0.5])
    expected = np.sum((np.sqrt(variances_a) - np.sqrt(variances_b)) ** 2)
    distance = frechet_distance_from_stats(np.zeros(4), np.diag(variances_a), np.zeros(4), np.diag(variances_b))
    assert distance == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_shifted_set_is_squared_shift():
    feats = np.random.default_rng(4).normal(size=(300, 4))
    shift = np.array([0.5, 1.0, -1.0, 2.0])
    assert frechet_distance(feats, feats + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_frechet_distance_of_gaussian_samples_approaches_analytic_value():
    rng = np.random.default_rng(5)
    variances_a = np.array([1.0, 4.0, 0.25, 2.0])
    mean_b = np.array([1.0, 0.0, 0.0, -1.0])
    a = rng.normal(size=(20000, 4)) * np.sqrt(variances_a)
    b = mean_b + rng.normal(size=(20000, 4))
    expected = mean_b @ mean_b + np.sum((np.sqrt(variances_a) - 1.0) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.05)


def test_frechet_distance_from_stats_matches_sqrtm_formula_on_random_spd_matrices():
    rng = np.random.default_rng(6)
    for dim in (1, 3, 10, 32):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        cov1, cov2 = random_spd(rng, dim), random_spd(rng, dim)
        expected = sqrtm_frechet_distance(mu1, cov1, mu2, cov2)
        assert frechet_distance_from_stats(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_handles_rank_deficient_covariance():
    # Fewer samples than features: singular covariances, where sqrtm(S1 S2) is ill-conditioned.
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20))
    distance = frechet_distance(a, b)
    assert math.isfinite(distance) and distance > 0
    assert frechet_distance(b, a) == pytest.approx(distance, rel=1e-6)


def test_frechet_distance_accepts_tensors_and_images():
    images = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(images, images + 1.0) == pytest.approx(16.0, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(small_sample_sets)
def test_frechet_distance_is_symmetric_and_at_least_squared_mean_shift(sets):
    a, b = sets
    distance = frechet_distance(a, b)
    scale = 1.0 + np.sum(a**2) / len(a) + np.sum(b**2) / len(b)
    assert frechet_distance(b, a) == pytest.approx(distance, abs=1e-6 * scale)
    mean_shift = a.mean(axis=0) - b.mean(axis=0)
    # The trace term is the squared Bures distance between the covariances, which is non-negative.
    assert distance >= mean_shift @ mean_shift - 1e-6 * scale
    assert frechet_distance(a, a) <= 1e-6 * scale


def test_feature_frechet_distance_batches_features_and_accepts_cached_stats():
    generator = torch.Generator().manual_seed(8)
    samples = torch.randn(100, 1, 8, 8, generator=generator, dtype=torch.float64)
    reference = torch.randn(120, 1, 8, 8, generator=generator, dtype=torch.float64)
    projection = torch.randn(64, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    batch_sizes = []

    def feature_fn(x):
        batch_sizes.append(x.shape[0])
        assert not torch.is_grad_enabled()
        return x.flatten(1) @ projection

    expected = frechet_distance(
        (samples.flatten(1) @ projection).detach(), (reference.flatten(1) @ projection).detach()
    )
    assert feature_frechet_distance(samples, reference, feature_fn, batch_size=32) == pytest.approx(expected, rel=1e-9)
    assert batch_sizes[:4] == [32, 32, 32, 4]
    reference_stats = gaussian_stats(compute_features(reference, feature_fn, batch_size=50))
    assert isinstance(reference_stats, GaussianStats)
    assert feature_frechet_distance(samples, reference_stats, feature_fn) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_validation_names_the_parameter():
    with pytest.raises(ValueError, match="feats_a and feats_b"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="feats_b needs at least 2 samples"):
        frechet_distance(np.zeros((4, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="feats_a contains NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="cov2 must have shape"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="cov1 is not positive semi-definite"):
        frechet_distance_from_stats(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="cov2 must be symmetric"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="feature_fn must return one feature row per sample"):
        compute_features(torch.zeros(10, 3), lambda x: x[:1], batch_size=4)


# ---------------------------------------------------------------------------------------------------------------
# Precision and recall
# ---------------------------------------------------------------------------------------------------------------


def test_precision_recall_of_identical_sets_is_one():
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(9))
    assert precision_recall(feats, feats.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_of_separated_sets_is_zero():
    generator = torch.Generator().manual_seed(10)
    real = torch.randn(300, 8, generator=generator)
    fake = torch.randn(200, 8, generator=generator) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_of_one_covered_cluster_out_of_two():
    generator = torch.Generator().manual_seed(11)
    covered_cluster = torch.randn(200, 4, generator=generator)
    missed_cluster = torch.randn(200, 4, generator=generator) + 50.0
    real = torch.cat([covered_cluster, missed_cluster])
    # Every generated sample is a real one (precision 1), but only half the real data is covered (recall 1/2).
    assert precision_recall(real, covered_cluster, k=5) == (1.0, 0.5)


def test_precision_of_a_random_subset_is_one():
    real = torch.randn(400, 6, generator=torch.Generator().manual_seed(12))
    subset = real[torch.randperm(400, generator=torch.Generator().manual_seed(13))[:100]]
    precision, recall = precision_recall(real, subset, k=3)
    assert precision == 1.0 and 0.0 < recall < 1.0


def test_precision_recall_does_not_depend_on_chunking():
    generator = torch.Generator().manual_seed(14)
    real = torch.randn(150, 5, generator=generator)
    fake = torch.randn(130, 5, generator=generator) * 0.7 + 0.5
    unchunked = precision_recall(real, fake, k=4)
    assert 0.0 < unchunked[0] < 1.0 and 0.0 < unchunked[1] < 1.0
    assert precision_recall(real, fake, k=4, max_chunk_elements=7 * 150) == unchunked
    assert precision_recall(real, fake, k=4, max_chunk_elements=1) == unchunked


def test_precision_recall_counts_points_on_duplicate_real_points():
    # Radii are zero where a real point has k duplicates; an equal fake point still lies on the manifold.
    real = torch.tensor([[0.0, 0.0]] * 4 + [[10.0, 10.0]] * 4)
    fake = torch.tensor([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0], [0.0, 0.1]])
    assert precision_recall(real, fake, k=3)[0] == 0.5


@settings(max_examples=30, deadline=None)
@given(small_sample_sets, st.integers(1, 3))
def test_swapping_sets_swaps_precision_and_recall(sets, k):
    a, b = sets
    k = min(k, len(a) - 1, len(b) - 1)
    precision, recall = precision_recall(a, b, k=k)
    assert 0.0 <= precision <= 1.0 and 0.0 <= recall <= 1.0
    assert precision_recall(b, a, k=k) == (recall, precision)


def test_precision_recall_validation_names_the_parameter():
    with pytest.raises(ValueError, match="k must be smaller than the number of samples in fake_feats"):
        precision_recall(np.zeros((10, 2)), np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0)
    with pytest.raises(ValueError, match="real_feats and fake_feats"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


# ---------------------------------------------------------------------------------------------------------------
# Sliced Wasserstein
# ---------------------------------------------------------------------------------------------------------------


def test_sliced_wasserstein_of_identical_sets_is_zero():
    images = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(15)) * 2 - 1
    assert sliced_wasserstein(images, images.clone(), num_projections=64) == 0.0


def test_sliced_wasserstein_of_shifted_set_matches_expected_projection_of_shift():
    # Each direction u shifts the projections by <u, d>, so SW2^2 = E_u <u, d>^2 = ||d||^2 / D.
    generator = torch.Generator().manual_seed(16)
    samples = torch.rand(500, 1, 8, 8, generator=generator) * 2 - 1
    shift = torch.randn(1, 1, 8, 8, generator=generator)
    distance = sliced_wasserstein(samples, samples + shift, num_projections=4000, seed=0)
    expected = shift.norm().item() / math.sqrt(64)
    # The Monte-Carlo relative error of SW2^2 is about sqrt(2 / 4000) ~ 2%.
    assert distance == pytest.approx(expected, rel=0.05)


def test_sliced_wasserstein_in_one_dimension_is_exact_w2():
    samples = torch.tensor([[0.0], [1.0], [3.0]])
    assert sliced_wasserstein(samples, samples + 2.5, num_projections=3) == pytest.approx(2.5, rel=1e-12)


def test_sliced_wasserstein_of_unequal_sizes_matches_replicated_equal_sizes():
    generator = torch.Generator().manual_seed(17)
    a = torch.randn(6, 3, generator=generator)
    b = torch.randn(4, 3, generator=generator) + 1.0
    # Repeating every sample leaves the empirical measure unchanged; 12 copies make the sizes equal.
    distance = sliced_wasserstein(a, b, num_projections=50, seed=3)
    replicated = sliced_wasserstein(a.repeat(2, 1), b.repeat(3, 1), num_projections=50, seed=3)
    assert distance == pytest.approx(replicated, rel=1e-12)
    assert sliced_wasserstein(a, a.repeat(5, 1), num_projections=50) == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_is_deterministic_under_seed():
    generator = torch.Generator().manual_seed(18)
    a = torch.randn(100, 16, generator=generator)
    b = torch.randn(80, 16, generator=generator) * 2.0
    assert sliced_wasserstein(a, b, seed=5) == sliced_wasserstein(a, b, seed=5)
    assert sliced_wasserstein(a, b, seed=5) != sliced_wasserstein(a, b, seed=6)
    from_generator = sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(5))
    assert from_generator == sliced_wasserstein(a, b, seed=5)
    assert sliced_wasserstein(a.numpy(), b.numpy(), seed=5) == sliced_wasserstein(a, b, seed=5)


@settings(max_examples=30, deadline=None)
@given(small_sample_sets)
def test_sliced_wasserstein_is_symmetric_and_non_negative(sets):
    a, b = sets
    distance = sliced_wasserstein(a, b, num_projections=16)
    assert distance >= 0.0
    assert sliced_wasserstein(b, a, num_projections=16) == pytest.approx(distance, rel=1e-9, abs=1e-9)


def test_sliced_wasserstein_validation_names_the_parameter():
    with pytest.raises(ValueError, match="num_projections must be a positive integer"):
        sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 2)), num_projections=0)
    with pytest.raises(ValueError, match="a and b must have the same number of features"):
        sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------------------------
# Gaussian-mixture metrics
# ---------------------------------------------------------------------------------------------------------------

MIXTURE_STD = 0.05
MIXTURE_WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
MIXTURE_MEANS = torch.stack(
    [torch.tensor([math.cos(angle), math.sin(angle)]) for angle in torch.arange(5) * 2 * math.pi / 5]
).to(torch.float64)


def sample_mixture(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    components = torch.multinomial(MIXTURE_WEIGHTS, num_samples, replacement=True, generator=generator)
    noise = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
    return MIXTURE_MEANS[components] + MIXTURE_STD * noise, components


def test_exact_mixture_samples_have_small_tv_and_unit_spread():
    samples, components = sample_mixture(4000, seed=19)
    assert torch.equal(mode_assignments(samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD), components)
    metrics = mixture_metrics(samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD)
    assert metrics["mode_frequency_tv"] < 0.05
    assert metrics["within_mode_spread_ratio"] == pytest.approx(1.0, abs=0.03)
    assert sum(metrics["mode_frequencies"]) == pytest.approx(1.0)
    assert metrics["mode_frequency_tv"] == mode_frequency_tv(samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD)
    assert metrics["within_mode_spread_ratio"] == within_mode_spread_ratio(
        samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD
    )


def test_samples_collapsed_onto_means_have_zero_spread():
    collapsed = MIXTURE_MEANS[torch.tensor([0, 1, 1, 2, 2, 2, 3, 4, 4])]
    assert within_mode_spread_ratio(collapsed, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD) == pytest.approx(0.0)


def test_over_dispersed_samples_have_spread_above_one():
    samples, components = sample_mixture(4000, seed=20)
    widened = MIXTURE_MEANS[components] + 2.0 * (samples - MIXTURE_MEANS[components])
    assert within_mode_spread_ratio(widened, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD) == pytest.approx(2.0, abs=0.06)


@pytest.mark.parametrize("mode", range(5))
def test_samples_from_a_single_mode_have_tv_one_minus_its_weight(mode):
    generator = torch.Generator().manual_seed(21)
    samples = MIXTURE_MEANS[mode] + MIXTURE_STD * torch.randn(500, 2, generator=generator, dtype=torch.float64)
    expected = 1.0 - MIXTURE_WEIGHTS[mode].item()
    assert mode_frequency_tv(samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD) == pytest.approx(expected)
    frequencies = mode_frequencies(samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD)
    np.testing.assert_array_equal(frequencies, np.eye(5)[mode])


def test_mode_assignments_use_weights_as_well_as_distance():
    means = np.array([[0.0], [1.0]])
    midpoint = np.array([[0.5]])
    assert mode_assignments(midpoint, means, [0.3, 0.7], std=1.0).tolist() == [1]
    assert mode_assignments(midpoint, means, [0.7, 0.3], std=1.0).tolist() == [0]


def test_mixture_metrics_flatten_image_samples():
    means = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)]).flatten(1)
    samples = torch.cat([torch.full((3, 1, 2, 2), -1.0), torch.full((1, 1, 2, 2), 1.0)])
    metrics = mixture_metrics(samples, means, [0.5, 0.5], std=0.1)
    assert metrics["mode_frequencies"] == [0.75, 0.25]
    assert metrics["mode_frequency_tv"] == pytest.approx(0.25)


def test_mixture_validation_names_the_parameter():
    samples = np.zeros((4, 2))
    with pytest.raises(ValueError, match="weights must sum to 1"):
        mixture_metrics(samples, MIXTURE_MEANS, [0.5] * 5, MIXTURE_STD)
    with pytest.raises(ValueError, match=r"weights must have shape \(5,\)"):
        mixture_metrics(samples, MIXTURE_MEANS, [0.5, 0.5], MIXTURE_STD)
    with pytest.raises(ValueError, match="std must be a positive"):
        mixture_metrics(samples, MIXTURE_MEANS, MIXTURE_WEIGHTS, 0.0)
    with pytest.raises(ValueError, match="samples and means"):
        mixture_metrics(np.zeros((4, 3)), MIXTURE_MEANS, MIXTURE_WEIGHTS, MIXTURE_STD)
