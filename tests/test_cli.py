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
