"""The k-diffusion-convention peers written in the lab: DPM-Solver++(3M) SDE against k-diffusion's own
``sample_dpmpp_3m_sde``, iPNDM against a hand-computed Adams-Bashforth run, the VE denoiser adapter against
k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``, and the runner's schedule and NFE."""

from __future__ import annotations

import math

import pytest
import torch

from kdiffusion_loader import SKIP_REASON, load_k_diffusion
from skipstep import DiscreteVPPath
from skipstep.lab.kdiffusion_peers import VEDenoiser, karras_sigmas, sample_dpmpp_3m_sde, sample_ipndm
from skipstep.lab.sample_sets import sample_cell
from skipstep.lab.sampler_registry import CallCounter, build_scheduler, get_sampler, run_standard_loop

K = load_k_diffusion()
SHAPE = (3, 2, 4, 4)


def denoiser(x, sigma):
    """A smooth, nonlinear x0 predictor: the exact denoiser of N(0.3, 0.5^2) data, bent by a tanh."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return (0.25 * x + s * s * 0.3) / (0.25 + s * s) + 0.2 * torch.tanh(x) / (1 + s)


class SharedNoise:
    """The same unit noise for a given (sigma, sigma_next), whichever sampler asks."""

    def __init__(self, seed=0):
        self.g, self.table = torch.Generator().manual_seed(seed), {}

    def __call__(self, sigma, sigma_next):
        key = (round(float(sigma), 12), round(float(sigma_next), 12))
        if key not in self.table:
            self.table[key] = torch.randn(SHAPE, generator=self.g, dtype=torch.float64)
        return self.table[key]


def start(sigmas):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]


@pytest.mark.skipif(K is None, reason=SKIP_REASON)
@pytest.mark.parametrize("n", [2, 3, 6, 15])  # n = 1: k-diffusion itself fails (h unbound on its first step)
def test_dpmpp_3m_sde_equals_k_diffusion(n):
    sigmas = K.sampling.get_sigmas_karras(n, 0.03, 14.6, device="cpu").double()
    x = start(sigmas)
    noise = SharedNoise()
    ref = K.sampling.sample_dpmpp_3m_sde(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise)
    ours = sample_dpmpp_3m_sde(denoiser, x.clone(), sigmas, noise_sampler=noise)
    assert float((ours - ref).abs().max()) <= 1e-12 * max(float(ref.abs().max()), 1.0)


def test_karras_sigmas_equal_k_diffusions():
    if K is None:
        pytest.skip(SKIP_REASON)
    ref = K.sampling.get_sigmas_karras(7, 0.0292, 14.61, rho=7.0, device="cpu").double()[:-1]
    torch.testing.assert_close(karras_sigmas(7, 0.0292, 14.61), ref, rtol=1e-6, atol=0)


def test_ipndm_equals_a_hand_computed_adams_bashforth_run():
    """Five steps: orders 1, 2, 3, 4, 4 with the equal-step coefficients on unequal sigma steps."""
    sigmas = torch.tensor([10.0, 4.0, 1.5, 0.6, 0.2, 0.05], dtype=torch.float64)
    x0 = start(sigmas)
    x, ds = x0.clone(), []
    coefficients = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for i in range(5):
        s, s_next = sigmas[i], sigmas[i + 1]
        ds.insert(0, (x - denoiser(x, s)) / s)
        order = min(4, i + 1)
        x = x + (s_next - s) * sum(c * d for c, d in zip(coefficients[order], ds[:order]))
    ours = sample_ipndm(denoiser, x0.clone(), sigmas)
    assert float((ours - x).abs().max()) <= 1e-13
    # and its first steps by the formula (order 1, then 2)
    d0 = (x0 - denoiser(x0, sigmas[0])) / sigmas[0]
    x1 = x0 + (sigmas[1] - sigmas[0]) * d0
    d1 = (x1 - denoiser(x1, sigmas[1])) / sigmas[1]
    x2 = x1 + (sigmas[2] - sigmas[1]) * (3 * d1 - d0) / 2
    torch.testing.assert_close(sample_ipndm(denoiser, x0.clone(), sigmas[:3]), x2, atol=1e-13, rtol=0)


def _vp_config(prediction_type):
    return {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "prediction_type": prediction_type}


@pytest.mark.skipif(K is None, reason=SKIP_REASON)
@pytest.mark.parametrize("prediction_type, wrapper", [("epsilon", "DiscreteEpsDDPMDenoiser"),
                                                      ("v_prediction", "DiscreteVDDPMDenoiser")])
def test_the_ve_denoiser_equals_k_diffusions_discrete_denoisers(prediction_type, wrapper):
    config = _vp_config(prediction_type)
    abar = DiscreteVPPath.from_config(config).alphas_cumprod.float()

    class Net(torch.nn.Module):
        def forward(self, x, t, **kwargs):
            return torch.sin(x) * (1 + t.reshape(-1, 1, 1, 1).float() / 1000)

    seen = []
    net = Net()
    ours = VEDenoiser(lambda x, t: (seen.append(t), net(x, t))[1], config)
    theirs = getattr(K.external, wrapper)(net, abar, quantize=False)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    for sigma in (0.02, 0.5, 3.7, 60.0):
        s = torch.full((2,), sigma)
        torch.testing.assert_close(ours(x, s), theirs(x, s), atol=2e-5, rtol=1e-4)
        assert abs(float(seen[-1][0]) - float(theirs.sigma_to_t(torch.tensor(sigma)))) < 1e-3


def test_the_flow_denoiser_is_the_same_path_in_ve_coordinates():
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
              "prediction_type": "flow"}
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    den = VEDenoiser(lambda x_flow, t: eps - x0, config)  # the exact velocity
    s = 1.7
    x_ve = x0 + s * eps
    torch.testing.assert_close(den(x_ve, torch.tensor([s, s])), x0, atol=1e-5, rtol=1e-5)
    sf = 3 * (999 / 1000) / (1 + 2 * (999 / 1000))
    assert den.sigma_max == pytest.approx(sf / (1 - sf)) and den.sigma_to_t(s) == pytest.approx(s / (1 + s) * 1000)


def test_the_runners_nfe_and_schedules():
    config = _vp_config("epsilon")
    counter = CallCounter(lambda x, t: torch.zeros_like(x))
    noise = torch.randn(2, 1, 4, 4)
    for name, nfe in (("ipndm", 5), ("dpmpp-3m-sde-k", 4)):
        runner = build_scheduler(get_sampler(name), config, nfe)
        before = counter.calls
        out = run_standard_loop(runner, counter, noise, nfe, generator=torch.Generator().manual_seed(0))
        assert counter.calls - before == nfe and torch.isfinite(out).all()
        assert len(runner.timesteps) == nfe and runner.timesteps[0] == pytest.approx(999, abs=1e-3)
    den = VEDenoiser(lambda x, t: x, config)
    assert den.sigma_min == pytest.approx(math.sqrt((1 - 0.9999) / 0.9999), rel=1e-3)


def test_the_kdiffusion_peers_run_in_the_bench_protocol(tmp_path):
    from tiny_dirs import conditional_dir
    from skipstep.lab.models import load_model

    view = load_model(str(conditional_dir(tmp_path / "c"))).at_guidance(2.0)
    for name in ("ipndm", "dpmpp-3m-sde-k"):
        cell = sample_cell(view, get_sampler(name), 3, 0, 8, 4, "cpu")
        assert cell.actual_nfe == 3 and cell.network_calls_unbatched == 6 and torch.isfinite(cell.samples).all()
        again = sample_cell(view, get_sampler(name), 3, 0, 8, 4, "cpu")
        assert torch.equal(cell.samples, again.samples)  # the noise comes from the step generators
