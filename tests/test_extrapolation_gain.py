"""The extrapolation gain on the order-2 term, ``D = x0_0 + G w_1 (x0_1 - x0_0)``: the weights, the plan, the
default rule (``1 + (3/n)^3`` below 8 steps on VP chains without guidance above 1), every route that plans a
trajectory (scheduler, flow scheduler, ``sample()``, the k-diffusion adapter, tuned schedules) and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skipstep import SkippedStepFlowScheduler, SkippedStepScheduler, sample
from skipstep.k_diffusion import sample_skipstep
from skipstep.paths import DiscreteVPPath
from skipstep.plan import (EXTRAPOLATION_GAIN_STEPS, default_extrapolation_gain, plan_steps,
                           resolve_extrapolation_gain)
from skipstep.posterior import exact_x0_weight_rows, with_extrapolation_gain
from skipstep.timesteps import FEW_STEPS_BELOW
from skipstep.tuned_schedules import TunedSchedule, TunedScheduleError


def test_the_gain_scales_the_order_2_term_only():
    rows = exact_x0_weight_rows([[1.0, 0.2], [0.5, -1.0]], [2.0, 1.3], [0.0, 1.0])
    for gain in (0.0, 1.0, 1.5, 2.0):
        got = with_extrapolation_gain(rows, gain)
        np.testing.assert_allclose(got[:, 1], gain * rows[:, 1], rtol=0, atol=1e-15)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(with_extrapolation_gain(rows, 0.0), [[1.0, 0.0], [1.0, 0.0]])  # first order
    three = exact_x0_weight_rows([[1.0, 0.2, -0.5]], [2.0], [0.0])
    np.testing.assert_array_equal(with_extrapolation_gain(three, 2.0), three)  # order 3: unchanged


def test_the_default_rule():
    assert default_extrapolation_gain(3) == 2.0 and EXTRAPOLATION_GAIN_STEPS == 3.0
    assert default_extrapolation_gain(4) == 1.0 + (3 / 4) ** 3
    assert default_extrapolation_gain(FEW_STEPS_BELOW - 1) > 1.0
    assert all(default_extrapolation_gain(n) == 1.0 for n in (FEW_STEPS_BELOW, 10, 50))
    assert resolve_extrapolation_gain(None, 3) == 2.0
    assert resolve_extrapolation_gain(None, 3, guidance_scale=1.0) == 2.0  # w = 1: no guidance
    assert resolve_extrapolation_gain(None, 3, guidance_scale=1.5) == 1.0
    assert resolve_extrapolation_gain(None, 3, flow=True) == 1.0
    assert resolve_extrapolation_gain(1.7, 20, flow=True, guidance_scale=8.0) == 1.7  # an explicit gain is kept


def test_the_plan_applies_the_gain_to_every_order_2_predictor_and_not_the_corrector():
    path = DiscreteVPPath.from_config({})
    ts = torch.tensor([850, 600, 400, 200, 60])
    exact = plan_steps(path, ts, 0.0, solver_order=2, use_corrector=True)
    gained = plan_steps(path, ts, 0.0, solver_order=2, use_corrector=True, extrapolation_gain=1.6)
    order_2 = 0
    for a, b in zip(exact, gained):
        assert a.corrector_weights == b.corrector_weights and a.data_weights[0] == b.data_weights[0]
        if len(a.data_weights) > 1:
            order_2 += 1
            (_, w1), (g0, g1) = a.data_weights[1], b.data_weights[1]
            assert math.isclose(g1, 1.6 * w1, rel_tol=1e-14) and math.isclose(g0 + g1, 1.0, rel_tol=1e-14)
            # weights computed at call time for another eta carry the gain too
            other = b.x0_weights(2, eta=0.5)
            assert math.isclose(other[1], 1.6 * a.x0_weights(2, eta=0.5)[1], rel_tol=1e-12)
    assert order_2 == 3


def _eps(x, t):
    return 0.4 * x + 0.02 * torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1)) / 1000


def _scheduler_run(sched, steps, noise):
    sched.set_timesteps(steps)
    x, gen = noise.clone(), torch.Generator().manual_seed(7)
    for t in sched.timesteps:
        x = sched.step(_eps(x, t.expand(x.shape[0])), t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("steps", [3, 5, FEW_STEPS_BELOW + 2])
def test_the_scheduler_and_sample_use_the_rule_and_agree(steps):
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    default = _scheduler_run(SkippedStepScheduler(), steps, noise)
    explicit = _scheduler_run(SkippedStepScheduler(extrapolation_gain=default_extrapolation_gain(steps)), steps,
                              noise)
    exact = _scheduler_run(SkippedStepScheduler(extrapolation_gain=1.0), steps, noise)
    assert torch.equal(default, explicit)
    assert torch.equal(default, exact) == (steps >= FEW_STEPS_BELOW)
    if steps < FEW_STEPS_BELOW:  # deterministic there: sample() draws no noise, so the two routes must agree
        functional = sample(_eps, noise=noise, num_steps=steps, progress=False)
        torch.testing.assert_close(functional, default, rtol=1e-5, atol=1e-5)
    gen = torch.Generator
    assert torch.equal(sample(_eps, noise=noise, num_steps=steps, progress=False, guidance_scale=3.0,
                              generator=gen().manual_seed(1)),
                       sample(_eps, noise=noise, num_steps=steps, progress=False, extrapolation_gain=1.0,
                              generator=gen().manual_seed(1)))


def test_the_gained_step_by_hand():
    """Two steps, the second of order 2 without corrector: ``x_s = c_t x_t + C (x0_0 + G w_1 (x0_1 - x0_0))``."""
    path = DiscreteVPPath.from_config({})
    ts = torch.tensor([900, 500, 100])
    gain = 1.8
    sched = SkippedStepScheduler(timestep_spacing="trailing", use_corrector=False, extrapolation_gain=gain)
    sched.set_timesteps(timesteps=ts.tolist())
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    abar = path.alphas_cumprod.double()
    a = {int(t): float(abar[int(t)].sqrt()) for t in ts}
    s = {int(t): float((1 - abar[int(t)]).sqrt()) for t in ts}
    x0s, state = [], x.clone()
    for i, t in enumerate(ts.tolist()[:2]):
        eps = _eps(state, torch.full((2,), t))
        x0s.append((state - s[t] * eps) / a[t])
        out = sched.step(eps.float(), torch.tensor(t), state.float()).prev_sample.double()
        if i == 1:
            lam = [math.log(a[u] / s[u]) for u in (500, 900)]
            w1 = exact_x0_weight_rows([lam], [math.log(a[100] / s[100])], [0.0])[0, 1]
            d = x0s[1] + gain * w1 * (x0s[0] - x0s[1])
            expected = s[100] / s[500] * state + (a[100] - a[500] * s[100] / s[500]) * d
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        state = out


def test_the_flow_scheduler_and_the_k_diffusion_adapter():
    flow = SkippedStepFlowScheduler()
    flow.set_timesteps(4)
    assert {p.extrapolation_gain for p in flow._plan} == {1.0}
    flow = SkippedStepFlowScheduler(extrapolation_gain=1.3)
    flow.set_timesteps(4)
    assert {p.extrapolation_gain for p in flow._plan} == {1.3}
    sigmas = torch.cat([torch.logspace(1.2, -1.5, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas[0]

    def denoiser(x, sigma):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    default = sample_skipstep(denoiser, x.clone(), sigmas, disable=True)
    same = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, extrapolation_gain=default_extrapolation_gain(4))
    exact = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, extrapolation_gain=1.0)
    assert torch.equal(default, same) and not torch.equal(default, exact)


def _schedule(**kw):
    return TunedSchedule(timesteps=[900, 500, 200, 50], eta=[0.0] * 4, nfe=4, num_train_timesteps=1000,
                         solver_order=2, **kw)


def test_a_tuned_schedule_fixes_its_gain():
    old = _schedule().to_dict()
    del old["extrapolation_gain"]  # a file older than the field: the exact step
    assert TunedSchedule.from_dict(old).extrapolation_gain == 1.0
    gained = _schedule(extrapolation_gain=1.5)
    assert TunedSchedule.from_dict(gained.to_dict()).extrapolation_gain == 1.5
    sched = SkippedStepScheduler(tuned_schedule=gained)
    sched.set_timesteps(4)
    assert sched.config.extrapolation_gain == 1.5 and {p.extrapolation_gain for p in sched._plan} == {1.5}
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    path = DiscreteVPPath.from_config({})
    tuned = sample(_eps, noise=noise, path=path, tuned_schedule=gained, progress=False)
    plain = sample(_eps, noise=noise, path=path, timesteps=gained.timesteps, eta=gained.eta, solver_order=2, use_corrector=False,
                   extrapolation_gain=1.5, progress=False)
    assert torch.equal(tuned, plain)
    with pytest.raises(TunedScheduleError, match=r"extrapolation_gain=2.0 \(the schedule's is 1.5\)"):
        SkippedStepScheduler(tuned_schedule=gained, extrapolation_gain=2.0)
    with pytest.raises(TunedScheduleError, match="extrapolation_gain"):
        sample(_eps, noise=noise, path=path, tuned_schedule=gained, extrapolation_gain=1.0, progress=False)
    with pytest.raises(TunedScheduleError, match="extrapolation_gain must be a finite number >= 0"):
        _schedule(extrapolation_gain=-1.0)


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, True, "2"])
def test_bad_gains_are_refused_naming_the_parameter(bad):
    with pytest.raises(ValueError, match="extrapolation_gain must be None .* finite number >= 0"):
        SkippedStepScheduler(extrapolation_gain=bad)
    with pytest.raises(ValueError, match="extrapolation_gain must be None"):
        SkippedStepFlowScheduler(extrapolation_gain=bad)
    with pytest.raises(ValueError, match="extrapolation_gain must be None"):
        sample(_eps, (1, 1, 2, 2), num_steps=3, extrapolation_gain=bad, progress=False)
    with pytest.raises(ValueError, match="extrapolation_gain must be None"):
        plan_steps(DiscreteVPPath.from_config({}), torch.tensor([900, 100]), extrapolation_gain=bad)


def test_a_scheduler_told_the_scale_later_drops_the_gain():
    told_later = SkippedStepScheduler()
    told_later.set_guidance_scale(4.0)
    assert told_later.config.guidance_scale == 4.0
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(_scheduler_run(told_later, 4, noise),
                       _scheduler_run(SkippedStepScheduler(guidance_scale=4.0), 4, noise))
    assert told_later.effective_extrapolation_gain == 1.0
    told_later.set_guidance_scale(None)
    assert torch.equal(_scheduler_run(told_later, 4, noise), _scheduler_run(SkippedStepScheduler(), 4, noise))
    assert told_later.effective_extrapolation_gain == default_extrapolation_gain(4)
    strong = SkippedStepScheduler()
    strong.set_guidance_scale(8.0)
    assert torch.equal(_scheduler_run(strong, 10, noise),
                       _scheduler_run(SkippedStepScheduler(guidance_scale=8.0), 10, noise))
    with pytest.raises(ValueError, match="guidance_scale must be None"):
        strong.set_guidance_scale(-1.0)
