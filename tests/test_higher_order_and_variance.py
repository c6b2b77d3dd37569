"""Higher-order (multistep) posterior steps and the optimal (Analytic-DPM) variance."""

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from skipstep import DiscreteVPPath, SkippedStepScheduler, sample
from skipstep.optimal_variance import estimate_eps_mse, load_eps_mse, save_eps_mse
from skipstep.posterior import gaussian_posterior, multistep_x0_weights
from skipstep.steps import optimal_noise_variance
from skipstep.lab.testbeds.gmm import GaussianMixture, GMMDenoiser

PATH = DiscreteVPPath.from_config({})


def _smooth_eps_model():
    torch.manual_seed(0)
    W = torch.randn(4, 4) * 0.1
    abar = PATH.alphas_cumprod.float()

    def model(x, t):
        s = (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
        return s * x + 0.1 * torch.tanh(x @ W)

    return model


def test_one_node_is_the_first_order_step():
    assert multistep_x0_weights([0.3], 1.0, 0.7) == [1.0]
    model = _smooth_eps_model()
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    kwargs = dict(path=PATH, num_steps=10, eta=0.6, noise=noise, progress=False)
    first = sample(model, generator=torch.Generator().manual_seed(1), solver_order=1, **kwargs)
    again = sample(model, generator=torch.Generator().manual_seed(1), solver_order=1, **kwargs)
    higher = sample(model, generator=torch.Generator().manual_seed(1), solver_order=2, **kwargs)
    assert torch.equal(first, again)
    assert not torch.allclose(first, higher)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("order", [2, 3])
def test_weights_sum_to_one_and_match_closed_forms(eta, order):
    lams = [0.2, -0.5, -1.1][:order]
    w = multistep_x0_weights(lams, 0.9, eta)
    assert sum(w) == pytest.approx(1.0, abs=1e-12)
    if order == 2 and eta in (0.0, 1.0):
        h, r = 0.9 - 0.2, 0.7 / 0.7
        phi = (h - 1 + math.exp(-h)) / (h * (1 - math.exp(-h))) if eta == 0 else (
            h - (1 - math.exp(-2 * h)) / 2) / (h * (1 - math.exp(-2 * h)))
        assert w == pytest.approx([1 + phi / r, -phi / r], abs=1e-12)


@pytest.mark.parametrize(
    "eta,algorithm", [(0.0, "dpmsolver++"), (1.0, "sde-dpmsolver++")]
)
@pytest.mark.parametrize("steps", [8, 20])
def test_second_order_equals_dpm_solver_pp_2m(eta, algorithm, steps):
    """Order 2 at eta=0 is DPM-Solver++(2M), at eta=1 SDE-DPM-Solver++(2M) (diffusers' 'heun' coefficients)."""
    model = _smooth_eps_model()
    ref = DPMSolverMultistepScheduler(algorithm_type=algorithm, solver_order=2, solver_type="heun",
                                      timestep_spacing="trailing", final_sigmas_type="zero",
                                      lower_order_final=True)
    ours = SkippedStepScheduler.from_config(ref.config, eta=eta, solver_order=2, use_corrector=False,
                                            timestep_spacing="trailing")
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert ref.timesteps.tolist() == ours.timesteps.tolist()
    x_ref = x_ours = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        x_ref = ref.step(model(x_ref, t.expand(3)), t, x_ref, generator=g_ref).prev_sample
        x_ours = ours.step(model(x_ours, t.expand(3)), t, x_ours, generator=g_ours).prev_sample
    err = (x_ref - x_ours).abs().max().item()
    print(f"order-2 eta={eta} vs diffusers {algorithm} ({steps} steps): max abs diff {err:.2e}")
    assert err < 1e-4


def test_optimal_variance_bounds_and_reduction():
    a_t, s_t = (float(v) for v in PATH.alpha_sigma(500))
    a_s, s_s = (float(v) for v in PATH.alpha_sigma(300))
    post = gaussian_posterior(a_t, s_t, a_s, s_s, 1.0)
    # M = 0: the model is certain of x0 -> no variance beyond lambda^2
    assert optimal_noise_variance(post, a_t, s_t, 0.0) == pytest.approx(post.noise_var)
    # M = 1 (no information): clipped by the data range bound (R = 1)
    upper = post.noise_var + post.coef_x0**2 * min(s_t**2 / a_t**2, 1.0)
    assert optimal_noise_variance(post, a_t, s_t, 1.0) == pytest.approx(upper)
    assert optimal_noise_variance(post, a_t, s_t, -0.2) == pytest.approx(post.noise_var)  # clipped below
    mid = post.noise_var + post.coef_x0**2 * s_t**2 / a_t**2 * 0.01
    assert optimal_noise_variance(post, a_t, s_t, 0.01) == pytest.approx(mid)


def _exact_mean_trace_cov(mixture, path, t, x_t):
    """E tr Cov[x0|x_t] / d from the exact mixture posterior."""
    alpha, sigma = (float(v) for v in path.alpha_sigma(t))
    s2 = mixture.std**2
    v = alpha**2 * s2 + sigma**2
    x = x_t.flatten(1).double()
    mu = mixture.means
    logits = mixture.log_weights - ((x[:, None, :] - alpha * mu[None]) ** 2).sum(-1) / (2 * v)
    r = torch.softmax(logits, dim=1)
    m_k = mu[None] + (alpha * s2 / v) * (x[:, None, :] - alpha * mu[None])  # (B, K, D)
    m = (r[..., None] * m_k).sum(1)
    d = x.shape[1]
    c = s2 * sigma**2 / v
    tr = c * d + (r * (m_k**2).sum(-1)).sum(1) - (m**2).sum(1)
    return float(tr.mean()) / d


@pytest.mark.parametrize("t", [100, 400, 700])
def test_eps_mse_estimate_matches_the_exact_denoiser(t):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(6, 16, generator=g, dtype=torch.float64) * 0.6
    mixture = GaussianMixture(means, std=0.2)
    model = GMMDenoiser(mixture, PATH)
    data, _ = mixture.sample(20000, generator=torch.Generator().manual_seed(1))
    gamma = estimate_eps_mse(model, PATH, data, evaluate_at=[t], generator=torch.Generator().manual_seed(2))
    alpha, sigma = (float(v) for v in PATH.alpha_sigma(t))
    estimated = sigma**2 / alpha**2 * float(gamma[t])
    x_t = alpha * data + sigma * torch.randn(data.shape, generator=torch.Generator().manual_seed(3))
    exact = _exact_mean_trace_cov(mixture, PATH, t, x_t)
    print(f"t={t}: (sigma^2/alpha^2) M_t = {estimated:.5f}, exact E tr Cov/d = {exact:.5f}")
    assert estimated == pytest.approx(exact, rel=0.01)


def test_optimal_variance_sampler_and_cache_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture(torch.randn(4, 8, generator=g, dtype=torch.float64) * 0.5, std=0.1)
    model = GMMDenoiser(mixture, PATH)
    data, _ = mixture.sample(500, generator=g)
    table = estimate_eps_mse(model, PATH, data, num_timesteps=50, generator=g)
    file = save_eps_mse(tmp_path / "gamma.json", table, fingerprint="abc")
    with pytest.raises(FileExistsError):
        save_eps_mse(file, table, fingerprint="abc")
    assert torch.equal(load_eps_mse(file, "abc"), table)
    with pytest.raises(ValueError, match="made for model"):
        load_eps_mse(file, "other")
    x = sample(model, (64, 8), path=PATH, num_steps=10, eta=0.0, variance_type="optimal", eps_mse=table,
               generator=g, progress=False)
    assert torch.isfinite(x).all()
    sched = SkippedStepScheduler(variance_type="optimal", eps_mse=table.tolist(), eta=1.0)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="eps_mse"):
        SkippedStepScheduler(variance_type="optimal")


def test_long_extrapolations_fall_back_to_first_order():
    """The flow-matching schedule ends with a jump to sigma = 1/T that is ~6x longer in log-SNR than the step
    before: extrapolating x0_hat that far overshoots, so that step (and only that one) is first order."""
    from skipstep import RectifiedFlowPath, plan_steps
    from skipstep.plan import MIN_SPAN_RATIO

    plan = plan_steps(RectifiedFlowPath(), torch.linspace(1.0, 0.001, 10, dtype=torch.float64))
    orders = [step.max_order() for step in plan]
    assert orders[0] == 1 and orders[-1] == 1  # no history / the final step to clean data
    assert orders[-2] == 1  # the long jump to sigma = 0.001
    assert all(o >= 2 for o in orders[2:-2])
    for step in plan[2:-1]:  # plan[1]'s only earlier node is t = 1 (alpha = 0, log-SNR -inf): first order
        h = step.lambda_s - step.lambdas[0]
        ok = (step.lambdas[0] - step.lambdas[1]) >= MIN_SPAN_RATIO * h
        assert (step.max_order() >= 2) == ok
