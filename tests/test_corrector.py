"""The corrector of the posterior family (``use_corrector``): exact interpolating weights, equality with SA-Solver's
corrector and predictor coefficients at tau = 0 and 1 (eta = 0 and 1), and the stepper's bookkeeping."""

import math

import numpy as np
import pytest
import torch
from diffusers import SASolverScheduler
from scipy import integrate

from skipstep import DiscreteVPPath, SkippedStepScheduler, plan_steps, sample
from skipstep.k_diffusion import sample_skipstep
from skipstep.posterior import corrector_x0_weight_rows, exact_x0_weight_rows, gaussian_posterior
from skipstep.lab.testbeds.gmm import GaussianMixture, GMMDenoiser

PATH = DiscreteVPPath.from_config({})


def _family_integral_weights(nodes, lam_t, lam_s, eta):
    """w_j = int_{lam_t}^{lam_s} dC L_j / C(h) by adaptive quadrature, written in lambda (independent of the
    Gauss-Legendre code): C(lambda) = 1 - g e^{-(lam_s - lambda)}, g = sqrt(1 - eta^2 + eta^2 e^{-2(lam_s - lambda)})."""
    def c_of(lam):
        u = lam_s - lam
        return 1.0 - math.sqrt(1 - eta**2 + eta**2 * math.exp(-2 * u)) * math.exp(-u)

    def dc(lam, eps=1e-6):  # dC/du = -dC/dlambda, u = lam_s - lambda
        return -(c_of(lam + eps) - c_of(lam - eps)) / (2 * eps)

    def basis(j, lam):
        out = 1.0
        for m, node in enumerate(nodes):
            if m != j:
                out *= (lam - node) / (nodes[j] - node)
        return out

    total = c_of(lam_t)
    return [integrate.quad(lambda lam: dc(lam) * basis(j, lam), lam_t, lam_s, epsabs=1e-12)[0] / total
            for j in range(len(nodes))]


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("nodes_before", [[0.2], [0.2, -0.6], [0.2, -0.6, -1.1]])
def test_corrector_weights_are_the_exact_interpolating_integral(eta, nodes_before):
    lam_t, lam_s = nodes_before[0], 1.3
    nodes = [lam_s, *nodes_before]
    ours = corrector_x0_weight_rows([nodes], [lam_s], [eta])[0]
    reference = _family_integral_weights(nodes, lam_t, lam_s, eta)
    assert ours == pytest.approx(reference, abs=1e-7)
    assert ours.sum() == pytest.approx(1.0, abs=1e-12)
    # a quadratic x0(lambda) through three nodes is integrated exactly: weights reproduce int dC x0 / C
    if len(nodes) == 3:
        x0 = lambda lam: 0.3 - 1.2 * lam + 0.7 * lam**2  # noqa: E731
        exact = _family_integral_weights([lam_s], lam_t, lam_s, eta)  # = [1]: sanity of the reference
        assert exact == pytest.approx([1.0], abs=1e-7)
        c_t = 1.0 - math.sqrt(1 - eta**2 + eta**2 * math.exp(-2 * (lam_s - lam_t))) * math.exp(-(lam_s - lam_t))
        dc = lambda lam: (  # noqa: E731
            math.exp(-(lam_s - lam)) * (math.sqrt(1 - eta**2 + eta**2 * math.exp(-2 * (lam_s - lam)))
                                        + eta**2 * math.exp(-2 * (lam_s - lam))
                                        / math.sqrt(1 - eta**2 + eta**2 * math.exp(-2 * (lam_s - lam)))))
        integral = integrate.quad(lambda lam: dc(lam) * x0(lam), lam_t, lam_s)[0] / c_t
        assert float(np.dot(ours, [x0(v) for v in nodes])) == pytest.approx(integral, abs=1e-8)


def _sa_solver_coefficients(order, lam_start, lam_end, nodes, tau, alpha_t, sigma_t):
    """SA-Solver's data-prediction coefficients b_i of x0_hat(nodes[i]) (diffusers' own code), in the step
    ``x_t = e^{-tau^2 h} (sigma_t / sigma_s) x_s + sum_i b_i x0_i + noise``."""
    sched = SASolverScheduler()
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    coeffs = sched.get_coefficients_fn(order, t(lam_start), t(lam_end), [t(v) for v in nodes], t(tau))
    return [float((1 + tau**2) * sigma_t * math.exp(-(tau**2) * lam_end) * c) for c in coeffs]


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("kind,order", [("predictor", 3), ("predictor", 4), ("corrector", 3), ("corrector", 4)])
def test_equals_sa_solver_coefficients_at_tau_0_and_1(eta, kind, order):
    """Our exact weights are SA-Solver's stochastic Adams coefficients at tau = eta in {0, 1} (orders 3 and 4:
    diffusers modifies SA-Solver's order-2 coefficients by an O(h^3) term, which is not a special case of ours).
    x coefficient: e^{-tau^2 h} sigma_t / sigma_s is our coef_xt at eta = tau."""
    t, s = 700, 450
    a_t, s_t = (float(v) for v in PATH.alpha_sigma(t))
    a_s, s_s = (float(v) for v in PATH.alpha_sigma(s))
    lam = lambda a, sg: math.log(a) - math.log(sg)  # noqa: E731
    lam_t, lam_s = lam(a_t, s_t), lam(a_s, s_s)
    earlier = [lam(*(float(v) for v in PATH.alpha_sigma(u))) for u in (850, 950, 990)]
    post = gaussian_posterior(a_t, s_t, a_s, s_s, eta)
    if kind == "predictor":
        nodes = [lam_t, *earlier][:order]
        ours = exact_x0_weight_rows([nodes], [lam_s], [eta])[0]
    else:
        nodes = [lam_s, lam_t, *earlier][:order]
        ours = corrector_x0_weight_rows([nodes], [lam_s], [eta])[0]
    theirs = _sa_solver_coefficients(order, lam_t, lam_s, nodes, eta, a_s, s_s)
    assert [post.coef_x0 * w for w in ours] == pytest.approx(theirs, rel=1e-6, abs=1e-9)
    assert post.coef_xt == pytest.approx(math.exp(-(eta**2) * (lam_s - lam_t)) * s_s / s_t, rel=1e-12)


def _gmm():
    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture(torch.randn(5, 16, generator=g, dtype=torch.float64) * 0.5, std=0.15)
    return GMMDenoiser(mixture, PATH)


def _states(model, timesteps, order, corrector, x_T):
    """The state after every step of a deterministic (eta=0) run through ``timesteps``; ``[k]`` is at
    ``timesteps[k + 1]``. The model is called once per listed time."""
    sched = SkippedStepScheduler(eta=0.0, solver_order=order, use_corrector=corrector, clip_sample=False)
    sched.set_timesteps(timesteps=timesteps)
    x, out = x_T, []
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
        out.append(x)
    return out


def _log_snr_grid(n, hi=900, lo=100):
    lam = torch.linspace(float(PATH.log_snr(torch.tensor(hi))), float(PATH.log_snr(torch.tensor(lo))), n)
    return [int(v) for v in np.round(PATH.time_at_log_snr(lam).numpy())]


def test_the_corrector_raises_the_order_by_one_at_no_extra_evaluation():
    """Deterministic runs from t=900 to t=100 on log-SNR-uniform grids of 5, 10 and 20 steps, against an
    800-step solution of the same ODE from the same x_T (a smooth 3-mode mixture): the error falls like h^p
    without the corrector and like h^(p+1) with it; the model is called once per listed time either way."""
    g = torch.Generator().manual_seed(0)
    model = GMMDenoiser(GaussianMixture(torch.randn(3, 16, generator=g, dtype=torch.float64) * 0.4, std=0.5), PATH)
    x_T = torch.randn(256, 16, generator=torch.Generator().manual_seed(1)).double()
    fine = sorted(set(np.round(np.linspace(900, 100, 800)).astype(int).tolist()), reverse=True)
    reference = _states(model, fine, 3, False, x_T)[fine.index(100) - 1]  # the state at t = 100
    sizes = (6, 11, 21)
    for order, expected in ((1, 1.0), (2, 2.0)):
        for corrector in (False, True):
            errors = []
            for n in sizes:
                model.reset_count()
                states = _states(model, _log_snr_grid(n), order, corrector, x_T)
                assert model.count.calls == n  # one evaluation per listed time, corrector or not
                errors.append(float((states[-2] - reference).pow(2).mean().sqrt()))
            slope = math.log(errors[-2] / errors[-1]) / math.log((sizes[-1] - 1) / (sizes[-2] - 1))
            print(f"order {order}, corrector {corrector}: errors {['%.2e' % e for e in errors]}, "
                  f"observed order {slope:.2f}")
            assert slope == pytest.approx(expected + corrector, abs=0.35)


def _loop(sched, model, x, gen_seed=0, edit=False):
    g = torch.Generator().manual_seed(gen_seed)
    for i, t in enumerate(sched.timesteps):
        out = model(x, t.expand(x.shape[0]))
        x = sched.step(out, t, x, generator=g).prev_sample
        if edit and i == 2:
            x = x.clone()  # a pipeline that hands back another tensor (e.g. blended latents)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_scheduler_sample_and_k_diffusion_agree_and_edits_skip_the_correction(eta):
    model = _gmm()
    x_T = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    kw = dict(eta=eta, solver_order=3, use_corrector=True)
    sched = SkippedStepScheduler(**kw, timestep_spacing="trailing")
    sched.set_timesteps(7)
    loop = _loop(sched, model, x_T)
    noise_gen = torch.Generator().manual_seed(0)
    functional = sample(model, path=PATH, noise=x_T, num_steps=7, spacing="trailing", generator=noise_gen,
                        progress=False, **kw)
    torch.testing.assert_close(loop, functional, atol=1e-6, rtol=1e-6)
    plain = SkippedStepScheduler(eta=eta, solver_order=3, use_corrector=False, timestep_spacing="trailing")
    plain.set_timesteps(7)
    assert not torch.allclose(_loop(plain, model, x_T), loop, atol=1e-4)
    # a tensor that is not the one step() returned is not corrected (the step after it is a predictor only)
    sched.set_timesteps(7)
    edited = _loop(sched, model, x_T, edit=True)
    assert not torch.allclose(edited, loop, atol=1e-6)
    # the k-diffusion convention: the same family (eta=0: deterministic, so the noise sampler does not matter)
    if eta == 0.0:
        sigmas = torch.cat([torch.from_numpy(((1 - PATH.alphas_cumprod) / PATH.alphas_cumprod).sqrt().numpy()[
            sched.timesteps.numpy()]), torch.zeros(1)]).double()

        def denoiser(x, sigma):
            t = sched.timesteps[(sigmas[:-1] - sigma[0]).abs().argmin()]
            return model.predict((x / (1 + sigma[0] ** 2).sqrt()).float(), t.expand(x.shape[0]), "sample").double()

        kd = sample_skipstep(denoiser, x_T.double() * sigmas[0], sigmas, disable=True, eta=0.0, solver_order=3,
                             use_corrector=True)
        torch.testing.assert_close(kd.float(), loop, atol=1e-4, rtol=1e-4)


def test_plan_has_no_corrector_after_the_last_evaluation_and_weights_sum_to_one():
    plan = plan_steps(PATH, torch.tensor([999, 700, 400, 100]), 0.5, solver_order=3, use_corrector=True)
    assert [len(p.corrector_weights) for p in plan] == [2, 3, 4, 0]
    for p in plan[:-1]:
        assert sum(p.corrector_weights) == pytest.approx(1.0, abs=1e-12)
    assert all(p.corrector_weights == () for p in plan_steps(PATH, torch.tensor([999, 500, 100]), 0.5))
    with pytest.raises(ValueError, match="use_corrector must be True or False"):
        SkippedStepScheduler(use_corrector="yes")


def test_the_corrected_state_reuses_the_predictor_noise():
    """Step 1 starts from coef_xt x_0 + coef_x0 (w_new x0_1 + w_0 x0_0) + std_0 z_0 -- the noise z_0 that step 0
    injected, not a new draw -- and then predicts from there with its own noise z_1."""
    eta = 0.8
    sched = SkippedStepScheduler(eta=eta, solver_order=1, use_corrector=True, clip_sample=False)
    sched.set_timesteps(timesteps=[900, 600, 300])
    model = _gmm()
    x0_state = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    z0, z1 = (torch.randn(8, 16, generator=torch.Generator().manual_seed(s)) for s in (4, 5))
    plan = sched._plan
    out0 = sched.step(model(x0_state, torch.full((8,), 900)), 900, x0_state, variance_noise=z0)
    m1 = model(out0.prev_sample, torch.full((8,), 600))
    out1 = sched.step(m1, 600, out0.prev_sample, variance_noise=z1)
    p0, p1 = plan[0].posterior, plan[1].posterior
    x0_0, x0_1 = out0.pred_original_sample, out1.pred_original_sample
    w_new, w_old = plan[0].corrector_weights
    corrected = p0.coef_xt * x0_state + p0.coef_x0 * (w_new * x0_1 + w_old * x0_0) + math.sqrt(p0.noise_var) * z0
    expected = p1.coef_xt * corrected + p1.coef_x0 * x0_1 + math.sqrt(p1.noise_var) * z1
    torch.testing.assert_close(out1.prev_sample, expected, atol=1e-5, rtol=1e-5)
