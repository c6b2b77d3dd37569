"""Timestep selection and Gaussian paths against diffusers and closed forms."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from skipstep import (
    ContinuousVPPath,
    DiscreteVPPath,
    RectifiedFlowPath,
    make_betas,
    select_timesteps,
    validate_timesteps,
)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_discrete_path_equals_diffusers_tables(schedule, zero_snr):
    kwargs = dict(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    if schedule == "scaled_linear":
        kwargs.update(beta_start=0.00085, beta_end=0.012)
    ref = DDPMScheduler(**kwargs)
    path = DiscreteVPPath.from_config(ref.config)
    assert torch.allclose(path.alphas_cumprod, ref.alphas_cumprod.double(), atol=5e-7, rtol=0)
    alpha, sigma = path.alpha_sigma(torch.arange(-1, 1000))
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0  # t = -1 is clean data
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha), atol=1e-12)


def test_trained_betas_are_used_verbatim():
    betas = np.linspace(1e-3, 0.05, 50)
    path = DiscreteVPPath.from_config({"trained_betas": betas.tolist(), "num_train_timesteps": 50})
    expected = np.cumprod(1 - betas.astype(np.float32))
    assert np.allclose(path.alphas_cumprod.numpy(), expected, atol=1e-7)
    assert torch.allclose(make_betas(trained_betas=betas), torch.tensor(betas, dtype=torch.float32).double())


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 10, 50, 999, 1000])
def test_spacings_equal_diffusers(spacing, n):
    ref = DDPMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" and n < 1000 else 0)
    ref.set_timesteps(n)
    path = DiscreteVPPath.from_config(ref.config)
    ours = select_timesteps(path, n, spacing, steps_offset=ref.config.steps_offset)
    assert ours.tolist() == ref.timesteps.tolist()


def test_quadratic_matches_the_ddim_papers_recipe():
    path = DiscreteVPPath.from_config({})
    # Song et al.'s code: seq = [int(s) for s in np.linspace(0, sqrt(0.8 T), n) ** 2]
    seq = [int(s) for s in list(np.linspace(0, np.sqrt(1000 * 0.8), 20) ** 2)]
    assert select_timesteps(path, 20, "quadratic").tolist() == seq[::-1]


@pytest.mark.parametrize("path", [DiscreteVPPath.from_config({}), ContinuousVPPath(), RectifiedFlowPath()])
def test_log_snr_spacing_is_uniform_in_log_snr(path):
    ts = select_timesteps(path, 12, "log_snr")
    lam = path.log_snr(ts).numpy()
    steps = np.diff(lam)
    assert np.all(steps > 0)
    tol = 0.35 if path.discrete else 1e-6  # integer rounding on the discrete chain
    assert np.ptp(steps) <= tol * np.mean(steps) + (0.1 if path.discrete else 0)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing", "quadratic", "log_snr"])
@pytest.mark.parametrize("n", [1, 2, 5, 20, 100, 500])
def test_discrete_spacings_are_strictly_descending_and_in_range(spacing, n):
    path = DiscreteVPPath.from_config({})
    ts = select_timesteps(path, n, spacing)
    assert len(ts) == n and ts.dtype == torch.int64
    validate_timesteps(path, ts)


@pytest.mark.parametrize("path", [ContinuousVPPath(), RectifiedFlowPath()])
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "quadratic", "log_snr"])
def test_continuous_spacings(path, spacing):
    ts = select_timesteps(path, 8, spacing)
    assert ts.dtype == torch.float64 and len(ts) == 8
    assert float(ts[0]) == pytest.approx(path.t_max)
    validate_timesteps(path, ts)


def test_leading_is_discrete_only():
    with pytest.raises(ValueError, match="leading"):
        select_timesteps(RectifiedFlowPath(), 5, "leading")


def test_continuous_paths_closed_forms():
    vp = ContinuousVPPath("linear", beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    alpha, sigma = vp.alpha_sigma(t)
    expected = torch.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    assert torch.allclose(alpha, expected) and torch.allclose(alpha**2 + sigma**2, torch.ones(3, dtype=torch.float64))
    rf = RectifiedFlowPath()
    alpha, sigma = rf.alpha_sigma(t)
    assert torch.allclose(alpha, 1 - t) and torch.allclose(sigma, t)
    for path in (vp, ContinuousVPPath("cosine", t_max=0.99), rf):
        lam = path.log_snr(torch.tensor([0.2, 0.6]))
        assert torch.allclose(path.time_at_log_snr(lam), torch.tensor([0.2, 0.6], dtype=torch.float64), atol=1e-9)
        assert bool(lam[0] > lam[1])  # SNR falls


def test_bad_schedule_names():
    with pytest.raises(ValueError, match="beta_schedule"):
        make_betas(beta_schedule="cosine-ish")
    with pytest.raises(ValueError, match="spacing"):
        select_timesteps(DiscreteVPPath.from_config({}), 5, "uniform")
    with pytest.raises(ValueError, match=r"num_inference_steps must lie in \[1, 1000\]"):
        select_timesteps(DiscreteVPPath.from_config({}), 1001, "trailing")
    with pytest.raises(ValueError, match="num_inference_steps"):
        select_timesteps(DiscreteVPPath.from_config({}), 0, "trailing")


def test_ddim_timesteps_match_for_trailing():
    ref = DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(25)
    assert select_timesteps(DiscreteVPPath.from_config(ref.config), 25, "trailing").tolist() == ref.timesteps.tolist()
    assert math.isclose(float(DiscreteVPPath.from_config(ref.config).alpha_sigma(999)[0] ** 2),
                        float(ref.alphas_cumprod[999]), rel_tol=1e-6)


def test_power_spacing():
    """round(T n/(n+1) (1 - i/n)^p) on a chain; t_max ((n - i)/n)^p on a continuous path; p >= 1."""
    from skipstep.timesteps import power_grid, select_timesteps

    path = DiscreteVPPath.from_config({})
    assert select_timesteps(path, 5, "power", power=1.0).tolist() == [833, 667, 500, 333, 167]
    assert select_timesteps(path, 4, "power", power=2.0).tolist() == [800, 450, 200, 50]
    assert power_grid(3, 1.5).tolist() == pytest.approx([0.75, 0.75 * (2 / 3) ** 1.5, 0.75 * (1 / 3) ** 1.5])
    for n in (1, 3, 10, 50, 500):
        ts = select_timesteps(path, n, "power", power=1.7)
        assert len(ts) == n and bool((ts[1:] < ts[:-1]).all()) and int(ts[-1]) >= 0
    flow = RectifiedFlowPath()
    assert select_timesteps(flow, 4, "power", power=2.0).tolist() == pytest.approx([1.0, 0.5625, 0.25, 0.0625])
    for bad in (0.5, float("nan"), "2", True):
        with pytest.raises(ValueError, match="spacing_power must be a finite number >= 1"):
            select_timesteps(path, 5, "power", power=bad)


def test_flow_scheduler_power_spacing_shifts_like_custom_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from skipstep import SkippedStepFlowScheduler

    ours = SkippedStepFlowScheduler(shift=3.0, timestep_spacing="power", spacing_power=1.5)
    ours.set_timesteps(6)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(sigmas=[((6 - i) / 6) ** 1.5 for i in range(6)])
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.timesteps, ref.timesteps)
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        SkippedStepFlowScheduler(timestep_spacing="trailing")
