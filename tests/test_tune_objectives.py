"""skipstep tune's objectives (by hand), its converged-solution cache, the gap rule (no wasted steps), the final
check against every plain spacing (a file only when the tuned schedule wins; otherwise nothing and exit 4), and the
guidance scale a schedule records."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch

import skipstep.lab.tune_search as tune_search
from skipstep.lab import cli
from skipstep.lab.bench import BenchConfig, run_bench
from skipstep.lab.models import load_gmm, load_model, register_model
from skipstep.lab.sampler_registry import CallCounter
from skipstep.lab.tune import tune_schedule
from skipstep.lab.tune_check import NO_IMPROVEMENT_EXIT, check_rows, decision_line
from skipstep.lab.tune_objectives import (DistributionObjective, PairedObjective, default_objective,
                                          default_reference, mixes_scores, ode_cache_dir, ode_solution,
                                          paired_distance)
from skipstep.lab.tune_search import (BaseSampler, CommonNoise, GapRule, Search, coordinate_stage, draw_samples,
                                      plain_spacings)
from skipstep.paths import DiscreteVPPath
from skipstep.timesteps import select_timesteps
from skipstep.tuned_schedules import TunedSchedule, TunedScheduleWarning, load_schedule
from tiny_dirs import conditional_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gmm(device="cpu"):
    spec = load_gmm(device=device, num_means=5)
    spec.name = "tune-obj-gmm"
    return spec


register_model("tune-obj-gmm", _gmm, "5-mode digits mixture (tune objective tests)")


# ----------------------------------------------------------------------------------------------------------------
# the objectives, by hand
# ----------------------------------------------------------------------------------------------------------------
def test_paired_distance_is_the_mean_per_sample_rms_by_hand():
    target = torch.zeros(2, 1, 2, 2)
    samples = torch.zeros(2, 1, 2, 2)
    samples[0] = 1.0  # RMS over its 4 pixels: 1
    samples[1, 0, 0, 0] = 3.0  # RMS: sqrt(9 / 4) = 1.5
    assert paired_distance(samples, target) == pytest.approx((1.0 + 1.5) / 2, abs=1e-12)  # not the MSE, 13/8
    objective = PairedObjective({7: target, 8: samples})
    assert objective(samples, CommonNoise(7, 2, (1, 2, 2))) == pytest.approx(1.25)
    assert objective(samples, CommonNoise(8, 2, (1, 2, 2))) == 0.0  # each seed against its own solution
    samples[1, 0, 1, 1] = float("nan")
    assert paired_distance(samples, target) == math.inf
    with pytest.raises(ValueError, match="shape"):
        paired_distance(samples[:1], target)


def test_pixel_frechet_distance_by_hand():
    gmm = _gmm()
    # 1-D: FD = (mu_a - mu_b)^2 + (s_a - s_b)^2; a = {-1, 1}: mean 0, variance 2; b = {2, 4}: mean 3, variance 2
    a = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1)
    b = torch.tensor([2.0, 4.0]).reshape(2, 1, 1, 1)
    assert DistributionObjective("pixel-fd", gmm, b)(a) == pytest.approx(9.0, abs=1e-9)
    c = torch.tensor([3.0 - 2.0, 3.0 + 2.0]).reshape(2, 1, 1, 1)  # mean 3, variance 8: (sqrt 8 - sqrt 2)^2 = 2
    assert DistributionObjective("pixel-fd", gmm, b)(c) == pytest.approx(2.0, abs=1e-9)


def test_converged_solution_is_the_fine_ode_and_is_cached(tmp_path):
    gmm = _gmm()
    counter = CallCounter(gmm.model)
    spec = dataclasses.replace(gmm, model=counter)
    x, meta = ode_solution(spec, 5, 12, 60, 12, root=tmp_path)
    assert counter.calls == 60 and meta["steps"] == 60 and meta["seed"] == 5
    path = DiscreteVPPath.from_config(gmm.scheduler_config)
    ts = select_timesteps(path, 60, "trailing").tolist()
    want = draw_samples(gmm, None, ts, [0.0] * 60, BaseSampler("x", 0.0, 2, "small"), CommonNoise(5, 12, (1, 8, 8)),
                        12)
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    again, _ = ode_solution(spec, 5, 12, 60, 12, root=tmp_path)
    assert counter.calls == 60 and torch.equal(again, x)  # read from the cache: no model call
    folder = ode_cache_dir(spec, 5, 12, 60, 12, tmp_path)
    data = folder / "solution.safetensors"
    data.write_bytes(data.read_bytes()[:-8] + b"garbage!")  # damaged: drawn again, not trusted
    third, _ = ode_solution(spec, 5, 12, 60, 12, root=tmp_path)
    assert counter.calls == 120 and torch.equal(third, x)


# ----------------------------------------------------------------------------------------------------------------
# no wasted steps
# ----------------------------------------------------------------------------------------------------------------
def test_gap_rule_refuses_near_duplicate_steps():
    path = DiscreteVPPath.from_config({})
    rule = GapRule(path, 10, 0.1)
    trailing = select_timesteps(path, 10, "trailing").tolist()
    assert rule.ok(trailing) and rule.ok(select_timesteps(path, 10, "log_snr").tolist())
    assert not rule.ok([899, 898] + trailing[2:])  # the wasted step of the issue
    assert not rule.ok([899, 899] + trailing[2:]) and not rule.ok(trailing[::-1])
    assert GapRule(path, 10, 0.0).ok([899, 898] + trailing[2:])
    # the window between two neighbours is exactly the set of timesteps that keep both gaps
    for above, below in ((999, 700), (600, 590), (300, 5), (None, 900), (40, None)):
        lo, hi = rule.window(above, below)
        for t in range(0, 1000):
            triple = [x for x in (above, t, below) if x is not None]
            assert rule.ok(triple) == (lo <= t <= hi), (above, below, t, lo, hi)
    with pytest.raises(ValueError, match="--min-gap must be a number in \\[0, 1\\]"):
        GapRule(path, 10, 1.5)


@pytest.mark.parametrize("min_gap", [0.0, 0.5])
def test_the_search_never_samples_a_candidate_that_breaks_the_gap_rule(monkeypatch, min_gap):
    """An objective that rewards closing the first gap (it wants 899, 898): with the rule the search stops at the
    smallest allowed gap and never samples a closer pair; without it (min_gap 0) it closes the gap to 1 step."""
    path = DiscreteVPPath.from_config({})
    rule = GapRule(path, 6, min_gap)
    sampled = []

    def fake_draw(loaded, counter, ts, eta, base, noise, batch_size, device):
        sampled.append(list(ts))
        return torch.tensor([float(t) for t in ts])

    monkeypatch.setattr(tune_search, "draw_samples", fake_draw)
    search = Search(None, BaseSampler("x", 0.0), lambda x, nz: float(x[0] - x[1]), [CommonNoise(0, 2, (1,))], 2,
                    "cpu", None, 60.0, 0.0, lambda msg: None, gap_rule=rule)
    start = select_timesteps(path, 6, "log_snr").tolist()
    holder: dict = {}
    coordinate_stage(search, path, start, [0.0] * 6, False, holder)
    assert all(rule.ok(ts) for ts in sampled[1:]), [ts for ts in sampled if not rule.ok(ts)]
    best = holder["ts"]
    if min_gap == 0.0:
        assert best[0] - best[1] == 1
    else:
        assert rule.gaps(best)[0] >= rule.delta - 1e-9
        assert not rule.ok([best[0] - 1] + best[1:]) or not rule.ok([best[0], best[1] + 1] + best[2:])


def test_tuned_timesteps_keep_the_gap_rule(tmp_path):
    gmm = _gmm()
    s = tune_schedule(gmm, 5, "skipstep-ddim", num_samples=64, batch_size=64, budget_nfe=300, budget_minutes=10,
                      cache_dir=tmp_path, reference_steps=40, min_gap=0.3)
    rule = GapRule(DiscreteVPPath.from_config(gmm.scheduler_config), 5, 0.3)
    if s.provenance["objective"]["result_from"] in ("smooth family", "coordinate"):
        assert rule.ok(s.timesteps)
    assert s.provenance["gap_rule"]["min_log_snr_gap"] == pytest.approx(rule.delta)
    assert len(set(s.timesteps)) == 5


# ----------------------------------------------------------------------------------------------------------------
# the final check and what the CLI writes
# ----------------------------------------------------------------------------------------------------------------
def _tune_args(tmp_path, out, *extra):
    return ["tune", "--model", "tune-obj-gmm", "--nfe", "4", "--base", "skipstep-ddim-o2", "--num-samples", "128",
            "--batch-size", "128", "--reference-steps", "100", "--budget-minutes", "10", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out), "--no-progress", *extra]


def test_nothing_is_written_when_a_plain_spacing_wins(tmp_path, capsys):
    """A budget of one candidate: the search can only evaluate the first plain spacing (trailing), so the 'tuned'
    schedule is trailing itself, which cannot beat the best plain spacing (at best it ties, and a tie is no
    win)."""
    out = tmp_path / "s.json"
    # one candidate: NFE 4 x 1 batch x 1 fit seed, plus two validations of 4 on one validation seed: 12
    rc = cli.main(_tune_args(tmp_path, out, "--budget-nfe", "12"))
    text = capsys.readouterr().out
    assert rc == NO_IMPROVEMENT_EXIT == 4
    assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []
    last = text.strip().splitlines()[-1]
    assert last.startswith("no improvement: the plain spacing ") and "nothing written" in last
    assert "eval seeds 2,3" in last and re.search(r"\(\+\d+\.\d%\) on", last)
    assert "| tuned | eval 2,3 | 999,749,499,249 |" in text and "| trailing | eval 2,3 | 999,749,499,249 |" in text
    assert "| tuned | fit 0 |" in text  # every row names its seeds


def test_the_schedule_is_written_when_it_wins_on_the_eval_seeds(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc = cli.main(_tune_args(tmp_path, out, "--budget-nfe", "400", "--objective", "paired"))
    text = capsys.readouterr().out
    assert rc == 0, text
    s = load_schedule(out, model_fingerprint=load_model("tune-obj-gmm").fingerprint, nfe=4)
    check = s.provenance["final_check"]
    plain = [r["mean"] for r in check["rows"] if r["plain"]]
    assert check["tuned_wins"] and check["rows"][0]["mean"] < min(plain)
    assert text.strip().splitlines()[-2].startswith("tuned paired") and f"wrote {out}" in text
    assert s.guidance_scale is None and s.metric == "paired"


def test_the_decision_follows_the_check(monkeypatch):
    """The rule itself: a strict win (beyond round-off) over the best plain row writes; a tie or a loss does not."""
    import skipstep.lab.tune_check as tc

    path = DiscreteVPPath.from_config({})
    plain = plain_spacings(path, 4)
    rows = check_rows(plain, [900, 600, 300, 100], [0.0] * 4, [0.0] * 4)
    scores = {"tuned": 1.0, **{name: 2.0 for name in plain}}
    best = next(iter(plain))
    noise = [CommonNoise(2, 2, (1,))]
    for best_score, wins in ((1.5, True), (1.0, False), (0.9, False)):
        scores[best] = best_score
        monkeypatch.setattr(tc, "draw_samples", lambda loaded, c, ts, eta, *a: torch.tensor(ts, dtype=torch.float64))
        by_ts = {tuple(ts): scores[name] for name, (ts, _) in rows.items()}
        table = tc.final_check(None, rows, BaseSampler("x", 0.0), noise, lambda x, nz: by_ts[tuple(int(v) for v in x)],
                               "paired")
        assert table["tuned_wins"] is wins and table["best_plain"]["name"] == best
        assert decision_line(table).startswith("tuned" if wins else "no improvement")


# ----------------------------------------------------------------------------------------------------------------
# guidance
# ----------------------------------------------------------------------------------------------------------------
def test_the_guidance_scale_is_recorded_and_another_scale_warns(tmp_path):
    root = conditional_dir(tmp_path / "cond")
    loaded = load_model(str(root))
    s = tune_schedule(loaded, 2, "skipstep-ddim", num_samples=10, batch_size=10, budget_nfe=40, budget_minutes=5,
                      guidance_scale=2.0, cache_dir=tmp_path / "cache", reference_steps=20, objective="paired")
    assert s.guidance_scale == 2.0 and s.provenance["guidance_scale"] == 2.0
    assert s.to_dict()["guidance_scale"] == 2.0 and TunedSchedule.from_dict(s.to_dict()) == s
    assert "_w2" in str(next((tmp_path / "cache" / "tune-references").rglob("solution.json")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s.check_guidance(2.0) is None and s.check_guidance(None) is None
    with pytest.warns(TunedScheduleWarning, match="tuned at guidance scale 2 and is used at 3"):
        s.check_guidance(3.0)
    path = s.save(tmp_path / "s.json")
    with pytest.warns(TunedScheduleWarning, match="tuned at guidance scale 2 and runs at 3"):
        run_bench(BenchConfig(model=str(root), samplers=[f"tuned:{path}"], nfes=[2], seeds=[0], num_samples=10,
                              batch_size=10, guidance_scales=[3.0], out=tmp_path / "b", progress=False), log=None)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["sampler_settings"][f"tuned:{path}"]["tuned_guidance_scale"] == 2.0  # recorded
    # the labels of the converged solutions are balanced as the bench's: sample i asks for label i mod 10
    assert np.array_equal(loaded.labels_for(range(10)).numpy(), np.arange(10))


def test_guidance_that_mixes_two_scores_defaults_to_the_distribution_objective_against_ancestral_samples():
    """w not in {0, 1} mixes the conditional and unconditional scores: the guided ODE ends at another distribution
    than the guided ancestral chain, so a deterministic base is scored by pixel-fd against ancestral samples."""
    assert [mixes_scores(w) for w in (None, 0.0, 1.0, 0.5, 2.0, 4)] == [False, False, False, True, True, True]
    assert (default_objective(True), default_reference(True)) == ("paired", "ode")
    assert (default_objective(False), default_reference(False)) == ("pixel-fd", "ancestral")
    assert (default_objective(True, guided=True), default_reference(True, guided=True)) == ("pixel-fd", "ancestral")


@pytest.mark.parametrize("scale, metric, source", [(1.0, "paired", "deterministic"), (2.0, "pixel-fd", "ancestral")])
def test_a_guided_deterministic_base_is_tuned_against_ancestral_samples(tmp_path, scale, metric, source):
    root = conditional_dir(tmp_path / "cond")
    s = tune_schedule(load_model(str(root)), 2, "skipstep-ddim", num_samples=10, batch_size=10, budget_nfe=40,
                      budget_minutes=5, guidance_scale=scale, cache_dir=tmp_path / "cache", reference_steps=20)
    assert s.metric == metric and s.guidance_scale == scale
    assert source in s.provenance["final_check"]["reference"]["source"]
    # a distribution objective may search the eta; the paired one keeps the deterministic base's
    assert metric != "paired" or all(e == 0 for e in s.eta)


def test_a_searched_eta_first_tries_the_best_plain_spacing_at_each_constant_eta(tmp_path):
    """Stage 1b: with the eta searched, the best plain spacing is scored at every constant eta of ETA_LEVELS
    other than its own (here 0.5 and 1 for a deterministic base), before the ramp search; with the paired objective
    (eta fixed) there is no such stage."""
    root = conditional_dir(tmp_path / "cond")
    loaded = load_model(str(root))
    common = dict(num_samples=10, batch_size=10, budget_nfe=60, budget_minutes=5, cache_dir=tmp_path / "cache",
                  reference_steps=20)
    s = tune_schedule(loaded, 3, "skipstep-ddim", objective="pixel-fd", reference="ancestral", **common)
    stages = {st["stage"]: st for st in s.provenance["search"]["stages"]}
    assert list(stages)[:2] == ["plain spacings", "eta levels"]
    assert stages["eta levels"]["candidates"] == len([e for e in tune_search.ETA_LEVELS if e != 0.0])
    assert stages["eta levels"]["decision"]
    p = tune_schedule(loaded, 3, "skipstep-ddim", objective="paired", **common)
    assert "eta levels" not in [st["stage"] for st in p.provenance["search"]["stages"]]


# ----------------------------------------------------------------------------------------------------------------
# the noise probe: a deterministic base's default objective
# ----------------------------------------------------------------------------------------------------------------
class _ScriptedObjective:
    """Returns the scripted values in call order (the probe scores eta 0, then eta 1, per seed)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, samples, noise=None):
        self.calls += 1
        return self.values.pop(0)


@pytest.mark.parametrize("values, noisy", [([1.0, 0.9, 2.0, 1.0], True), ([1.0, 0.85, 1.0, 0.95], False),
                                           ([1.0, 0.5, 1.0, 1.5], False)])
def test_the_noise_probe_calls_a_model_noisy_only_when_eta_1_wins_by_its_margin_on_every_seed(values, noisy):
    from skipstep.lab.tune_noise_probe import NOISE_PROBE_MIN_GAIN, noise_probe
    assert NOISE_PROBE_MIN_GAIN == 0.1
    objective = _ScriptedObjective(values)
    record = noise_probe(_gmm(), [900, 500, 200, 0], BaseSampler("p", 0.0, 2, "small"), objective, [0, 1], 16,
                         batch_size=16)
    assert objective.calls == 4 and record["noisy"] is noisy
    assert record["scores"]["0"] == {"eta 0": values[0], "eta 1": values[1]}
    assert record["ratios"]["1"] == pytest.approx(values[3] / values[2])


def test_the_noise_probe_scores_the_pixel_fd_of_each_level_against_the_ancestral_set():
    from skipstep.lab.tune_noise_probe import noise_probe
    loaded, base, ts = _gmm(), BaseSampler("p", 0.0, 2, "small"), [900, 500, 200, 0]
    reference = loaded.reference.sample(64, seed=5)
    objective = DistributionObjective("pixel-fd", loaded, reference)
    record = noise_probe(loaded, ts, base, objective, [3], 32, batch_size=16)
    noise = CommonNoise(3, 32, loaded.sample_shape)
    by_hand = [objective(draw_samples(loaded, None, ts, [e] * 4, base, noise, batch_size=32)) for e in (0.0, 1.0)]
    assert [record["scores"]["3"][k] for k in ("eta 0", "eta 1")] == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize("min_gain, noisy", [(1.0, False), (-10.0, True)])
def test_a_deterministic_base_without_an_objective_is_tuned_as_the_noise_probe_says(tmp_path, monkeypatch,
                                                                                     min_gain, noisy):
    """No --objective: the probe decides -- paired (eta 0 kept) for a quiet model, pixel-fd against the ancestral
    set with the eta searched for a noisy one; an objective given skips the probe."""
    import skipstep.lab.tune_noise_probe as probe_module
    monkeypatch.setattr(probe_module, "NOISE_PROBE_MIN_GAIN", min_gain)  # forces either verdict
    common = dict(num_samples=32, batch_size=32, budget_nfe=120, budget_minutes=5, cache_dir=tmp_path / "cache",
                  reference_steps=20)
    s = tune_schedule(load_model("tune-obj-gmm"), 3, "skipstep-ddim", **common)
    obj = s.provenance["objective"]
    assert obj["noise_probe"]["noisy"] is noisy and set(obj["noise_probe"]["scores"]) == {"0", "1"}
    assert s.metric == obj["name"] == ("pixel-fd" if noisy else "paired") and obj["eta_searched"] is noisy
    stages = [st["stage"] for st in s.provenance["search"]["stages"]]
    assert ("eta levels" in stages) is noisy
    assert ("exact data" if noisy else "deterministic") in s.provenance["final_check"]["reference"]["source"]
    given = tune_schedule(load_model("tune-obj-gmm"), 3, "skipstep-ddim", objective="paired", **common)
    assert given.provenance["objective"]["noise_probe"] is None and given.metric == "paired"
