"""The analytic first step (``sample(..., data_mean=, data_var=)``, :mod:`skipstep.gaussian_data`): the closed form
against the full-covariance formula, the grid convention, exactness on Gaussian data (the sampler with the analytic
first step draws the same samples as the plain sampler over the same times whose first evaluation is the exact
model), NFE counting and bad input."""

from __future__ import annotations

import pytest
import torch

import skipstep
from skipstep import DiscreteVPPath, RectifiedFlowPath
from skipstep.gaussian_data import check_data_moments, gaussian_data_x0
from skipstep.k_diffusion import sample_skipstep
from skipstep.timesteps import analytic_first_step_grid, select_timesteps

SHAPE = (6, 1, 4, 4)
MEAN = torch.linspace(-0.8, 0.6, 16).reshape(1, 4, 4)
VAR = torch.linspace(0.05, 0.4, 16).flip(0).reshape(1, 4, 4)
VP = DiscreteVPPath.from_config({})
ZERO_SNR = DiscreteVPPath.from_config({"rescale_betas_zero_snr": True})
FLOW = RectifiedFlowPath()


def exact_gaussian_model(path, prediction_type: str, calls: list | None = None, learned: bool = False):
    """The exact denoiser of data N(MEAN, diag(VAR)) in ``prediction_type``'s output (``sample``: the library's
    closed form itself, so equality is bitwise; the others from an independent float64 formula)."""
    mean64, var64 = MEAN.double(), VAR.double()

    def model(x, t):
        if calls is not None:
            calls.append(float(t[0]))
        alpha, sigma = (float(v) for v in path.alpha_sigma(t[:1].cpu()))
        if prediction_type == "sample":
            out = gaussian_data_x0(x, alpha, sigma, *check_data_moments(MEAN, VAR, x.shape))
        else:
            x64 = x.double()
            x0 = mean64 + alpha * var64 / (alpha**2 * var64 + sigma**2) * (x64 - alpha * mean64)
            eps = (x64 - alpha * x0) / sigma
            out = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0}[prediction_type]
            out = out.to(x.dtype)
        if learned:  # variance channels at -1: the posterior's 'small' variance
            out = torch.cat([out, -torch.ones_like(out)], dim=1)
        return out

    return model


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------------------
# the closed form and the grid
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,sigma", [(0.0, 1.0), (0.02, 0.9998), (0.6, 0.8), (0.7, 0.3)])
def test_closed_form_is_the_gaussian_posterior_mean(alpha, sigma):
    """mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^{-1} (x_t - alpha mu) with Sigma as a matrix, solved densely."""
    x_t = torch.randn(3, 1, 4, 4, generator=_gen(), dtype=torch.float64)
    mean, var = check_data_moments(MEAN, VAR, x_t.shape)
    ours = gaussian_data_x0(x_t, alpha, sigma, mean, var)
    cov = torch.diag(VAR.double().flatten())
    mu = MEAN.double().flatten()
    rhs = (x_t.reshape(3, -1) - alpha * mu).T
    ref = mu + (alpha * cov @ torch.linalg.solve(alpha**2 * cov + sigma**2 * torch.eye(16, dtype=torch.float64), rhs)).T
    torch.testing.assert_close(ours.reshape(3, -1), ref, rtol=1e-12, atol=1e-12)
    if alpha == 0.0:
        assert torch.equal(ours, mean.expand_as(ours))


def test_scalar_moments_and_no_variance():
    x_t = torch.randn(2, 3, 2, 2, generator=_gen())
    mean, var = check_data_moments(0.25, None, x_t.shape)
    assert torch.allclose(gaussian_data_x0(x_t, 0.6, 0.8, mean, var), torch.full_like(x_t, 0.25))
    mean, var = check_data_moments(0.0, 1.0, x_t.shape)  # unit-variance data on a VP path: x0_hat = alpha x_t
    torch.testing.assert_close(gaussian_data_x0(x_t, 0.6, 0.8, mean, var), 0.6 * x_t)


@pytest.mark.parametrize("path,spacing,n,expected", [
    (VP, "trailing", 3, [999, 749, 499, 249]),  # the 4-step grid, its first time analytic
    (VP, "power", 3, [800, 600, 400, 200]),
    (VP, "linspace", 2, [999, 500, 0]),
    (FLOW, "trailing", 3, [1.0, 0.75, 0.5, 0.25]),
])
def test_grid_convention(path, spacing, n, expected):
    grid = analytic_first_step_grid(lambda k: select_timesteps(path, k, spacing), n)
    assert grid.tolist() == pytest.approx(expected)
    assert torch.equal(grid, select_timesteps(path, n + 1, spacing))


# ------------------------------------------------------------------------------------------------------------------
# exactness on Gaussian data
# ------------------------------------------------------------------------------------------------------------------
def _both(path, prediction_type, n=3, spacing="trailing", spacing_power=1.0, **kwargs):
    """(analytic-first-step samples at n evaluations, plain samples at n + 1 steps, model times called, the
    plain sampler's times). ``spacing_power=None``: the default exponent rule, applied to the ``n + 1``-step grid."""
    calls: list = []
    learned = kwargs.get("variance_type") == "learned"
    common = dict(path=path, prediction_type=prediction_type, progress=False, spacing=spacing,
                  spacing_power=spacing_power, **kwargs)
    ours = skipstep.sample(exact_gaussian_model(path, prediction_type, calls, learned), SHAPE, num_steps=n,
                           data_mean=MEAN, data_var=VAR, generator=_gen(), **common)
    plain = skipstep.sample(exact_gaussian_model(path, prediction_type, None, learned), SHAPE, num_steps=n + 1,
                            generator=_gen(), **common)
    return ours, plain, calls, select_timesteps(path, n + 1, spacing, power=spacing_power)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("solver_order", [1, 2, 3])
@pytest.mark.parametrize("use_corrector", [False, True])
@pytest.mark.parametrize("spacing,spacing_power", [("trailing", 1.0), ("power", 1.0), ("power", None)],
                         ids=["trailing", "power", "power-rule"])
def test_equals_the_plain_sampler_with_the_exact_first_evaluation(eta, solver_order, use_corrector, spacing,
                                                                  spacing_power):
    ours, plain, calls, grid = _both(VP, "sample", 4, spacing, spacing_power, eta=eta, solver_order=solver_order,
                                     use_corrector=use_corrector)
    assert torch.equal(ours, plain)  # bitwise: the exact model's x0_hat is the closed form
    assert calls == [float(v) for v in grid[1:]]  # 4 evaluations for 5 steps, none at the analytic node


@pytest.mark.parametrize("path,prediction_type", [(VP, "epsilon"), (VP, "v_prediction"), (ZERO_SNR, "v_prediction"),
                                                  (ZERO_SNR, "sample"), (FLOW, "flow")])
@pytest.mark.parametrize("eta,solver_order,use_corrector", [(1.0, 1, False), (0.0, 3, True), (1.0, 2, True)])
def test_every_regime_and_parameterisation(path, prediction_type, eta, solver_order, use_corrector):
    ours, plain, calls, grid = _both(path, prediction_type, 3, eta=eta, solver_order=solver_order,
                                     use_corrector=use_corrector)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    assert calls == pytest.approx([float(v) for v in grid[1:]])


def test_learned_variance_takes_the_small_variance_on_the_analytic_step():
    ours, plain, calls, _ = _both(VP, "sample", 3, eta=1.0, variance_type="learned")
    assert torch.equal(ours, plain) and len(calls) == 3


def test_explicit_timesteps_list_the_analytic_time_first_and_the_callback_sees_every_step():
    calls, seen = [], []
    x = skipstep.sample(exact_gaussian_model(VP, "epsilon", calls), SHAPE, timesteps=[900, 600, 300],
                        data_mean=MEAN, data_var=VAR, progress=False, generator=_gen(),
                        callback=lambda i, t, x, x0: seen.append((i, t)))
    assert calls == [600.0, 300.0] and seen == [(0, 900), (1, 600), (2, 300)] and x.shape == SHAPE


def test_one_evaluation_after_the_analytic_step():
    """num_steps=1: the analytic step from T-1 to the 2-step trailing grid's second time, then the model's step."""
    calls: list = []
    x = skipstep.sample(exact_gaussian_model(VP, "epsilon", calls), SHAPE, num_steps=1, data_mean=MEAN,
                        spacing="trailing", progress=False, generator=_gen())
    assert calls == [499.0] and bool(torch.isfinite(x).all())


# ------------------------------------------------------------------------------------------------------------------
# the k-diffusion adapter
# ------------------------------------------------------------------------------------------------------------------
def test_k_diffusion_adapter_first_sigma_is_analytic():
    """``sample_skipstep(..., data_mean=)``: the first sigma's denoiser call is the closed form in VE units."""
    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.3, 0.0], dtype=torch.float64)
    calls: list = []

    def denoiser(x, s):  # exact denoiser of N(MEAN, VAR) data in k-diffusion's x = x0 + s eps
        s = float(s[0])
        calls.append(s)
        return (MEAN + VAR / (VAR + s * s) * (x - MEAN)).to(x.dtype)

    x = torch.randn(SHAPE, generator=_gen(), dtype=torch.float64) * sigmas[0]
    noise = [torch.randn(SHAPE, generator=_gen(1), dtype=torch.float64) for _ in range(4)]

    def sampler():
        it = iter(noise)
        return lambda a, b: next(it)

    ours = sample_skipstep(denoiser, x, sigmas, disable=True, eta=1.0, noise_sampler=sampler(), data_mean=MEAN,
                           data_var=VAR)
    assert calls == [10.0, 2.0, 0.3]
    plain = sample_skipstep(denoiser, x, sigmas, disable=True, eta=1.0, noise_sampler=sampler())
    torch.testing.assert_close(ours, plain, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"data_mean": torch.zeros(2, 4, 4)}, r"data_mean must have finite values, broadcastable to the sample shape"),
    ({"data_mean": torch.zeros(7, 1, 4, 4)}, r"data_mean .* got shape \(7, 1, 4, 4\)"),
    ({"data_mean": float("nan")}, r"data_mean .* contains NaN or inf"),
    ({"data_mean": 0.0, "data_var": -0.1}, r"data_var must have finite values in \[0, inf\).*smallest value is -0.1"),
    ({"data_mean": 0.0, "data_var": torch.full((1, 4, 4), float("inf"))}, r"data_var .* contains NaN or inf"),
    ({"data_mean": 0.0, "data_var": torch.zeros(3, 3)}, r"data_var .* got shape \(3, 3\)"),
    ({"data_mean": "zero"}, r"data_mean must be a number or a tensor"),
    ({"data_mean": True}, r"data_mean must be a number or a tensor"),
    ({"data_var": 1.0}, r"data_var is the data variance of the analytic first step; it needs data_mean"),
    ({"data_mean": 0.0, "timesteps": [500]}, r"give at least 2 timesteps"),
])
def test_bad_moments_are_refused_with_the_parameter_and_its_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        skipstep.sample(exact_gaussian_model(VP, "epsilon"), SHAPE, progress=False, **kwargs)


def test_refused_with_a_tuned_schedule():
    schedule = skipstep.TunedSchedule(timesteps=[999, 500], eta=[1.0, 1.0], nfe=2, num_train_timesteps=1000)
    with pytest.raises(ValueError, match="cannot be combined with tuned_schedule"):
        skipstep.sample(exact_gaussian_model(VP, "epsilon"), SHAPE, progress=False, data_mean=0.0,
                        tuned_schedule=schedule)
