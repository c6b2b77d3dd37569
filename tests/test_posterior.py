"""The skipped-step posterior against closed forms computed independently."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skipstep import ContinuousVPPath, DiscreteVPPath, RectifiedFlowPath, gaussian_posterior

VP = DiscreteVPPath.from_config({})


def _grid_posterior(alpha_t, sigma_t, alpha_s, sigma_s, x_t, x0):
    """Bayes' rule by quadrature: p(x_s | x_t, x0) ∝ N(x_t; a x_s, v) N(x_s; alpha_s x0, sigma_s^2) on a 1-D grid."""
    a = alpha_t / alpha_s
    v = sigma_t**2 - a**2 * sigma_s**2
    centre = alpha_s * x0
    grid = np.linspace(centre - 12 * sigma_s, centre + 12 * sigma_s, 400_001)
    log_p = -((x_t - a * grid) ** 2) / (2 * v) - (grid - centre) ** 2 / (2 * sigma_s**2)
    w = np.exp(log_p - log_p.max())
    w /= w.sum()
    mean = float((w * grid).sum())
    return mean, float((w * (grid - mean) ** 2).sum())


@pytest.mark.parametrize("t,s", [(999, 899), (500, 100), (250, 249), (120, 0), (40, 10)])
def test_discrete_posterior_matches_bayes_by_quadrature(t, s):
    (a_t, a_s), (s_t, s_s) = (float(v) for v in VP.alpha_sigma(torch.tensor([t, s]))[0]), (
        float(v) for v in VP.alpha_sigma(torch.tensor([t, s]))[1]
    )
    x_t, x0 = 0.7, -0.4
    post = gaussian_posterior(a_t, s_t, a_s, s_s)
    mean, var = _grid_posterior(a_t, s_t, a_s, s_s, x_t, x0)
    assert post.coef_xt * x_t + post.coef_x0 * x0 == pytest.approx(mean, abs=1e-7)
    assert post.posterior_variance == pytest.approx(var, rel=1e-5)


@pytest.mark.parametrize("t,s", [(999, 899), (500, 100), (120, 7)])
def test_discrete_posterior_is_the_papers_formula(t, s):
    abar = VP.alphas_cumprod
    ab_t, ab_s = float(abar[t]), float(abar[s])
    A = ab_t / ab_s
    post = gaussian_posterior(math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_s), math.sqrt(1 - ab_s))
    assert post.coef_xt == pytest.approx(math.sqrt(A) * (1 - ab_s) / (1 - ab_t), rel=1e-12)
    assert post.coef_x0 == pytest.approx(math.sqrt(ab_s) * (1 - A) / (1 - ab_t), rel=1e-12)
    assert post.posterior_variance == pytest.approx((1 - ab_s) / (1 - ab_t) * (1 - A), rel=1e-12)
    assert post.jump_variance == pytest.approx(1 - A, rel=1e-12)


@pytest.mark.parametrize("t", [1, 2, 10, 500, 999])
def test_single_step_reduces_to_ddpm(t):
    betas = 1 - VP.alphas_cumprod[1:] / VP.alphas_cumprod[:-1]
    abar = VP.alphas_cumprod
    beta_t, ab_t, ab_prev = float(betas[t - 1]), float(abar[t]), float(abar[t - 1])
    post = gaussian_posterior(math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_prev), math.sqrt(1 - ab_prev))
    # Ho et al. 2020, eq. (7)
    assert post.coef_x0 == pytest.approx(math.sqrt(ab_prev) * beta_t / (1 - ab_t), rel=1e-9)
    assert post.coef_xt == pytest.approx(math.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab_t), rel=1e-9)
    assert post.posterior_variance == pytest.approx((1 - ab_prev) / (1 - ab_t) * beta_t, rel=1e-9)


def test_final_step_returns_x0_without_noise():
    a_t, s_t = (float(v) for v in VP.alpha_sigma(torch.tensor(99)))
    post = gaussian_posterior(a_t, s_t, 1.0, 0.0)
    assert post.is_final and post.coef_xt == 0 and post.coef_x0 == 1 and post.noise_var == 0


_paths = st.sampled_from([RectifiedFlowPath(), ContinuousVPPath(), ContinuousVPPath("cosine", t_max=0.99)])


@settings(max_examples=60, deadline=None)
@given(path=_paths, u=st.floats(0.05, 0.95), frac=st.floats(0.0, 0.95), eta=st.floats(0.0, 1.0))
def test_every_eta_keeps_the_marginals(path, u, frac, eta):
    """x_t ~ q(x_t|x0), x_s ~ the step: then x_s ~ N(alpha_s x0, sigma_s^2) exactly, for every eta (DDIM family)."""
    t = path.t_min + u * (path.t_max - path.t_min)
    s = path.t_min + frac * (t - path.t_min)
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in path.alpha_sigma(torch.tensor([t, s])))
    post = gaussian_posterior(a_t, s_t, a_s, s_s, eta)
    # mean: coef_xt alpha_t + coef_x0 = alpha_s; variance: coef_xt^2 sigma_t^2 + noise_var = sigma_s^2
    assert post.coef_xt * a_t + post.coef_x0 == pytest.approx(a_s, abs=1e-12)
    assert post.coef_xt**2 * s_t**2 + post.noise_var == pytest.approx(s_s**2, abs=1e-12)


def test_rectified_flow_posterior_marginals_by_monte_carlo():
    path = RectifiedFlowPath()
    g = torch.Generator().manual_seed(0)
    x0 = 0.8
    t, s = 0.9, 0.35
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in path.alpha_sigma(torch.tensor([t, s])))
    post = gaussian_posterior(a_t, s_t, a_s, s_s)
    n = 400_000
    x_t = a_t * x0 + s_t * torch.randn(n, generator=g, dtype=torch.float64)
    x_s = post.coef_xt * x_t + post.coef_x0 * x0 + math.sqrt(post.noise_var) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    assert float(x_s.mean()) == pytest.approx(a_s * x0, abs=4 * s_s / math.sqrt(n))
    assert float(x_s.var()) == pytest.approx(s_s**2, rel=0.01)
    # and the Markov property: the forward jump from x_s reproduces x_t's law, here via the closed form
    a = a_t / a_s
    assert a * a * s_s**2 + post.jump_variance == pytest.approx(s_t**2, abs=1e-12)


def test_rising_snr_is_refused():
    a_t, s_t = (float(v) for v in VP.alpha_sigma(torch.tensor(100)))
    a_s, s_s = (float(v) for v in VP.alpha_sigma(torch.tensor(500)))
    with pytest.raises(ValueError, match="signal-to-noise"):
        gaussian_posterior(a_t, s_t, a_s, s_s)


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_eta_out_of_range_is_refused(eta):
    with pytest.raises(ValueError, match="eta must lie in"):
        gaussian_posterior(0.5, 0.8, 0.9, 0.4, eta)
