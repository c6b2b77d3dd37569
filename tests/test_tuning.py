"""Tuned step schedules: the file (round trip, validation, refusals), the scheduler / sample() / bench integration,
and the search (budget refusals before any work, never worse than its best starting spacing). The objectives, the
gap rule and the final check: tests/test_tune_objectives.py."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import skipstep
from diffusers.utils.torch_utils import randn_tensor

from skipstep import DEFAULT_SOLVER_ORDER, SkippedStepScheduler, sample
from skipstep.lab.bench import BenchConfig, run_bench
from skipstep.lab.models import load_gmm, load_model, register_model
from skipstep.lab.sampler_registry import CallCounter, SamplerError, get_sampler, steps_for_nfe
from skipstep.paths import DiscreteVPPath
from skipstep.timesteps import select_timesteps
from skipstep.lab.tune import tune_schedule
from skipstep.lab.tune_objectives import DistributionObjective, ancestral_reference, ode_solution
from skipstep.lab.tune_search import (
    BaseSampler,
    CommonNoise,
    SpacingParams,
    draw_samples,
    family_timesteps,
    plain_spacings,
    resolve_base,
)
from skipstep.tuned_schedules import TUNED_SCHEDULES_DIR as SCHEDULES_DIR
from skipstep.tuned_schedules import TunedSchedule, TunedScheduleError, load_schedule

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tune_gmm(device="cpu"):
    spec = load_gmm(device=device, num_means=5)
    spec.name = "tune-gmm"
    return spec


register_model("tune-gmm", _tune_gmm, "5-mode digits mixture (tuning tests)")


@pytest.fixture(scope="module")
def gmm():
    return _tune_gmm()


def make_schedule(**overrides) -> TunedSchedule:
    kw = dict(timesteps=[900, 600, 300, 100], eta=[1.0, 0.0, 0.5, 0.0], nfe=4, num_train_timesteps=1000,
              solver_order=2, variance_type="small", model_fingerprint="abc123", metric="fd", fit_seeds=[0],
              provenance={"model": "gmm", "num_samples": 16, "objective": {"tuned": 1.5}})
    kw.update(overrides)
    return TunedSchedule(**kw)


def contradicting_order(schedule: TunedSchedule) -> int:
    """A solver order that is neither the schedule's nor the library default (an explicit default is not told
    apart from an omitted one)."""
    return next(o for o in (3, 1, 2) if o not in (schedule.solver_order, DEFAULT_SOLVER_ORDER))


def counted(spec):
    counter = CallCounter(spec.model)
    return dataclasses.replace(spec, model=counter), counter


# ----------------------------------------------------------------------------------------------------------------
# the file
# ----------------------------------------------------------------------------------------------------------------
def test_file_round_trip(tmp_path):
    s = make_schedule()
    path = s.save(tmp_path / "s.json")
    loaded = load_schedule(path)
    assert loaded == s
    assert json.loads(path.read_text())["format"] == "skipstep-tuned-schedule"
    assert TunedSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_save_refuses_to_overwrite_without_the_flag(tmp_path):
    path = make_schedule().save(tmp_path / "s.json")
    other = make_schedule(eta=[0.0] * 4)
    with pytest.raises(TunedScheduleError, match=r"already exists.*overwrite"):
        other.save(path)
    assert load_schedule(path).eta == [1.0, 0.0, 0.5, 0.0]
    other.save(path, overwrite=True)
    assert load_schedule(path).eta == [0.0] * 4
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary files left behind


def test_load_refuses_another_model_T_or_nfe_with_the_reason(tmp_path):
    path = make_schedule().save(tmp_path / "s.json")
    with pytest.raises(TunedScheduleError, match=r"fingerprint abc123.*fingerprint is zzz.*not valid for another"):
        load_schedule(path, model_fingerprint="zzz")
    with pytest.raises(TunedScheduleError, match=r"T=1000 .*T=500"):
        load_schedule(path, num_train_timesteps=500)
    with pytest.raises(TunedScheduleError, match=r"tuned for NFE=4, but NFE=5 was asked"):
        load_schedule(path, nfe=5)
    assert load_schedule(path, model_fingerprint="abc123", num_train_timesteps=1000, nfe=4).nfe == 4


@pytest.mark.parametrize("content, reason", [
    ("{not json", "Expecting"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"format": "skipstep-tuned-schedule", "version": 1, "timesteps": [100, 600], "eta": [0, 0],
                 "nfe": 2, "num_train_timesteps": 1000}), "strictly descending"),
    (json.dumps({"format": "skipstep-tuned-schedule", "version": 1, "timesteps": [600, 100], "eta": [0, 1.5],
                 "nfe": 2, "num_train_timesteps": 1000}), r"eta\[1\] must lie in \[0, 1\]"),
    (json.dumps({"format": "skipstep-tuned-schedule", "version": 1, "timesteps": [600, 100], "eta": [0, 0],
                 "nfe": 3, "num_train_timesteps": 1000}), "nfe"),
    (json.dumps({"format": "skipstep-tuned-schedule", "version": 1, "timesteps": [600, 100]}), "missing eta"),
    (json.dumps({"format": "something-else", "timesteps": [1]}), "not a skipstep tuned schedule"),
])
def test_corrupt_file_names_the_file(tmp_path, content, reason):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(TunedScheduleError, match=reason) as exc:
        load_schedule(path)
    assert str(path) in str(exc.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(TunedScheduleError, match="not found.*nope.json"):
        load_schedule(tmp_path / "nope.json")


# ----------------------------------------------------------------------------------------------------------------
# the scheduler and sample()
# ----------------------------------------------------------------------------------------------------------------
def test_scheduler_config_round_trip(tmp_path):
    s = make_schedule()
    sched = SkippedStepScheduler(tuned_schedule=s.to_dict())
    # defaults are rewritten to the schedule's values, so the config tells the truth
    assert sched.config.solver_order == 2 and list(sched.config.eta) == s.eta
    sched.save_config(tmp_path)
    again = SkippedStepScheduler.from_pretrained(tmp_path)
    assert TunedSchedule.from_dict(again.config.tuned_schedule) == s
    for sc in (sched, again):
        sc.set_timesteps(4)
        assert sc.timesteps.tolist() == s.timesteps
        assert sc.eta_schedule == s.eta
    # a path or the object itself is stored as its dict
    path = s.save(tmp_path / "s.json")
    assert SkippedStepScheduler(tuned_schedule=str(path)).config.tuned_schedule == s.to_dict()
    assert SkippedStepScheduler.from_config(sched.config, **s.scheduler_kwargs()).config.solver_order == 2


def test_scheduler_kwargs_are_the_keys_the_scheduler_fixes():
    """``from_config(config, **schedule.scheduler_kwargs())`` and ``SkippedStepScheduler(tuned_schedule=...)`` agree
    on every key the schedule fixes, the learned variance included."""
    for variance_type, learned in (("small", False), ("learned", True)):
        s = make_schedule(variance_type=variance_type)
        kwargs = s.scheduler_kwargs()
        assert kwargs["use_learned_variance"] is learned
        assert kwargs["variance_type"] == {"small": "fixed_small", "learned": "learned_range"}[variance_type]
        sched = SkippedStepScheduler.from_config(SkippedStepScheduler().config, **kwargs)
        for key in ("eta", "solver_order", "variance_type", "use_corrector", "use_learned_variance"):
            assert sched.config[key] == kwargs[key], key
    # the caller's spelling of the schedule's variance type stays in the config
    s = make_schedule()
    assert SkippedStepScheduler(variance_type="fixed_small_log", tuned_schedule=s.to_dict()).config.variance_type == \
        "fixed_small_log"


def test_scheduler_refuses_what_contradicts_the_schedule():
    s = make_schedule()
    sched = SkippedStepScheduler(tuned_schedule=s.to_dict())
    with pytest.raises(TunedScheduleError, match="tuned for NFE=4, but NFE=10"):
        sched.set_timesteps(10)
    with pytest.raises(TunedScheduleError, match="explicit timesteps are refused"):
        sched.set_timesteps(timesteps=[900, 100])
    with pytest.raises(TunedScheduleError, match=r"T=1000 .*T=500"):
        SkippedStepScheduler(num_train_timesteps=500, tuned_schedule=s.to_dict())
    other = contradicting_order(s)
    with pytest.raises(TunedScheduleError, match=rf"solver_order={other} \(the schedule's is 2\)"):
        SkippedStepScheduler(solver_order=other, tuned_schedule=s.to_dict())
    with pytest.raises(TunedScheduleError, match=r"eta=0.3"):
        SkippedStepScheduler(eta=0.3, tuned_schedule=s.to_dict())
    with pytest.raises(TunedScheduleError, match=r"variance_type='fixed_large'"):
        SkippedStepScheduler(variance_type="fixed_large", tuned_schedule=s.to_dict())
    # the schedule's own values are fine
    SkippedStepScheduler(eta=s.eta, solver_order=2, tuned_schedule=s.to_dict()).set_timesteps(4)


def test_scheduler_and_sample_give_the_same_samples(gmm, tmp_path):
    s = make_schedule(model_fingerprint=gmm.fingerprint)
    path = s.save(tmp_path / "s.json")
    shape = (6, *gmm.sample_shape)
    ref = sample(gmm.model, shape, tuned_schedule=s, generator=torch.Generator().manual_seed(0), progress=False)
    from_file = sample(gmm.model, shape, tuned_schedule=str(path), generator=torch.Generator().manual_seed(0),
                       progress=False)
    sched = SkippedStepScheduler.from_config(gmm.scheduler_config, **s.scheduler_kwargs())
    g = torch.Generator().manual_seed(0)
    x = randn_tensor(shape, generator=g)
    sched.set_timesteps(4)
    for t in sched.timesteps:
        x = sched.step(gmm.model(x, t.reshape(1).expand(shape[0])), t, x, generator=g).prev_sample
    torch.testing.assert_close(ref, from_file, rtol=0, atol=0)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    with pytest.raises(TunedScheduleError, match="either timesteps or a tuned schedule"):
        sample(gmm.model, shape, tuned_schedule=s, timesteps=[900, 100], progress=False)
    other = contradicting_order(s)
    with pytest.raises(TunedScheduleError, match=f"solver_order={other}"):
        sample(gmm.model, shape, tuned_schedule=s, solver_order=other, progress=False)
    with pytest.raises(TunedScheduleError, match="NFE=7"):
        sample(gmm.model, shape, tuned_schedule=s, num_steps=7, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_corrector", [False, True])
def test_a_tuned_schedule_runs_with_its_own_corrector_setting_on_every_route(gmm, use_corrector):
    """The schedule fixes the corrector as it was tuned (a file without the key: off), whatever the library
    default is: the scheduler, its from_config kwargs and sample() all run it that way."""
    s = make_schedule(model_fingerprint=gmm.fingerprint, use_corrector=use_corrector)
    assert SkippedStepScheduler(tuned_schedule=s).config.use_corrector is use_corrector
    assert SkippedStepScheduler(use_corrector=not use_corrector,
                                tuned_schedule=s).config.use_corrector is use_corrector
    sched = SkippedStepScheduler.from_config(gmm.scheduler_config, **s.scheduler_kwargs())
    assert sched.config.use_corrector is use_corrector
    path = DiscreteVPPath.from_config(gmm.scheduler_config)
    g = torch.Generator().manual_seed(0)
    tuned = skipstep.sample(gmm.model, (2, *gmm.sample_shape), path=path, tuned_schedule=s, generator=g,
                            progress=False)
    g = torch.Generator().manual_seed(0)
    plain = skipstep.sample(gmm.model, (2, *gmm.sample_shape), path=path, timesteps=s.timesteps, eta=list(s.eta),
                            solver_order=s.solver_order, variance_type=s.variance_type,
                            use_corrector=use_corrector, extrapolation_gain=s.extrapolation_gain, generator=g,
                            progress=False)
    torch.testing.assert_close(tuned, plain, rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    other = skipstep.sample(gmm.model, (2, *gmm.sample_shape), path=path, timesteps=s.timesteps, eta=list(s.eta),
                            solver_order=s.solver_order, variance_type=s.variance_type,
                            use_corrector=not use_corrector, extrapolation_gain=s.extrapolation_gain, generator=g,
                            progress=False)
    assert not torch.equal(tuned, other)  # the setting matters on this schedule


def test_a_schedule_file_without_the_corrector_key_runs_without_it(gmm):
    data = make_schedule(model_fingerprint=gmm.fingerprint, use_corrector=True).to_dict()
    assert data["use_corrector"] is True
    assert TunedSchedule.from_dict(data).use_corrector is True
    del data["use_corrector"]  # a file written before the key existed
    assert TunedSchedule.from_dict(data).use_corrector is False
    with pytest.raises(TunedScheduleError, match="use_corrector must be true or false"):
        make_schedule(use_corrector=1)


@pytest.mark.parametrize("use_corrector", [False, True])
def test_the_search_scores_what_the_scheduler_samples(gmm, use_corrector):
    """The search's sampling loop (common random numbers) is the scheduler's step, noise for noise, with and
    without the corrector (eta 1 and 0.5 steps included), at the schedule's extrapolation gain, and the corrector
    setting changes the samples."""
    s = make_schedule(model_fingerprint=gmm.fingerprint, use_corrector=use_corrector,
                      extrapolation_gain=1.5 if use_corrector else 1.0)
    noise = CommonNoise(3, 5, gmm.sample_shape)
    base = BaseSampler("t", s.eta, 2, "small", use_corrector=use_corrector, extrapolation_gain=s.extrapolation_gain)
    x = draw_samples(gmm, gmm.model, s.timesteps, s.eta, base, noise, batch_size=3)
    sched = SkippedStepScheduler.from_config(gmm.scheduler_config, **s.scheduler_kwargs())
    sched.set_timesteps(4)
    y = noise.x_T.clone()
    for i, t in enumerate(sched.timesteps):
        y = sched.step(gmm.model(y, t.reshape(1).expand(5)), t, y, variance_noise=noise.step(i)).prev_sample
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    other = draw_samples(gmm, gmm.model, s.timesteps, s.eta, dataclasses.replace(base, use_corrector=not use_corrector),
                         noise, batch_size=3)
    assert (x - other).abs().max() > 1e-3


def test_the_default_base_is_tuned_with_its_corrector(gmm, tmp_path):
    assert resolve_base("default").use_corrector is skipstep.DEFAULT_USE_CORRECTOR is True
    assert resolve_base("skipstep-ddim-o2").use_corrector is False
    assert resolve_base("default", use_corrector=False).use_corrector is False
    with pytest.raises(ValueError, match="use_corrector must be True or False"):
        resolve_base("default", use_corrector="on")
    s = tune_schedule(gmm, 3, "default", num_samples=32, batch_size=32, budget_nfe=200, cache_dir=tmp_path,
                      reference_steps=30, objective="paired")
    assert s.use_corrector is True and s.provenance["base"]["use_corrector"] is True
    assert s.extrapolation_gain == skipstep.plan.default_extrapolation_gain(3) > 1  # the default's rule, written
    # the check's tuned row is what the scheduler samples from the written schedule, corrector included
    row = s.provenance["final_check"]["rows"][0]
    assert row["name"] == "tuned"
    target, _ = ode_solution(gmm, s.provenance["final_check"]["seeds"][0], 32, 30, 32, root=tmp_path)
    noise = CommonNoise(s.provenance["final_check"]["seeds"][0], 32, gmm.sample_shape)
    x = draw_samples(gmm, gmm.model, s.timesteps, s.eta, resolve_base("default"), noise, batch_size=32)
    d = float(((x - target) ** 2).flatten(1).mean(1).sqrt().mean())
    assert row["values"][0] == pytest.approx(d, rel=1e-6)


def test_family_contains_the_library_spacings():
    path = DiscreteVPPath.from_config({})
    n = 8
    trailing = select_timesteps(path, n, "trailing").tolist()
    assert family_timesteps(path, n, SpacingParams(0.0, 1.0, trailing[0], trailing[-1])) == trailing
    quad = select_timesteps(path, n, "quadratic").tolist()
    got = family_timesteps(path, n, SpacingParams(0.0, 2.0, quad[0], quad[-1]))
    assert max(abs(a - b) for a, b in zip(got, quad)) <= 1
    logsnr = select_timesteps(path, n, "log_snr").tolist()
    got = family_timesteps(path, n, SpacingParams(1.0, 1.0, 999, 0))
    assert max(abs(a - b) for a, b in zip(got, logsnr)) <= 1


def test_too_small_budget_is_refused_before_any_model_call(gmm, tmp_path):
    spec, counter = counted(gmm)
    # one candidate: 3 steps x 2 batches x 1 fit seed = 6 NFE, plus two validations on 1 seed kept in reserve: 18
    for budget in (5, 12):
        with pytest.raises(ValueError, match=rf"--budget-nfe {budget} cannot pay for one candidate: it needs at "
                                             r"least 18 NFE \(a candidate costs 6"):
            tune_schedule(spec, 3, "skipstep-ddim", num_samples=40, batch_size=20, budget_nfe=budget,
                          cache_dir=tmp_path)
    assert counter.calls == 0
    with pytest.raises(ValueError, match=r"--budget-minutes 1e-09 cannot pay for one candidate"):
        tune_schedule(spec, 3, "skipstep-ddim", num_samples=40, batch_size=20, budget_nfe=100,
                      budget_minutes=1e-9, cache_dir=tmp_path)
    assert counter.calls == 2  # the warm-up and the timed call of the estimate; no reference, no candidate
    assert not (tmp_path / "tune-references").exists() and not (tmp_path / "references").exists()
    with pytest.raises(ValueError, match="--eval-seeds must be held out"):
        tune_schedule(spec, 3, num_samples=40, fit_seeds=[0, 2], eval_seeds=[2], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="--val-seeds must be held out"):
        tune_schedule(spec, 3, num_samples=40, fit_seeds=[0, 1], cache_dir=tmp_path)
    assert counter.calls == 2


def test_search_is_never_worse_than_its_best_start_and_checks_every_plain_spacing(gmm, tmp_path):
    spec, counter = counted(gmm)
    s = tune_schedule(spec, 4, "skipstep-ddim-o2", num_samples=96, batch_size=96, budget_nfe=240,
                      budget_minutes=10, cache_dir=tmp_path, reference_steps=40, objective="paired")
    obj = s.provenance["objective"]
    assert obj["name"] == s.metric == "paired" and not obj["eta_searched"] and s.eta == [0.0] * 4
    assert obj["noise_probe"] is None  # an objective given: no probe
    # never worse than the best plain spacing on the fit seeds (its start)
    start = obj["best_start"]["name"]
    assert start == min(obj["starts"], key=obj["starts"].get) and obj["tuned"] <= obj["starts"][start]
    path = DiscreteVPPath.from_config(gmm.scheduler_config)
    assert set(obj["starts"]) == set(plain_spacings(path, 4))  # every plain spacing was a start
    budget = s.provenance["budget"]
    assert budget["nfe_used"] <= 240 and budget["stopped_by"] in ("NFE budget", "time budget", "converged")
    check = s.provenance["final_check"]
    plain = [r for r in check["rows"] if r["plain"]]
    assert {r["name"] for r in plain} == set(plain_spacings(path, 4))
    assert all(r["seeds"] == "eval 2,3" and len(r["values"]) == 2 for r in check["rows"])
    # 2 probe calls + 4 converged solutions (fit 0, val 1, eval 2, 3) x 40 steps + the search + 14 check rows x 2 seeds x NFE 4
    assert counter.calls == 2 + 4 * 40 + budget["nfe_used"] + (1 + len(plain)) * 2 * 4
    # common random numbers make the check reproducible: re-scoring the tuned schedule gives the recorded value
    base = resolve_base("skipstep-ddim-o2")
    target, _ = ode_solution(gmm, 3, 96, 40, 96, root=tmp_path)
    x = draw_samples(gmm, gmm.model, s.timesteps, s.eta, base, CommonNoise(3, 96, (1, 8, 8)), batch_size=96)
    d = float(((x - target) ** 2).flatten(1).mean(1).sqrt().mean())
    assert check["rows"][0]["name"] == "tuned" and check["rows"][0]["values"][1] == pytest.approx(d, rel=1e-6)
    assert check["tuned_wins"] == (check["tuned"] < min(r["mean"] for r in plain))


def test_distribution_objective_for_a_stochastic_base(gmm, tmp_path):
    spec = dataclasses.replace(gmm, feature_fn=None)
    s = tune_schedule(spec, 3, "skipstep-linear", num_samples=48, batch_size=48, budget_nfe=60, cache_dir=tmp_path,
                      reference_steps=30, reference="ode")
    assert s.metric == "pixel-fd" and s.provenance["objective"]["eta_searched"]
    assert s.provenance["reference"]["seed"] == 1_000_003  # independent of every sampler seed
    obj = s.provenance["objective"]
    assert obj["tuned"] <= obj["best_start"]["value"] <= min(obj["starts"].values()) + 1e-8
    reference, _ = ode_solution(spec, 1_000_003, 48, 30, 48, root=tmp_path)
    x = draw_samples(spec, spec.model, s.timesteps, s.eta, resolve_base("skipstep-linear"), CommonNoise(0, 48, (1, 8, 8)),
                     batch_size=48)
    assert DistributionObjective("pixel-fd", spec, reference)(x) == pytest.approx(s.provenance["objective"]["tuned"],
                                                                                rel=1e-6)
    # without --reference a stochastic base is scored against the bench's ancestral set (its samples' limit)
    a = tune_schedule(spec, 3, "skipstep-linear", num_samples=48, batch_size=48, budget_nfe=60, cache_dir=tmp_path)
    _, meta = ancestral_reference(spec, 48, directory=tmp_path)
    assert a.provenance["reference"]["source"] == meta["source"] != s.provenance["reference"]["source"]
    with pytest.raises(ValueError, match="--objective paired needs a deterministic base"):
        tune_schedule(spec, 3, "skipstep-linear", objective="paired", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="--objective fd needs the model's feature network"):
        tune_schedule(spec, 3, "skipstep-linear", objective="fd", cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# the bench and the CLI
# ----------------------------------------------------------------------------------------------------------------
def test_tuned_sampler_in_the_bench(gmm, tmp_path):
    path = make_schedule(model_fingerprint=gmm.fingerprint).save(tmp_path / "s.json")
    name = f"tuned:{path}"
    spec = get_sampler(name)
    assert steps_for_nfe(spec, 4, 1000) == (4, 4)
    with pytest.raises(SamplerError, match=r"NFE <= 4 .*exactly the NFE it was tuned for"):
        steps_for_nfe(spec, 5, 1000)
    with pytest.raises(SamplerError, match=r"NFE >= 4"):
        steps_for_nfe(spec, 3, 1000)
    with pytest.raises(SamplerError, match="not found.*missing.json"):
        get_sampler(f"tuned:{tmp_path / 'missing.json'}")
    out = tmp_path / "bench"
    result = run_bench(BenchConfig(model="tune-gmm", samplers=[name, "skipstep"], nfes=[4, 5], seeds=[0],
                                   num_samples=8, out=out, progress=False), log=None)
    tuned = [r for r in result.records if r["sampler"] == name]
    assert [(r["nfe"], r["actual_nfe"]) for r in tuned] == [(4, 4)]
    assert f"{name} @ NFE 5" in result.skipped
    for use_corrector in (False, True):  # the bench runs a schedule with its own corrector setting
        f = make_schedule(model_fingerprint=gmm.fingerprint, use_corrector=use_corrector).save(
            tmp_path / f"c{use_corrector}.json")
        recipe = get_sampler(f"tuned:{f}")
        assert recipe.settings["use_corrector"] is use_corrector
        assert recipe.factory(gmm.scheduler_config, 4).config.use_corrector is use_corrector
    other = make_schedule(model_fingerprint="0000").save(tmp_path / "other.json")
    with pytest.raises(SamplerError, match="fingerprint 0000"):
        run_bench(BenchConfig(model="tune-gmm", samplers=[f"tuned:{other}"], nfes=[4], seeds=[0], num_samples=8,
                              out=tmp_path / "bench2", progress=False), log=None)


def test_shipped_schedules_are_valid():
    files = sorted(SCHEDULES_DIR.glob("*.json"))
    if not files:
        pytest.skip("no shipped schedules")
    try:
        digits = load_model("digits")
    except Exception as err:  # noqa: BLE001 - the digits assets are optional here
        pytest.skip(f"digits model not available: {err}")
    for f in files:
        s = load_schedule(f)
        spec = get_sampler(f"tuned:{f.stem}")
        assert spec.max_nfe == s.nfe == len(s.timesteps)
        assert "heldout" in s.provenance and s.provenance["model"] == "digits"
        # a retrained digits model invalidates the shipped schedules: retune them (docs/tuning.md)
        assert s.model_fingerprint == digits.fingerprint, f"{f.name} was tuned for another digits model"
