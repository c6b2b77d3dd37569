"""The k-diffusion-convention peers written in the lab: DPM-Solver++(3M) SDE against k-diffusion's own
``sample_dpmpp_3m_sde``, iPNDM against a hand-computed Adams-Bashforth run, the VE denoiser adapter against
k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``, and the runner's schedule and NFE."""

from __future__ import annotations

import math

import pytest
import torch

from kdiffusion_loader import SKIP_REASON, load_k_diffusion
from skipstep import DiscreteVPPath
from skipstep.lab.kdiffusion_peers import (FlowDenoiser, KDiffusionRunner, VEDenoiser, flow_half_log_snr, karras_sigmas,
                                          sample_dpmpp_3m_sde, sample_ipndm, simple_flow_sigmas)
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


# ---- ComfyUI's flow (CONST) form on the simple scheduler: ipndm-simple, dpmpp-3m-sde-simple ----------------------
FLOW_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
               "prediction_type": "flow"}


def test_the_simple_schedule_reads_the_models_shifted_table():
    """ComfyUI's simple scheduler: table[k] = shift((k + 1)/1000), read at 1000 - 1 - floor(i 1000/n), then 0."""
    torch.testing.assert_close(simple_flow_sigmas(3, 1.0), torch.tensor([1.0, 0.667, 0.334, 0.0], dtype=torch.float64))
    shift3 = lambda t: 3 * t / (1 + 2 * t)  # noqa: E731
    expected = [shift3(u) for u in (1.0, 0.8, 0.6, 0.4, 0.2)] + [0.0]
    torch.testing.assert_close(simple_flow_sigmas(5, 3.0), torch.tensor(expected, dtype=torch.float64))
    assert simple_flow_sigmas(7, 1.0)[1] == pytest.approx(0.858)  # floor(1000/7) = 142: table[857] = 858/1000


def test_the_flow_form_of_dpmpp_3m_sde_is_the_ve_form_in_ve_coordinates():
    """x_flow = (1 - s) x_ve with s_ve = s/(1 - s): the flow-coordinate step with lambda = log((1 - s)/s) and
    alpha = 1 - s is k-diffusion's VE step, noise included (the same z scales by s_{i+1} in both)."""
    s_flow = torch.tensor([0.9997, 0.93, 0.8, 0.62, 0.41, 0.2, 0.07, 0.0], dtype=torch.float64)
    s_ve = torch.cat([s_flow[:-1] / (1 - s_flow[:-1]), torch.zeros(1, dtype=torch.float64)])
    noise = SharedNoise(3)
    flow_noise = lambda s, s_next: noise(s / (1 - s), s_next / (1 - s_next))  # noqa: E731  same z per step

    def flow_denoiser(x, s):
        s = float(torch.as_tensor(s).reshape(-1)[0])
        return denoiser(x / (1 - s), torch.tensor(s / (1 - s), dtype=torch.float64))

    x_ve = start(s_ve)
    ve = sample_dpmpp_3m_sde(denoiser, x_ve.clone(), s_ve, noise_sampler=noise)
    flow = sample_dpmpp_3m_sde(flow_denoiser, x_ve * (1 - s_flow[0]), s_flow, noise_sampler=flow_noise,
                               half_log_snr=flow_half_log_snr)
    assert float((flow - ve).abs().max()) <= 1e-10 * max(float(ve.abs().max()), 1.0)


def test_ipndm_denoises_on_a_step_to_zero():
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=torch.float64)
    x0 = start(sigmas)
    seen = []

    def recording(x, s):
        seen.append(x.clone())
        return denoiser(x, s)

    out = sample_ipndm(recording, x0.clone(), sigmas)
    assert len(seen) == 3
    torch.testing.assert_close(out, denoiser(seen[-1], sigmas[2]), atol=0, rtol=0)
    torch.testing.assert_close(sample_ipndm(denoiser, x0.clone(), sigmas[:3]), seen[-1], atol=1e-14, rtol=0)


def test_the_flow_denoiser_reads_the_velocity_in_flow_coordinates():
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    seen = []
    den = FlowDenoiser(lambda x, t: (seen.append(t), eps - x0)[1], FLOW_CONFIG)
    s = 0.37
    torch.testing.assert_close(den((1 - s) * x0 + s * eps, torch.tensor([s, s])), x0, atol=1e-6, rtol=1e-6)
    assert float(seen[-1][0]) == pytest.approx(370.0)


@pytest.mark.parametrize("name", ["ipndm-simple", "dpmpp-3m-sde-simple"])
def test_the_simple_peers_nfe_schedule_and_refusal(tmp_path, name):
    counter = CallCounter(lambda x, t: torch.zeros_like(x))
    runner = build_scheduler(get_sampler(name), FLOW_CONFIG, 5)
    out = run_standard_loop(runner, counter, torch.randn(2, 1, 4, 4), 5, generator=torch.Generator().manual_seed(0))
    assert counter.calls == 5 and torch.isfinite(out).all()
    first = 1000.0 if name == "ipndm-simple" else pytest.approx(1000 * 3 * 0.9999 / (1 + 2 * 0.9999), abs=1e-3)
    assert runner.timesteps[0] == first and runner.timesteps[1] == pytest.approx(1000 * 2.4 / 2.6, abs=1e-3)
    from tiny_dirs import conditional_dir
    from skipstep.lab.models import load_model
    reason = get_sampler(name).refusal(load_model(str(conditional_dir(tmp_path / "vp"))))
    assert reason is not None and "flow" in reason
    with pytest.raises(ValueError, match="flow models"):
        KDiffusionRunner(name, _vp_config("epsilon"), sample_ipndm, True, "simple")
