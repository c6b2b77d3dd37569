"""The exact Gaussian-mixture denoiser: Bayes formulas, prediction types, chunking, and the core sampler on it."""

import math

import pytest
import torch

import skipstep
from skipstep.predictions import predict_x0_eps
from skipstep.paths import ContinuousVPPath, DiscreteVPPath, RectifiedFlowPath
from skipstep.lab.testbeds.gmm import EvalCount, GaussianMixture, GMMDenoiser, digits_mixture


MEANS_2D = [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]]
WEIGHTS_2D = [0.5, 0.3, 0.2]


def small_mixture(std=0.3):
    return GaussianMixture(MEANS_2D, WEIGHTS_2D, std)


# --------------------------------------------------------------------------------------------------------------
# the mixture itself
# --------------------------------------------------------------------------------------------------------------

def test_mixture_sampling_matches_its_parameters():
    mix = small_mixture(0.2)
    x, k = mix.sample(40000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (40000, 2) and x.dtype == torch.float64 and k.shape == (40000,)
    freqs = torch.bincount(k, minlength=3).double() / len(k)
    assert torch.allclose(freqs, mix.weights, atol=0.01)
    resid = x - mix.means[k]
    assert abs(resid.std().item() - 0.2) < 0.005
    assert torch.allclose(x.mean(0), mix.mean(), atol=0.02)
    assert torch.allclose(torch.cov(x.T), mix.covariance(), atol=0.03)


def test_mixture_log_prob_matches_torch_distributions():
    mix = small_mixture(0.4)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    comps = [torch.distributions.MultivariateNormal(torch.tensor(m, dtype=torch.float64),
                                                    0.16 * torch.eye(2, dtype=torch.float64)) for m in MEANS_2D]
    ref = torch.logsumexp(torch.stack([math.log(w) + c.log_prob(x) for w, c in zip(WEIGHTS_2D, comps)]), dim=0)
    assert torch.allclose(mix.log_prob(x), ref, atol=1e-10)


def test_mixture_validates_inputs():
    with pytest.raises(ValueError):
        GaussianMixture([[0.0, 1.0]], [0.5, 0.5], 0.1)
    with pytest.raises(ValueError):
        GaussianMixture([[0.0, 1.0], [1.0, 0.0]], [1.0, -1.0], 0.1)
    with pytest.raises(ValueError):
        GaussianMixture([[0.0, 1.0]], None, -0.1)
    # weights are normalised; image-shaped means keep their event shape
    mix = GaussianMixture(torch.zeros(4, 1, 2, 2), [1, 1, 1, 5], 0.1)
    assert torch.allclose(mix.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert mix.event_shape == (1, 2, 2) and mix.dim == 4
    assert mix.sample(3)[0].shape == (3, 1, 2, 2)


# --------------------------------------------------------------------------------------------------------------
# the exact denoiser against Bayes
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "path, t",
    [
        (DiscreteVPPath.from_config({}), 150),
        (DiscreteVPPath.from_config({}), 400),
        (ContinuousVPPath(), 0.6),
        (RectifiedFlowPath(), 0.35),
        (RectifiedFlowPath(), 0.9),
    ],
)
def test_posterior_mean_matches_importance_sampling(path, t):
    """E[x0 | x_t] and P(k | x_t) by self-normalised importance sampling of prior draws with q(x_t | x0) weights."""
    mix = small_mixture(0.3)
    gen = torch.Generator().manual_seed(1234)
    alpha, sigma = (float(v) for v in path.alpha_sigma(torch.tensor(t)))
    # a few query points drawn from the noisy marginal (typical x_t)
    x0_q, _ = mix.sample(4, gen, dtype=torch.float64)
    x_t = alpha * x0_q + sigma * torch.randn(x0_q.shape, generator=gen, dtype=torch.float64)

    prior, modes = mix.sample(400_000, gen, dtype=torch.float64)
    model = GMMDenoiser(mix, path, prediction_type="sample")
    exact = model.posterior_mean_x0(x_t, torch.full((4,), t))
    resp = model.responsibilities(x_t, torch.full((4,), t))
    assert torch.allclose(resp.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-12)
    for i in range(4):
        logw = -((x_t[i] - alpha * prior) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, dim=0)
        ess = 1.0 / (w**2).sum()
        assert ess > 2000, f"importance sampling too degenerate to test (ESS={ess:.0f})"
        mc = w @ prior
        se = torch.sqrt((w**2) @ (prior - mc) ** 2)  # delta-method standard error of the SNIS estimate
        assert torch.all((exact[i] - mc).abs() <= 5 * se + 1e-3), (exact[i], mc, se)
        mc_resp = torch.stack([w[modes == k].sum() for k in range(3)])
        se_resp = torch.sqrt(torch.stack([(w**2 * ((modes == k).double() - mc_resp[k]) ** 2).sum() for k in range(3)]))
        assert torch.all((resp[i] - mc_resp).abs() <= 5 * se_resp + 1e-3), (resp[i], mc_resp)


@pytest.mark.parametrize("path, times", [
    (DiscreteVPPath.from_config({}), [0, 10, 250, 999]),
    (ContinuousVPPath("cosine", t_max=0.99), [0.01, 0.5, 0.99]),
    (RectifiedFlowPath(), [0.001, 0.5, 1.0]),
])
def test_single_gaussian_matches_closed_form(path, times):
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(5, generator=gen, dtype=torch.float64)
    s = 0.7
    one = GaussianMixture(mu[None], None, s)
    repeated = GaussianMixture(mu[None].repeat(3, 1), [0.2, 0.3, 0.5], s)  # same law, three identical modes
    t = torch.tensor(times, dtype=torch.float64 if not path.discrete else torch.long).repeat_interleave(4)
    alpha, sigma = path.alpha_sigma(t)
    x_t = torch.randn(len(t), 5, generator=gen, dtype=torch.float64) * 2
    a, sg = alpha[:, None], sigma[:, None]
    expected = mu + a * s**2 / (a**2 * s**2 + sg**2) * (x_t - a * mu)
    for mix in (one, repeated):
        got = GMMDenoiser(mix, path, "sample")(x_t, t)
        assert got.dtype == torch.float64
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_point_mass_mixture_is_a_weighted_average_of_means():
    mix = GaussianMixture(MEANS_2D, WEIGHTS_2D, 0.0)
    path = DiscreteVPPath.from_config({})
    model = GMMDenoiser(mix, path, "sample")
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.full((16,), 300)
    r = model.responsibilities(x_t, t)
    assert torch.allclose(model(x_t, t), r @ mix.means, atol=1e-12)


def test_clean_time_and_extreme_inputs_are_finite():
    path = DiscreteVPPath.from_config({})
    mix = small_mixture(0.05)
    model = GMMDenoiser(mix, path, "epsilon")
    x = torch.tensor([[1e4, -1e4], [0.0, 0.0], [-1.0, 0.0]], dtype=torch.float32)
    for t in (0, 999):
        out = model(x, torch.full((3,), t))
        assert torch.isfinite(out).all()
    # at the clean time x_t = x_0: the posterior mean is x_t itself and the noise is zero
    assert torch.allclose(model.posterior_mean_x0(x, torch.tensor(-1)), x)
    assert torch.equal(model(x, torch.tensor(-1)), torch.zeros_like(x))
    # far from every mode the nearest mode takes all the responsibility (no NaN from underflow)
    r = model.responsibilities(x[:1] * 10, torch.tensor([0]))
    assert torch.isfinite(r).all() and abs(r.sum().item() - 1) < 1e-12


# --------------------------------------------------------------------------------------------------------------
# prediction types, batching, chunking, counting
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, types, times", [
    (DiscreteVPPath.from_config({}), ["epsilon", "sample", "v_prediction"], [0, 37, 500, 999]),
    (ContinuousVPPath(), ["epsilon", "sample", "v_prediction"], [0.001, 0.3, 1.0]),
    (RectifiedFlowPath(), ["epsilon", "sample", "v_prediction", "flow"], [0.001, 0.4, 0.8]),
])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_prediction_types_convert_to_the_same_x0(path, types, times, dtype, tol):
    mix = small_mixture(0.2)
    gen = torch.Generator().manual_seed(5)
    ref = GMMDenoiser(mix, path, "sample")
    for t in times:
        alpha, sigma = (float(v) for v in path.alpha_sigma(torch.tensor(t)))
        x0, _ = mix.sample(64, gen, dtype=torch.float64)
        x_t = (alpha * x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)).to(dtype)
        t_batch = torch.full((64,), t)
        x0_ref = ref.posterior_mean_x0(x_t, t_batch).double()
        eps_ref = ((x_t.double() - alpha * x0_ref) / sigma)
        scale = 1.0 / max(alpha, 1e-3)  # epsilon -> x0 divides by alpha, amplifying round-off
        for ptype in types:
            out = GMMDenoiser(mix, path, ptype)(x_t, t_batch)
            assert out.dtype == dtype and out.shape == x_t.shape
            if ptype == "epsilon" and alpha == 0:
                continue
            x0_hat, eps_hat = predict_x0_eps(out.double(), x_t.double(), alpha, sigma, ptype)
            assert torch.allclose(x0_hat, x0_ref, atol=tol * scale * 10, rtol=0), (ptype, t)
            assert torch.allclose(eps_hat, eps_ref, atol=tol * 10 / min(sigma, 1.0), rtol=0), (ptype, t)


def test_flow_needs_the_rectified_flow_path():
    with pytest.raises(ValueError):
        GMMDenoiser(small_mixture(), DiscreteVPPath.from_config({}), "flow")
    with pytest.raises(ValueError):
        GMMDenoiser(small_mixture(), RectifiedFlowPath(), "score")


def test_chunking_and_per_row_times_do_not_change_the_result():
    gen = torch.Generator().manual_seed(11)
    mix = GaussianMixture(torch.randn(37, 3, 2, 2, generator=gen), torch.rand(37, generator=gen) + 0.1, 0.15)
    path = DiscreteVPPath.from_config({})
    x = torch.randn(101, 3, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (101,), generator=gen)
    whole = GMMDenoiser(mix, path, "epsilon", chunk_size=10**6)
    assert whole.rows_per_chunk >= 101
    ref = whole(x, t)
    for kwargs in ({"chunk_size": 1}, {"chunk_size": 7}, {"max_chunk_elements": 100}, {}):
        model = GMMDenoiser(mix, path, "epsilon", **kwargs)
        assert torch.allclose(model(x, t), ref, rtol=0, atol=1e-12), kwargs
    assert GMMDenoiser(mix, path, max_chunk_elements=100).rows_per_chunk == 2
    # each row only sees its own time: evaluating rows one by one gives the same
    rows = torch.cat([whole(x[i:i + 1], t[i]) for i in range(0, 101, 10)])
    assert torch.allclose(rows, ref[::10], rtol=0, atol=1e-12)


def test_eval_count():
    model = GMMDenoiser(small_mixture(), DiscreteVPPath.from_config({}))
    assert model.count == EvalCount(0, 0)
    x = torch.zeros(5, 2)
    model(x, torch.full((5,), 3))
    model(x[:2], 4)
    model.posterior_mean_x0(x, 3)  # not a network evaluation
    assert (model.count.calls, model.count.items) == (2, 7)
    model.reset_count()
    assert (model.count.calls, model.count.items) == (0, 0)
    skipstep.sample(model, (3, 2), num_steps=6, progress=False, generator=torch.Generator().manual_seed(0))
    assert (model.count.calls, model.count.items) == (6, 18)


def test_bad_time_shapes_are_rejected():
    model = GMMDenoiser(small_mixture(), DiscreteVPPath.from_config({}))
    with pytest.raises(ValueError):
        model(torch.zeros(5, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        model(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        model(torch.zeros(5, 2), torch.full((5,), 1000))


# --------------------------------------------------------------------------------------------------------------
# the core sampler driven by the exact model
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, prediction_type, eta", [
    (DiscreteVPPath.from_config({}), "epsilon", 1.0),
    (RectifiedFlowPath(), "flow", 0.0),
])
def test_sampler_on_exact_model_recovers_the_mixture(path, prediction_type, eta):
    means = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]
    weights = [0.5, 0.3, 0.2]
    mix = GaussianMixture(means, weights, 0.15)
    model = GMMDenoiser(mix, path, prediction_type)
    n = 6000
    x = skipstep.sample(model, (n, 2), path=path, num_steps=200, eta=eta, prediction_type=prediction_type,
                        generator=torch.Generator().manual_seed(2024), progress=False).double()
    assert torch.isfinite(x).all()
    assert model.count.calls == 200 and model.count.items == 200 * n
    nearest = torch.cdist(x, mix.means).argmin(1)
    freqs = torch.bincount(nearest, minlength=3).double() / n
    # sampling noise of a frequency is <= sqrt(0.25 / 6000) ~ 0.0065
    assert torch.allclose(freqs, mix.weights, atol=0.03), freqs
    assert torch.allclose(x.mean(0), mix.mean(), atol=0.08), x.mean(0)
    # within-mode spread: 0.148 is exact for this final step (s^2 / sqrt(s^2 + sigma_4^2)); 200 of 1000 ancestral
    # steps with the "small" posterior variance lose a little more (~0.136), the ODE on the flow path ~0.146
    spread = (x - mix.means[nearest]).std(0)
    assert torch.all((spread > 0.15 * 0.8) & (spread < 0.15 * 1.25)), spread


# --------------------------------------------------------------------------------------------------------------
# the digits instance
# --------------------------------------------------------------------------------------------------------------

def test_digits_mixture_and_image_batches():
    mix = digits_mixture(std=0.05, num_means=200)
    assert mix.num_modes == 200 and mix.event_shape == (1, 8, 8) and mix.std == 0.05
    assert float(mix.means.min()) >= -1.0 and float(mix.means.max()) <= 1.0
    assert torch.allclose(mix.weights, torch.full((200,), 1 / 200, dtype=torch.float64))
    # the subset is a fixed, seeded choice
    assert torch.equal(digits_mixture(num_means=200).means, mix.means)
    assert not torch.equal(digits_mixture(num_means=200, seed=1).means, mix.means)
    full = digits_mixture()
    assert full.num_modes >= 200
    from skipstep.lab.testbeds.digits import load_digits_images, load_digits_labels

    assert torch.equal(full.means, load_digits_images("train").double().reshape(full.num_modes, -1))
    assert torch.equal(full.labels, load_digits_labels("train"))
    assert mix.labels.shape == (200,) and set(mix.labels.tolist()) == set(range(10))
    assert digits_mixture(image_shape=(64,), num_means=3).event_shape == (64,)

    path = DiscreteVPPath.from_config({})
    model = GMMDenoiser(mix, path, "epsilon")
    gen = torch.Generator().manual_seed(0)
    x0, k = mix.sample(2000, gen)
    assert x0.shape == (2000, 1, 8, 8) and x0.dtype == torch.float32
    t = torch.full((2000,), 20)
    alpha, sigma = (float(v) for v in path.alpha_sigma(torch.tensor(20)))
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen)
    eps = model(x_t, t)
    assert eps.shape == x_t.shape and eps.dtype == torch.float32
    # at low noise the posterior sits on the true mode
    resp = model.responsibilities(x_t, t)
    assert (resp.argmax(1) == k).double().mean() > 0.99
