"""Details of the step that the other tests do not pin down: the optimal-variance noise scale against its closed
form, the table read at each step's own timestep, dynamic thresholding against diffusers', and the stepper's
multistep history reset."""

import pytest
import torch
from diffusers import DDIMScheduler

from skipstep import DiscreteVPPath, SkippedStepScheduler
from skipstep.optimal_variance import estimate_eps_mse
from skipstep.posterior import gaussian_posterior
from skipstep.steps import optimal_noise_variance
from skipstep.lab.testbeds.gmm import GaussianMixture, GMMDenoiser

PATH = DiscreteVPPath.from_config({})


def _injected_std(sched, model_output, t, x):
    """The noise scale the scheduler's step at ``t`` injects: step(noise=1) - step(noise=0), per element."""
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    with_noise = sched.step(model_output, t, x, variance_noise=ones).prev_sample
    without = sched.step(model_output, t, x, variance_noise=zeros).prev_sample
    return (with_noise - without).double()


def _exact_error_per_dim(mixture, t, x_t):
    """E tr Cov[x0 | x_t] / d of the exact mixture posterior, averaged over ``x_t``: what ``coef_x0^2`` multiplies
    in the KL-optimal variance of an exact model (Bao et al. 2022, Thm. 1)."""
    alpha, sigma = (float(v) for v in PATH.alpha_sigma(t))
    s2 = mixture.std**2
    v = alpha**2 * s2 + sigma**2
    x = x_t.flatten(1).double()
    mu = mixture.means
    r = torch.softmax(mixture.log_weights - ((x[:, None, :] - alpha * mu[None]) ** 2).sum(-1) / (2 * v), dim=1)
    m_k = mu[None] + (alpha * s2 / v) * (x[:, None, :] - alpha * mu[None])
    m = (r[..., None] * m_k).sum(1)
    tr = s2 * sigma**2 / v * x.shape[1] + (r * (m_k**2).sum(-1)).sum(1) - (m**2).sum(1)
    return float(tr.mean()) / x.shape[1]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_optimal_variance_noise_scale_is_the_closed_form_on_the_exact_mixture(eta):
    """On an exact model the optimal step variance is lambda^2 + coef_x0^2 E tr Cov[x0|x_t]/d; the scheduler's
    injected noise must have exactly that scale (halving it, or dropping either term, fails here)."""
    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture(torch.randn(6, 16, generator=g, dtype=torch.float64) * 0.6, std=0.2)
    model = GMMDenoiser(mixture, PATH)
    data, _ = mixture.sample(20000, generator=torch.Generator().manual_seed(1))
    timesteps = [799, 499, 199]
    table = estimate_eps_mse(model, PATH, data, evaluate_at=timesteps, generator=torch.Generator().manual_seed(2))
    sched = SkippedStepScheduler(variance_type="optimal", eps_mse=table.tolist(), eta=eta, solver_order=1,
                                 clip_sample=False)
    sched.set_timesteps(timesteps=timesteps)
    for t, s in zip(timesteps, timesteps[1:]):
        alpha, sigma = (float(v) for v in PATH.alpha_sigma(t))
        x_t = alpha * data[:4000] + sigma * torch.randn(data[:4000].shape, generator=torch.Generator().manual_seed(t))
        x_t = x_t.float()
        std = _injected_std(sched, model(x_t, torch.full((x_t.shape[0],), t)), t, x_t)
        assert torch.allclose(std, std.flatten()[0], atol=1e-6)  # isotropic
        post = gaussian_posterior(alpha, sigma, *(float(v) for v in PATH.alpha_sigma(s)), eta)
        closed_form = post.noise_var + post.coef_x0**2 * _exact_error_per_dim(mixture, t, x_t)
        print(f"eta={eta} t={t}: injected var {float(std.flatten()[0]) ** 2:.6f}, closed form {closed_form:.6f}")
        assert float(std.flatten()[0]) ** 2 == pytest.approx(closed_form, rel=0.03)


def test_optimal_variance_reads_the_table_at_each_steps_own_timestep():
    """A table with a different value at every timestep: each step's noise must follow its own t."""
    table = [0.02 + 0.5 * t / 999 for t in range(1000)]
    sched = SkippedStepScheduler(variance_type="optimal", eps_mse=table, eta=0.5, solver_order=1, clip_sample=False)
    sched.set_timesteps(8)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = 0.3 * x
    ts = sched.timesteps.tolist()
    seen = []
    for t, s in zip(ts, ts[1:]):
        std = float(_injected_std(sched, out, t, x).flatten()[0])
        a_t, s_t = (float(v) for v in PATH.alpha_sigma(t))
        post = gaussian_posterior(a_t, s_t, *(float(v) for v in PATH.alpha_sigma(s)), 0.5)
        expected = optimal_noise_variance(post, a_t, s_t, table[t])
        assert std**2 == pytest.approx(expected, rel=1e-5), f"step at t={t}"
        seen.append(std**2 / post.coef_x0**2)
    assert len(set(round(v, 6) for v in seen)) == len(seen)  # every step read a different table entry


def _out_of_range_model(x, t):
    """An epsilon model whose x0_hat leaves [-1, 1] by a data-dependent amount (so thresholds differ per sample)."""
    return -0.6 * x + 0.2 * torch.tanh(3 * x)


def _in_range_model(x, t):
    """An epsilon model whose late x0_hat mostly stays inside [-1, 1] (the quantile falls below 1: s clamps to 1)."""
    return 0.9 * x


@pytest.mark.parametrize("model", [_out_of_range_model, _in_range_model])
@pytest.mark.parametrize("ratio,max_value", [(0.995, 1.0), (0.9, 1.5), (0.6, 3.0)])
def test_dynamic_thresholding_equals_diffusers(ratio, max_value, model):
    """Our eta=0 first-order step with thresholding=True is DDIM with thresholding=True, step for step (DDIM with
    use_clipped_model_output=True: skipstep always steps along the epsilon consistent with the thresholded x0_hat,
    as DDPM's posterior mean does)."""
    config = dict(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value,
                  clip_sample=False, timestep_spacing="trailing")
    ddim = DDIMScheduler(set_alpha_to_one=True, **config)
    member = dict(eta=0.0, solver_order=1, use_corrector=False, keep_grid=True)  # DDIM's step on DDIM's grid
    ours = SkippedStepScheduler.from_config(ddim.config, **member)
    plain = SkippedStepScheduler.from_config(ddim.config, **member, thresholding=False)
    for s in (ddim, ours, plain):
        s.set_timesteps(10)
    assert ddim.timesteps.tolist() == ours.timesteps.tolist()
    x_ref = x_ours = x_plain = 2.0 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in ddim.timesteps:
        ref_out = ddim.step(model(x_ref, t), t, x_ref, use_clipped_model_output=True)
        our_out = ours.step(model(x_ours, t), t, x_ours)
        torch.testing.assert_close(our_out.pred_original_sample, ref_out.pred_original_sample, atol=2e-5, rtol=1e-4)
        x_ref, x_ours = ref_out.prev_sample, our_out.prev_sample
        x_plain = plain.step(model(x_plain, t), t, x_plain).prev_sample
    torch.testing.assert_close(x_ours, x_ref, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(x_ours, x_plain, atol=1e-3)  # thresholding was active


def _model(x, t):
    return 0.5 * x + 0.1 * torch.sin(3 * x)


def _run(sched, x, indices, generator_seed=0):
    """Drive ``sched.step`` through the listed step indices; returns the outputs of each step."""
    outs = []
    for i in indices:
        t = sched.timesteps[i]
        x = sched.step(_model(x, t), t, x, generator=torch.Generator().manual_seed(generator_seed + i)).prev_sample
        outs.append(x)
    return outs


@pytest.mark.parametrize("order", [2, 3])
def test_stepper_history_reset(order):
    """No multistep history leaks across trajectories: a new set_timesteps starts afresh, and a step whose index
    does not follow the previous one (out of order, or entering mid-way as img2img does) is a first-order step."""
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    sched = SkippedStepScheduler(eta=0.5, solver_order=order)
    sched.set_timesteps(8)
    full = _run(sched, x0, range(8))
    # an interrupted trajectory, then set_timesteps and a full run: identical to the first full run
    sched.set_timesteps(8)
    _run(sched, x0, range(4))
    sched.set_timesteps(8)
    assert torch.equal(_run(sched, x0, range(8))[-1], full[-1])
    # the multistep history matters (so the checks below can fail)
    fresh = SkippedStepScheduler(eta=0.5, solver_order=1)
    fresh.set_timesteps(8)
    assert not torch.allclose(_run(fresh, x0, range(8))[-1], full[-1])
    # jumping ahead (step 5 after step 2) and going back (step 1 after step 2): first-order steps
    first_order = SkippedStepScheduler(eta=0.5, solver_order=1)
    first_order.set_timesteps(8)
    x_mid = full[3]
    sched.set_timesteps(8)
    _run(sched, x0, range(3))
    jumped = _run(sched, x_mid, [5])[0]
    assert torch.equal(jumped, _run(first_order, x_mid, [5])[0])
    back = _run(sched, x_mid, [1])[0]
    assert torch.equal(back, _run(first_order, x_mid, [1])[0])
    # ...and the step after a jump rebuilds its history from that step on: step 6 after 5 is second order
    sched.set_timesteps(8)
    _run(sched, x0, [5])
    after = _run(sched, full[5], [6])[0]
    assert not torch.equal(after, _run(first_order, full[5], [6])[0])
