"""Tuned schedules for rectified-flow models: the file's ``path="flow"`` (model times ``1..T``, ``sigma = t / T``),
``SkippedStepFlowScheduler(tuned_schedule=...)``, ``sample()`` on a flow path, the search's flow grid and plain
spacings, ``skipstep tune`` on a flow model and ``tuned:FILE`` in the bench. The model is the exact velocity of
Gaussian data, so every route can be compared sample for sample."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from skipstep import SkippedStepFlowScheduler, SkippedStepScheduler, sample
from skipstep.gaussian_data import gaussian_data_x0
from skipstep.lab.bench import BenchConfig, run_bench
from skipstep.lab.loaded_model import LoadedModel
from skipstep.lab.models import register_model
from skipstep.lab.sampler_registry import SamplerError, get_sampler, sampler_refusal
from skipstep.lab.tune import tune_schedule
from skipstep.lab.tune_grids import (DEFAULT_RULE_LABEL, FlowGrid, default_rule_grid, flow_plain_spacings, reference_indices,
                                     schedule_timesteps, tune_grid)
from skipstep.lab.tune_search import BaseSampler, CommonNoise, GapRule, draw_samples, resolve_base
from skipstep.paths import RectifiedFlowPath
from skipstep.plan import eta_reads_log_snr
from skipstep.steps import DEFAULT_FLOW_ETA
from skipstep.tuned_schedules import TunedSchedule, TunedScheduleError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPE = (1, 4, 4)
T = 1000
CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": T, "shift": 3.0}
MEAN = torch.linspace(-0.6, 0.4, 16, dtype=torch.float64).reshape(SHAPE)
VAR = torch.linspace(0.02, 0.3, 16, dtype=torch.float64).reshape(SHAPE)


def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact velocity ``eps - x0`` of data ``N(MEAN, diag(VAR))`` on ``x = (1 - sigma) x0 + sigma eps``."""
    x0 = gaussian_data_x0(x.double(), 1.0 - sigma, sigma, MEAN, VAR)
    return ((x.double() - (1.0 - sigma) * x0) / sigma - x0).to(x.dtype)


def model_time_velocity(x, t):  # the diffusers convention: t = sigma * T
    sigma = float(t.reshape(-1)[0]) / T
    # the bench's 1000-step Euler reference ends with a zero-length step at sigma = 0, where any output does
    return velocity(x, sigma) if sigma > 0 else torch.zeros_like(x)


def _gauss_flow(device="cpu") -> LoadedModel:
    return LoadedModel("tune-flow-gauss", model_time_velocity, dict(CONFIG), SHAPE, "flow", "flowgauss01",
                       regime="flow")


register_model("tune-flow-gauss", _gauss_flow, "exact velocity of Gaussian data (flow tuning tests)")


def flow_schedule(**overrides) -> TunedSchedule:
    kw = dict(timesteps=[1000, 700, 420, 150], eta=[0.5, 0.0, 0.0, 0.0], nfe=4, num_train_timesteps=T,
              solver_order=2, use_corrector=True, model_fingerprint="flowgauss01", path="flow")
    kw.update(overrides)
    return TunedSchedule(**kw)


# ----------------------------------------------------------------------------------------------------------------
# the file
# ----------------------------------------------------------------------------------------------------------------
def test_a_flow_schedule_lists_model_times_and_round_trips(tmp_path):
    s = flow_schedule()
    assert s.sigmas == [1.0, 0.7, 0.42, 0.15]
    back = TunedSchedule.from_dict(s.to_dict())
    assert back.path == "flow" and back.sigmas == s.sigmas
    older = {k: v for k, v in flow_schedule(path="vp", timesteps=[900, 600, 300, 0]).to_dict().items() if k != "path"}
    assert TunedSchedule.from_dict(older).path == "vp"  # a file written before the key is a VP schedule
    with pytest.raises(TunedScheduleError, match=r"model times .* must lie in \[1, 1000\]"):
        flow_schedule(timesteps=[1000, 700, 420, 0])
    with pytest.raises(TunedScheduleError, match=r"must lie in \[1, 1000\]"):
        flow_schedule(timesteps=[1001, 700, 420, 10])
    with pytest.raises(TunedScheduleError, match=r"timesteps must lie in \[0, 999\]"):
        flow_schedule(path="vp")  # 1000 is past a VP chain's last timestep
    with pytest.raises(TunedScheduleError, match="variance_type is the posterior's"):
        flow_schedule(variance_type="large")
    with pytest.raises(TunedScheduleError, match="path must be one of vp, flow"):
        flow_schedule(path="ve")
    with pytest.raises(TunedScheduleError, match="sigmas are the noise levels of a flow schedule"):
        _ = flow_schedule(path="vp", timesteps=[900, 600, 300, 100]).sigmas


# ----------------------------------------------------------------------------------------------------------------
# the flow scheduler and sample()
# ----------------------------------------------------------------------------------------------------------------
def test_the_flow_scheduler_visits_the_tuned_sigmas_unshifted_and_takes_its_settings():
    s = flow_schedule()
    sched = SkippedStepFlowScheduler.from_config(CONFIG, tuned_schedule=s.to_dict())
    assert sched.config.solver_order == 2 and sched.config.use_corrector is True
    assert list(sched.config.eta) == s.eta
    sched.set_timesteps(4)
    torch.testing.assert_close(sched.sigmas, torch.tensor([1.0, 0.7, 0.42, 0.15, 0.0]))  # shift 3 not applied
    torch.testing.assert_close(sched.timesteps, torch.tensor([1000.0, 700.0, 420.0, 150.0]))
    assert sched.eta_schedule == s.eta
    again = SkippedStepFlowScheduler.from_config(sched.config)  # the saved config carries the schedule
    again.set_timesteps(4)
    torch.testing.assert_close(again.sigmas, sched.sigmas)
    with pytest.raises(TunedScheduleError, match="tuned for NFE=4, but NFE=5"):
        sched.set_timesteps(5)
    with pytest.raises(ValueError, match=r"sigmas= \(other than the tuned schedule's own.*refused while a tuned"):
        sched.set_timesteps(sigmas=[1.0, 0.5, 0.2, 0.1])
    sched.set_timesteps(4, sigmas=s.sigmas)  # what a pipeline that always passes sigmas (Flux) is given
    torch.testing.assert_close(sched.sigmas, torch.tensor([1.0, 0.7, 0.42, 0.15, 0.0]))
    with pytest.raises(ValueError, match="refused while a tuned schedule"):
        sched.set_timesteps(timesteps=[1000.0, 500.0, 200.0, 100.0])
    with pytest.raises(TunedScheduleError, match="solver_order=3"):
        SkippedStepFlowScheduler.from_config(CONFIG, tuned_schedule=s.to_dict(), solver_order=3)
    with pytest.raises(TunedScheduleError, match="eta=0.3"):
        SkippedStepFlowScheduler.from_config(CONFIG, tuned_schedule=s.to_dict(), eta=0.3)
    SkippedStepFlowScheduler.from_config(CONFIG, tuned_schedule=s.to_dict(), eta=DEFAULT_FLOW_ETA)  # the default


def test_a_schedule_is_refused_on_the_other_path_with_the_reason():
    vp = flow_schedule(path="vp", timesteps=[900, 600, 300, 100])
    with pytest.raises(TunedScheduleError, match="tuned for a discrete VP chain .* rectified-flow model"):
        SkippedStepFlowScheduler.from_config(CONFIG, tuned_schedule=vp.to_dict())
    with pytest.raises(TunedScheduleError, match="tuned for a rectified-flow model .* discrete VP chain"):
        SkippedStepScheduler.from_config({"num_train_timesteps": T}, tuned_schedule=flow_schedule().to_dict())
    with pytest.raises(TunedScheduleError, match="tuned for a rectified-flow model"):
        sample(lambda x, t: x, (2, *SHAPE), tuned_schedule=flow_schedule(), progress=False)
    with pytest.raises(TunedScheduleError, match="tuned for a discrete VP chain"):
        sample(lambda x, t: x, (2, *SHAPE), path=RectifiedFlowPath(), tuned_schedule=vp, progress=False)


def test_scheduler_sample_and_search_draw_the_same_flow_samples():
    """The scheduler's loop, ``sample()`` on a flow path and the search's sampling loop give the same samples from
    the same noise (an eta 0.5 first step included)."""
    s = flow_schedule()
    noise = CommonNoise(5, 6, SHAPE)
    sched = SkippedStepFlowScheduler.from_config(CONFIG, **s.scheduler_kwargs())
    sched.set_timesteps(4)
    y = noise.x_T.clone()
    for i, t in enumerate(sched.timesteps):
        y = sched.step(model_time_velocity(y, t.reshape(1).expand(6)), t, y, variance_noise=noise.step(i)).prev_sample
    loaded = _gauss_flow()
    grid = tune_grid(loaded)
    indices = [t - 1 for t in s.timesteps]
    assert schedule_timesteps(grid, indices) == s.timesteps
    base = BaseSampler("t", s.eta, 2, "small", use_corrector=True)
    x = draw_samples(loaded, None, indices, s.eta, base, noise, batch_size=4)
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    seen = []

    def sigma_velocity(x, t):  # sample() on a RectifiedFlowPath passes the path time, sigma
        seen.append(float(t[0]))
        return velocity(x, float(t[0]))

    sample(sigma_velocity, noise=noise.x_T.clone(), path=RectifiedFlowPath(t_min=1e-12, t_max=1.0),
           tuned_schedule=s, num_steps=None, prediction_type="flow", progress=False)
    assert seen == pytest.approx(s.sigmas)
    det = flow_schedule(eta=[0.0] * 4)
    z0 = sample(sigma_velocity, noise=noise.x_T.clone(), path=RectifiedFlowPath(t_min=1e-12, t_max=1.0),
                tuned_schedule=det, num_steps=None, prediction_type="flow", progress=False)
    x0 = draw_samples(loaded, None, indices, det.eta, BaseSampler("t", 0.0, 2, "small", use_corrector=True), noise,
                      batch_size=6)
    torch.testing.assert_close(z0, x0, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# the search's grid and spacings
# ----------------------------------------------------------------------------------------------------------------
def test_the_flow_grid_by_hand():
    grid = FlowGrid(T)
    assert (grid.t_min, grid.t_max) == (0, T - 1)
    s = 0.25
    assert float(grid.log_snr(249)) == pytest.approx(2 * np.log((1 - s) / s))
    assert float(grid.log_snr(T - 1)) == -np.inf  # sigma 1: pure noise
    assert grid.indices([1.0, 0.7004, 0.7, 0.0001]) == [999, 700, 699, 0]  # nearest, pushed apart, at least 0
    rule = GapRule(grid, 4, 0.1)
    assert rule.ok([999, 699, 419, 149]) and not rule.ok([999, 699, 698, 149])


def test_flow_plain_spacings_are_the_flow_schedulers_snapped_to_the_grid():
    grid = FlowGrid(T)
    plain = flow_plain_spacings(CONFIG, grid, 5)
    names = " / ".join(plain)
    for name in ("linspace (FlowMatchEuler)", "power p=1+2/n", "power, the default rule", "karras", "exponential"):
        assert name in names
    default = default_rule_grid(plain)
    assert any(DEFAULT_RULE_LABEL in name.split(" / ") and ts == default for name, ts in plain.items())
    sched = SkippedStepFlowScheduler.from_config(CONFIG)
    sched.set_timesteps(5)
    exact = sched.sigmas[:-1].double()
    assert default == grid.indices(exact.tolist())
    assert (grid.sigma(default) - exact).abs().max() <= 0.5 / T + 1e-9
    ref = reference_indices(_gauss_flow(), 200)
    assert len(ref) == 200 and all(b < a for a, b in zip(ref, ref[1:]))


def test_the_default_base_of_a_flow_model_has_the_flow_eta():
    assert resolve_base("default", flow=True).eta == DEFAULT_FLOW_ETA
    assert eta_reads_log_snr(DEFAULT_FLOW_ETA) and not eta_reads_log_snr(resolve_base("default").eta)
    assert not eta_reads_log_snr(0.5) and not eta_reads_log_snr("below:8:0:1") and eta_reads_log_snr("snr-window:-1:0")
    assert resolve_base("default").eta != DEFAULT_FLOW_ETA
    with pytest.raises(ValueError, match="posterior's"):
        resolve_base("default", variance_type="large", flow=True)


# ----------------------------------------------------------------------------------------------------------------
# skipstep tune and the bench
# ----------------------------------------------------------------------------------------------------------------
def test_tune_on_a_flow_model_writes_a_flow_schedule_the_bench_runs(tmp_path):
    loaded = _gauss_flow()
    s = tune_schedule(loaded, 4, "default", num_samples=32, batch_size=32, budget_nfe=300, cache_dir=tmp_path,
                      reference_steps=40)
    assert s.path == "flow" and s.num_train_timesteps == T and s.model_fingerprint == "flowgauss01"
    assert all(1 <= t <= T for t in s.timesteps) and s.eta == [0.0] * 4  # below 8 steps the default is the ODE
    check = s.provenance["final_check"]
    plain = [r for r in check["rows"] if r["plain"]]
    assert any("the default rule" in r["name"] for r in plain)
    assert all(all(1 <= t <= T for t in r["timesteps"]) for r in check["rows"])  # model times, not indices
    best = min(r["mean"] for r in plain)
    assert check["tuned"] <= best or not check["tuned_wins"]
    # the check's tuned row is what the flow scheduler samples from the written schedule
    path = s.save(tmp_path / "flow.json")
    name = f"tuned:{path}"
    recipe = get_sampler(name)
    assert recipe.settings["class"] == "SkippedStepFlowScheduler" and recipe.settings["path"] == "flow"
    assert sampler_refusal(recipe, loaded) is None
    vp = LoadedModel("vp", lambda x, t: x, {"num_train_timesteps": T}, SHAPE, "epsilon", "vp0")
    assert "for a rectified-flow model" in sampler_refusal(recipe, vp)
    result = run_bench(BenchConfig(model="tune-flow-gauss", samplers=[name], nfes=[4], seeds=[0], num_samples=8,
                                   out=tmp_path / "bench", progress=False), log=None)
    (record,) = result.records
    assert record["actual_nfe"] == 4
    assert record["timesteps"] == pytest.approx([float(t) for t in s.timesteps])


def test_tune_refuses_what_a_flow_model_cannot_take(tmp_path):
    with pytest.raises(ValueError, match="posterior's"):
        tune_schedule(_gauss_flow(), 4, "default", variance_type="large", budget_nfe=300, cache_dir=tmp_path)
    with pytest.raises(SamplerError):
        get_sampler("tuned:")


def test_the_flow_defaults_noise_window_is_resolved_where_each_schedule_puts_its_steps(tmp_path):
    """From 8 steps the flow default injects noise while sigma >= 1/2 (an snr-window eta): the search and the
    check give every schedule the eta the scheduler gives it on its own sigmas."""
    loaded = _gauss_flow()
    s = tune_schedule(loaded, 8, "default", num_samples=32, batch_size=32, budget_nfe=2000, cache_dir=tmp_path,
                      num_reference=32, search_eta=False)
    rows = {r["name"]: r for r in s.provenance["final_check"]["rows"]}
    sched = SkippedStepFlowScheduler.from_config(CONFIG)
    sched.set_timesteps(8)
    default = next(r for name, r in rows.items() if "the default rule" in name)
    assert default["eta"] == sched.eta_schedule and 0 < sum(default["eta"]) < 8
    for r in rows.values():  # eta 1 exactly on the steps that start at sigma >= 1/2
        assert r["eta"][:-1] == [1.0 if t >= T / 2 else 0.0 for t in r["timesteps"][:-1]]


def test_the_tune_command_on_a_flow_model(tmp_path, capsys):
    """``skipstep tune`` end to end on a flow model: the table lists model times, the file loads into the flow
    scheduler, which visits exactly those sigmas."""
    from skipstep.lab import cli
    from skipstep.tuned_schedules import load_tuned_schedule

    out = tmp_path / "f.json"
    rc = cli.main(["tune", "--model", "tune-flow-gauss", "--nfe", "4", "--base", "default", "--num-samples", "16",
                   "--batch-size", "16", "--budget-nfe", "400", "--reference-steps", "40", "--cache-dir",
                   str(tmp_path / "cache"), "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text  # on exactly Gaussian data the search finds a far better grid than any plain one
    assert "the default rule" in text and "| karras |" in text and "| linspace (FlowMatchEuler) |" in text
    s = load_tuned_schedule(out, model_fingerprint="flowgauss01", nfe=4)
    assert s.path == "flow" and f"tuned timesteps: {s.timesteps}" in text
    sched = SkippedStepFlowScheduler.from_config(CONFIG, **s.scheduler_kwargs())
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [float(t) for t in s.timesteps]
