"""Tuned schedules that cannot be checked are refused: no model fingerprint (bench, generate), unknown keys (a
typo would silently fall back to a default); and what a bare ``tuned:NAME`` means is unambiguous."""

from __future__ import annotations

import json
import os

import pytest

from skipstep.lab import cli
from skipstep.lab.bench import BenchConfig, run_bench
from skipstep.lab.generate import GenerateConfig, generate
from skipstep.lab.models import load_model
from skipstep.lab.sampler_registry import SamplerError, get_sampler
from skipstep.tuned_schedules import (TUNED_SCHEDULES_DIR, TunedSchedule, TunedScheduleError, load_tuned_schedule,
                                      resolve_tuned_schedule_path)


def _schedule(**kw) -> dict:
    base = dict(timesteps=[900, 500], eta=[1.0, 1.0], nfe=2, num_train_timesteps=1000,
                model_fingerprint=load_model("gmm").fingerprint)
    return TunedSchedule(**{**base, **kw}).to_dict()


def test_a_tuned_schedule_without_fingerprint_is_refused_by_bench_and_generate(tmp_path):
    path = tmp_path / "anyone.json"
    path.write_text(json.dumps(_schedule(model_fingerprint=None)))
    with pytest.raises(SamplerError, match="records no model fingerprint \\(model_fingerprint: null\\)"):
        run_bench(BenchConfig(model="gmm", samplers=[f"tuned:{path}"], nfes=[2], seeds=[0], num_samples=6,
                              out=tmp_path / "b", progress=False), log=None)
    with pytest.raises(SamplerError, match="model_fingerprint: null"):
        generate(GenerateConfig(model="gmm", sampler=f"tuned:{path}", nfe=2, num_samples=4, seed=0,
                                out=tmp_path / "g", progress=False), log=None)
    assert not (tmp_path / "b").exists() and not (tmp_path / "g").exists()


def test_unknown_keys_in_a_tuned_schedule_are_refused():
    with pytest.raises(TunedScheduleError, match="unknown key\\(s\\) 'solver_ordr' \\(did you mean 'solver_order'\\?\\)"):
        TunedSchedule.from_dict({**_schedule(), "solver_ordr": 2})
    with pytest.raises(TunedScheduleError, match="'colour'"):
        TunedSchedule.from_dict({**_schedule(), "colour": "red"})


@pytest.fixture
def in_tmp_dir(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_a_bare_name_is_the_shipped_schedule_and_an_ambiguous_one_is_refused(in_tmp_dir, capsys):
    shipped = TUNED_SCHEDULES_DIR / "digits-nfe10.json"
    assert resolve_tuned_schedule_path("digits-nfe10") == shipped
    # the user writes a file of the same name: the bare name no longer silently means the shipped one
    (in_tmp_dir / "digits-nfe10.json").write_text(json.dumps(_schedule()))
    with pytest.raises(TunedScheduleError, match=r"'digits-nfe10' is ambiguous: the shipped schedule .*"
                                                 r"digits-nfe10.json and the file ./digits-nfe10.json"):
        resolve_tuned_schedule_path("digits-nfe10")
    with pytest.raises(SamplerError, match="ambiguous"):
        get_sampler("tuned:digits-nfe10")
    # a .json suffix or a folder makes it a path
    for name in ("digits-nfe10.json", "./digits-nfe10.json"):
        assert resolve_tuned_schedule_path(name).resolve() == (in_tmp_dir / "digits-nfe10.json").resolve()
        assert load_tuned_schedule(resolve_tuned_schedule_path(name)).nfe == 2
    assert cli.main(["sample", "--model", "gmm", "--sampler", "tuned:digits-nfe10", "--nfe", "10", "--out",
                     "x.png", "--no-progress"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    # a bare name that is not shipped is the local file
    (in_tmp_dir / "mine.json").write_text(json.dumps(_schedule()))
    assert resolve_tuned_schedule_path("mine") == in_tmp_dir.joinpath("mine.json").relative_to(in_tmp_dir)
