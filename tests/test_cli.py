"""The ``skipstep`` command line: help for every subcommand, ``sample``, ``bench`` (resume), error messages."""

from __future__ import annotations

import json
import os

import pytest

from skipstep.lab import cli
from skipstep.lab.models import load_gmm, register_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny_gmm(device="cpu"):
    spec = load_gmm(device=device, num_means=5)
    spec.name = "tiny-gmm"
    return spec


register_model("tiny-gmm", _tiny_gmm, "5-mode digits mixture (tests)")


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_subcommands_are_registered_by_module():
    assert {"bench", "demo", "sample"} <= set(subcommands())
    for name in cli.SUBCOMMAND_MODULES:
        module = __import__(name, fromlist=["add_subcommand"])
        assert callable(module.add_subcommand)


@pytest.mark.parametrize("command", ["bench", "demo", "sample"])
def test_help_for_each_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: skipstep {command}" in out and "--out" in out


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("bench", "demo", "sample"):
        assert name in out
    assert cli.main([]) == 1  # no subcommand: help, status 1


def test_sample_writes_a_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = cli.main(["sample", "--model", "tiny-gmm", "--sampler", "skipstep", "--nfe", "3", "--num-samples", "6",
                   "--seed", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "NFE requested 3, counted 3" in text and str(out) in text


def test_errors_are_one_line_with_the_reason(tmp_path, capsys):
    png = str(tmp_path / "x.png")
    assert cli.main(["sample", "--model", "nope", "--out", png]) == 2
    assert "unknown model 'nope'; valid names:" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny-gmm", "--sampler", "nope", "--out", png]) == 2
    assert "valid samplers:" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny-gmm", "--sampler", "heun", "--nfe", "1", "--out", png]) == 2
    assert "needs NFE >= 2" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny-gmm", "--nfe", "1001", "--out", png]) == 2
    assert "exceeds the model's 1000 training timesteps" in capsys.readouterr().err
    assert cli.main(["sample", "--model", str(tmp_path / "missing-dir"), "--out", png]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_bench_command_resumes_and_refuses_other_configs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    args = ["bench", "--model", "tiny-gmm", "--samplers", "skipstep,ddim", "--nfe", "2,3", "--num-samples", "8",
            "--seed", "0", "--out", str(out), "--no-progress", "--batch-size", "8"]
    monkeypatch.setenv("SKIPSTEP_BENCH_STOP_AFTER", "1")
    assert cli.main(args) == 3
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.delenv("SKIPSTEP_BENCH_STOP_AFTER")
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "3 cells computed, 1 reused" in text and "| sampler | NFE 2 | NFE 3 | time vs DDIM |" in text
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 4
    other = [a if a != "8" else "6" for a in args]
    assert cli.main(other) == 2
    assert "different configuration" in capsys.readouterr().err
    assert cli.main(other + ["--overwrite"]) == 0


# ------------------------------------------------------------------------------------------------------------
# the command line itself: python -m skipstep, the sampler list, help texts, outputs
# ------------------------------------------------------------------------------------------------------------
def test_python_dash_m_skipstep_runs_and_lists_the_samplers():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "skipstep", "bench", "--samplers"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "skipstep-eta0.5-o2" in proc.stdout and "dpmpp-2m" in proc.stdout


def test_bench_samplers_alone_lists_every_sampler_with_its_meaning(capsys):
    from skipstep.lab.sampler_registry import available_samplers

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--samplers"])  # no --model needed to list them
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, description in available_samplers().items():
        assert any(line.split()[:1] == [name] and description in line for line in lines), name
    assert any(line.strip().startswith("tuned:FILE.json") for line in lines)


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_gives_every_option_a_meaning_and_only_real_defaults(capsys):
    for command, sub in _subparsers().items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 8, f"{command} {action.option_strings} has no help"
        text = sub.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, command
    order = next(a for a in _subparsers()["tune"]._actions if a.dest == "solver_order")
    assert "default 1" not in order.help and "the base sampler's own order" in order.help
    assert "--threads" in _subparsers()["generate"].format_help()


def test_generate_sets_the_torch_threads(tmp_path, monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    args = ["generate", "--model", "tiny-gmm", "--nfe", "2", "--num-samples", "2", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "a"), "--threads", "2"]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0  # default: 1, as bench
    assert seen == [2, 1]


def test_sample_refuses_to_replace_a_png_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"my picture")
    args = ["sample", "--model", "tiny-gmm", "--nfe", "2", "--num-samples", "2", "--out", str(out), "--no-progress"]
    assert cli.main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"my picture"
    assert cli.main(args + ["--overwrite"]) == 0 and out.read_bytes()[:4] == b"\x89PNG"


def test_tune_and_sample_check_their_outputs_before_any_work_and_print_before_writing(tmp_path, capsys,
                                                                                      monkeypatch):
    import skipstep.lab.demo as demo
    import skipstep.lab.tune as tune
    from skipstep.tuned_schedules import TunedSchedule

    tune_args = ["tune", "--model", "tiny-gmm", "--nfe", "3", "--base", "skipstep-ddim", "--num-samples", "16",
                 "--fit-seeds", "0", "--eval-seeds", "2", "--budget-nfe", "20", "--cache-dir", str(tmp_path / "c"),
                 "--no-progress"]
    # an output that cannot be written is refused before the model is even loaded
    real_load = tune.load_model
    monkeypatch.setattr(tune, "load_model", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "afile").write_text("x")  # --out inside a file: its folder cannot be created
    assert cli.main(tune_args + ["--out", str(tmp_path / "afile" / "s.json")]) == 2
    assert "--out" in capsys.readouterr().err
    monkeypatch.setattr(tune, "load_model", real_load)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "s.json")

    def tuned_wins(*args, **kwargs):  # the write path, whatever this tiny search found
        return {**real_check(*args, **kwargs), "tuned_wins": True}

    real_check = tune.final_check
    monkeypatch.setattr(tune, "final_check", tuned_wins)
    # a write that fails at the very end loses nothing: the schedule was printed, and is printed as JSON
    monkeypatch.setattr(TunedSchedule, "save", refuse)
    assert cli.main(tune_args + ["--out", str(tmp_path / "s.json")]) == 2
    captured = capsys.readouterr()
    assert "tuned timesteps:" in captured.out and '"format": "skipstep-tuned-schedule"' in captured.out
    assert captured.err.count("\n") == 1 and "--out" in captured.err and "printed above as JSON" in captured.err
    monkeypatch.setattr(demo, "save_grid", refuse)
    assert cli.main(["sample", "--model", "tiny-gmm", "--nfe", "2", "--num-samples", "2", "--out",
                     str(tmp_path / "g.png"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "values   min" in captured.out and "--out" in captured.err


def test_tune_corrector_option_is_written_into_the_schedule(tmp_path, capsys, monkeypatch):
    import skipstep.lab.tune as tune
    from skipstep.tuned_schedules import load_tuned_schedule

    real_check = tune.final_check
    monkeypatch.setattr(tune, "final_check", lambda *a, **k: {**real_check(*a, **k), "tuned_wins": True})
    args = ["tune", "--model", "tiny-gmm", "--nfe", "3", "--base", "skipstep-ddim-o2", "--num-samples", "16",
            "--fit-seeds", "0", "--eval-seeds", "2", "--budget-nfe", "40", "--cache-dir", str(tmp_path / "c"),
            "--no-progress"]
    assert cli.main(args + ["--corrector", "on", "--out", str(tmp_path / "on.json")]) == 0
    assert "corrector on" in capsys.readouterr().out
    assert load_tuned_schedule(tmp_path / "on.json").use_corrector is True
    assert cli.main(args + ["--out", str(tmp_path / "base.json")]) == 0  # the base's own setting: off
    assert load_tuned_schedule(tmp_path / "base.json").use_corrector is False
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(args + ["--corrector", "yes"])
    assert exc.value.code == 2 and "--corrector" in capsys.readouterr().err


def test_the_license_is_apache_2():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (root / "pyproject.toml").read_text()
