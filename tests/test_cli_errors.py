"""Every user error of the command line is one line ``skipstep <command>: error: ...`` naming the option (or the
variable, or the file), exit status 2, never a traceback -- also on every rank of a torchrun world.

One table, one row per case; each row builds its own inputs in ``tmp_path``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from skipstep.lab import cli
from skipstep.lab.models import load_model
from skipstep.lab.testbeds.digits import DIGITS_UNET_DIR
from skipstep.tuned_schedules import TunedSchedule

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_GENERATE = ["generate", "--model", "gmm", "--nfe", "2", "--num-samples", "4", "--shard-size", "2",
                  "--no-progress"]
SMALL_BENCH = ["bench", "--model", "gmm", "--samplers", "ddim", "--nfe", "2", "--num-samples", "6", "--no-progress"]
SMALL_SAMPLE = ["sample", "--model", "gmm", "--nfe", "2", "--num-samples", "4", "--no-progress"]
SMALL_TUNE = ["tune", "--model", "gmm", "--nfe", "3", "--num-samples", "8", "--no-progress", "--eval-seeds", "2"]


def _refuses_new_files(folder: Path) -> bool:
    try:
        (folder / "skipstep-probe").mkdir()
    except OSError:
        return True
    (folder / "skipstep-probe").rmdir()
    return False


def unwritable_location(tmp_path: Path) -> Path:
    """A directory nothing can be created in: a read-only folder (as root, which ignores permissions, /sys)."""
    ro = tmp_path / "read-only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    if _refuses_new_files(ro):
        return ro
    if Path("/sys/kernel").is_dir() and _refuses_new_files(Path("/sys/kernel")):
        return Path("/sys/kernel")
    pytest.skip("no read-only location available here")


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option``'s value replaced."""
    i = args.index(option)
    return args[:i + 1] + [value] + args[i + 2:]


def model_dir_copy(tmp_path: Path) -> Path:
    """A copy of the shipped digits UNet; its unet/ folder holds config.json and the weights."""
    root = tmp_path / "m"
    shutil.copytree(DIGITS_UNET_DIR, root)
    return root / "unet"


def flow_model_dir(tmp_path: Path, **config) -> Path:
    root = tmp_path / "flow"
    shutil.copytree(DIGITS_UNET_DIR, root)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, **config}))
    return root


def bench_dir(tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    out = tmp_path / "b"
    assert cli.main(SMALL_BENCH + ["--out", str(out)]) == 0
    damage(out)
    return out


def stray_cell(out: Path) -> None:
    (out / "cells" / "zzz").mkdir()
    (out / "cells" / "zzz" / "x.json").write_text("{}")


def schedule_file(tmp_path: Path, **changes) -> Path:
    fingerprint = load_model("gmm").fingerprint
    data = TunedSchedule(timesteps=[900, 500], eta=[1.0, 1.0], nfe=2, num_train_timesteps=1000,
                         model_fingerprint=fingerprint).to_dict()
    data.update(changes)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    return path


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]
    names: str  # the option (or variable, or file) the message must name
    env: dict | None = None
    cuda_unavailable: bool = False


def _existing_file(tmp_path: Path, name: str = "afile") -> str:
    path = tmp_path / name
    path.write_text("mine")
    return str(path)


CASES = [
    # 1. data loss: --overwrite into a directory skipstep did not make
    Case("generate --overwrite into a model directory",
         lambda t: SMALL_GENERATE + ["--out", str(model_dir_copy(t)), "--overwrite"], "--out"),
    Case("bench --overwrite into a model directory",
         lambda t: SMALL_BENCH + ["--out", str(model_dir_copy(t)), "--overwrite"], "--out"),
    Case("generate into a model directory", lambda t: SMALL_GENERATE + ["--out", str(model_dir_copy(t))], "--out"),
    # 2. a flow-matching model directory: dynamic shifting without a fixed mu, a VP-only sampler
    Case("generate a dynamically shifted flow model",
         lambda t: ["generate", "--model", str(flow_model_dir(t, use_dynamic_shifting=True)), "--num-samples", "4",
                    "--out", str(t / "g"), "--no-progress"], "--flow-mu"),
    Case("sample a flow model with a VP-only sampler",
         lambda t: ["sample", "--model", str(flow_model_dir(t)), "--sampler", "ddim", "--out", str(t / "x.png")],
         "--sampler"),
    Case("bench a flow model with a VP-only sampler",
         lambda t: ["bench", "--model", str(flow_model_dir(t)), "--samplers", "skipstep,ddim", "--nfe", "2",
                    "--num-samples", "4", "--out", str(t / "b")], "--samplers"),
    # 2b. guidance scales
    Case("a negative guidance scale", lambda t: SMALL_BENCH + ["--guidance-scale", "1,-2", "--out", str(t / "b")],
         "--guidance-scale"),
    Case("a guidance scale that is not a number",
         lambda t: SMALL_BENCH + ["--guidance-scale", "1,x", "--out", str(t / "b")], "--guidance-scale"),
    Case("a guidance scale for an unconditional model",
         lambda t: SMALL_BENCH + ["--guidance-scale", "2", "--out", str(t / "b")], "--guidance-scale"),
    Case("a null label for an unconditional model",
         lambda t: SMALL_BENCH + ["--null-label", "3", "--out", str(t / "b")], "--null-label"),
    # 6. tuned schedules that cannot be checked
    Case("bench a tuned schedule without fingerprint",
         lambda t: ["bench", "--model", "gmm", "--samplers", f"tuned:{schedule_file(t, model_fingerprint=None)}",
                    "--nfe", "2", "--num-samples", "6", "--out", str(t / "b")], "model_fingerprint: null"),
    Case("generate a tuned schedule without fingerprint",
         lambda t: ["generate", "--model", "gmm", "--sampler", f"tuned:{schedule_file(t, model_fingerprint=None)}",
                    "--nfe", "2", "--num-samples", "4", "--out", str(t / "g")], "model_fingerprint: null"),
    Case("a tuned schedule with a misspelt key",
         lambda t: with_option(SMALL_BENCH, "--samplers", f"tuned:{schedule_file(t, solver_ordr=2)}")
         + ["--out", str(t / "b")], "'solver_ordr' (did you mean 'solver_order'?)"),
    # 7. NFEs that compute nothing
    Case("bench --nfe 0", lambda t: with_option(SMALL_BENCH, "--nfe", "0") + ["--out", str(t / "b")], "--nfe"),
    Case("bench --nfe -3", lambda t: with_option(SMALL_BENCH, "--nfe", "-3") + ["--out", str(t / "b")], "--nfe"),
    Case("bench --nfe x", lambda t: with_option(SMALL_BENCH, "--nfe", "x") + ["--out", str(t / "b")], "--nfe"),
    Case("bench every cell below the order",
         lambda t: ["bench", "--model", "gmm", "--samplers", "unipc,heun", "--nfe", "1", "--num-samples", "6",
                    "--out", str(t / "b")], "--nfe"),
    Case("sample --nfe 0", lambda t: with_option(SMALL_SAMPLE, "--nfe", "0") + ["--out", str(t / "x.png")],
         "--nfe"),
    # 8. unusable outputs and devices
    Case("generate read-only --out", lambda t: SMALL_GENERATE + ["--out", str(unwritable_location(t) / "g")],
         "--out"),
    Case("bench read-only --out", lambda t: SMALL_BENCH + ["--out", str(unwritable_location(t) / "b")], "--out"),
    Case("sample read-only --out", lambda t: SMALL_SAMPLE + ["--out", str(unwritable_location(t) / "x.png")],
         "--out"),
    Case("tune read-only --out", lambda t: SMALL_TUNE + ["--out", str(unwritable_location(t) / "s.json")], "--out"),
    Case("tune read-only cache", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--cache-dir",
                                                         str(unwritable_location(t) / "cache")], "--cache-dir"),
    Case("bench --out an existing file", lambda t: SMALL_BENCH + ["--out", _existing_file(t)], "--out"),
    Case("generate --out an existing file", lambda t: SMALL_GENERATE + ["--out", _existing_file(t)], "--out"),
    Case("tune --out a directory", lambda t: SMALL_TUNE + ["--out", str(t)], "--out"),
    Case("tune --out exists", lambda t: SMALL_TUNE + ["--out", _existing_file(t, "s.json")], "--out"),
    Case("sample --out exists", lambda t: SMALL_SAMPLE + ["--out", _existing_file(t, "x.png")], "--out"),
    Case("sample --out not a png", lambda t: SMALL_SAMPLE + ["--out", str(t / "x.txt")], "--out"),
    Case("generate --device cuda without CUDA", lambda t: SMALL_GENERATE + ["--out", str(t / "g"), "--device", "cuda"],
         "--device", cuda_unavailable=True),
    Case("tune --device cuda:3 without CUDA",
         lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--device", "cuda:3"], "--device", cuda_unavailable=True),
    Case("bench --device bogus", lambda t: SMALL_BENCH + ["--out", str(t / "b"), "--device", "bogus"], "--device"),
    Case("sample --device bogus", lambda t: SMALL_SAMPLE + ["--out", str(t / "x.png"), "--device", "bogus"],
         "--device"),
    Case("generate --device meta", lambda t: SMALL_GENERATE + ["--out", str(t / "g"), "--device", "meta"], "--device"),
    Case("bench config.json is a list",
         lambda t: SMALL_BENCH + ["--out", str(bench_dir(t, lambda o: (o / "config.json").write_text("[1, 2]")))],
         "--out"),
    Case("bench config.json is not JSON",
         lambda t: SMALL_BENCH + ["--out", str(bench_dir(t, lambda o: (o / "config.json").write_text("{x")))],
         "--out"),
    Case("bench a stray {} under cells/", lambda t: SMALL_BENCH + ["--out", str(bench_dir(t, stray_cell))],
         "cells/zzz/x.json"),
    Case("generate into a bench directory",
         lambda t: SMALL_GENERATE + ["--out", str(bench_dir(t, lambda o: None))], "--out"),
    Case("bench --fid-reference without --fid-features",
         lambda t: SMALL_BENCH + ["--out", str(t / "b"), "--fid-reference", str(t)], "--fid-reference"),
    # 16. values out of range, junk in the environment
    Case("generate huge --seed", lambda t: SMALL_GENERATE + ["--out", str(t / "g"), "--seed", str(2**70)], "--seed"),
    Case("bench huge --seed", lambda t: SMALL_BENCH + ["--out", str(t / "b"), "--seed", f"0,{2**64}"], "--seed"),
    Case("sample --seed -1", lambda t: SMALL_SAMPLE + ["--out", str(t / "x.png"), "--seed", "-1"], "--seed"),
    Case("tune huge --fit-seeds", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--fit-seeds", str(2**63)],
         "--fit-seeds"),
    Case("junk SKIPSTEP_FAIL_AFTER_SHARDS", lambda t: SMALL_GENERATE + ["--out", str(t / "g")],
         "SKIPSTEP_FAIL_AFTER_SHARDS", env={"SKIPSTEP_FAIL_AFTER_SHARDS": "junk"}),
    Case("junk SKIPSTEP_BENCH_STOP_AFTER", lambda t: SMALL_BENCH + ["--out", str(t / "b")],
         "SKIPSTEP_BENCH_STOP_AFTER", env={"SKIPSTEP_BENCH_STOP_AFTER": "-1"}),
    Case("junk SKIPSTEP_KILL_AT_WRITE", lambda t: SMALL_GENERATE + ["--out", str(t / "g")],
         "SKIPSTEP_KILL_AT_WRITE", env={"SKIPSTEP_KILL_AT_WRITE": "soon"}),
    Case("generate --num-samples 0", lambda t: ["generate", "--model", "gmm", "--num-samples", "0", "--out",
                                                str(t / "g")], "--num-samples"),
    Case("generate --shard-size 0", lambda t: SMALL_GENERATE + ["--out", str(t / "g"), "--shard-size", "0"],
         "--shard-size"),
    Case("bench --num-samples 2", lambda t: with_option(SMALL_BENCH, "--num-samples", "2") + ["--out", str(t / "b")],
         "--num-samples"),
    Case("bench --batch-size 0", lambda t: SMALL_BENCH + ["--out", str(t / "b"), "--batch-size", "0"],
         "--batch-size"),
    Case("bench --threads -1", lambda t: SMALL_BENCH + ["--out", str(t / "b"), "--threads", "-1"], "--threads"),
    Case("demo --num-samples 0", lambda t: ["demo", "--num-samples", "0", "--out", str(t / "d")], "--num-samples"),
    Case("tune --budget-nfe 0", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--budget-nfe", "0"],
         "--budget-nfe"),
    Case("tune budget below one candidate", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--budget-nfe", "4"],
         "--budget-nfe"),
    Case("tune --solver-order 4", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--solver-order", "4"],
         "--solver-order"),
    Case("tune --num-reference 2", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--num-reference", "2"],
         "--num-reference"),
    Case("an unknown option of a command", lambda t: SMALL_BENCH + ["--out", str(t / "b"), "--frobnicate"],
         "--frobnicate"),
    Case("junk RANK", lambda t: SMALL_GENERATE + ["--out", str(t / "g")], "RANK", env={"RANK": "x", "WORLD_SIZE": "2"}),
    Case("tune --eval-seeds overlapping --fit-seeds",
         lambda t: with_option(SMALL_TUNE, "--eval-seeds", "0") + ["--out", str(t / "s.json")], "--eval-seeds"),
    Case("tune --base not ours", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--base", "ddim"], "--base"),
    Case("tune --eval-seeds overlapping --val-seeds",
         lambda t: with_option(SMALL_TUNE, "--eval-seeds", "1") + ["--out", str(t / "s.json")], "--eval-seeds"),
    Case("tune --objective paired with a stochastic base",
         lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--base", "skipstep", "--objective", "paired"],
         "--objective"),
    Case("tune --objective bogus", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--objective", "mse"],
         "--objective"),
    Case("tune --min-gap 2", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--min-gap", "2"], "--min-gap"),
    Case("tune --budget-minutes 0", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--budget-minutes", "0"],
         "--budget-minutes"),
    Case("tune --reference-steps below twice the NFE",
         lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--reference-steps", "5"], "--reference-steps"),
    Case("tune --guidance-scale for an unconditional model",
         lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--guidance-scale", "2"], "--guidance-scale"),
    Case("tune --eta out of range", lambda t: SMALL_TUNE + ["--out", str(t / "s.json"), "--eta", "2"], "--eta"),
    Case("bench --samplers empty", lambda t: with_option(SMALL_BENCH, "--samplers", ",") + ["--out", str(t / "b")],
         "--samplers"),
    Case("generate --fid-features bogus", lambda t: SMALL_GENERATE + ["--out", str(t / "g"), "--fid-features", "x"],
         "--fid-features"),
    Case("generate --model nope", lambda t: ["generate", "--model", "nope", "--num-samples", "4", "--out",
                                             str(t / "g")], "--model"),
    Case("sample --model missing dir", lambda t: ["sample", "--model", str(t / "absent"), "--out", str(t / "x.png")],
         "--model"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_errors_are_one_line_naming_the_option(case, tmp_path, capsys, monkeypatch):
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    if case.cuda_unavailable:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = case.args(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"skipstep {args[0]}: error: "), err
    assert case.names in lines[0], lines[0]
    # nothing that was there before the refused run changed (the model directory above all)
    assert {p: p.stat().st_mtime_ns for p in before if p.exists()} == before


def _rank_main(rank: int, world: int, port: int, args: list[str], err_file: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    sys.stderr = open(err_file, "w", buffering=1)  # noqa: SIM115 - the rank's stderr until it exits
    os.dup2(sys.stderr.fileno(), 2)
    try:
        rc = cli.main(args)
    except SystemExit as exc:
        rc = exc.code
    sys.stderr.flush()
    os._exit(int(rc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("problem", ["read-only --out", "model directory"])
def test_errors_under_torchrun_are_one_line_on_every_rank(problem, tmp_path, monkeypatch):
    """Two ranks with torchrun's environment (forked: no second import of torch): rank 0 finds the problem,
    every rank reports it in one line and exits 2 -- none waits for the others, none prints a traceback."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    out = unwritable_location(tmp_path) / "g" if problem == "read-only --out" else model_dir_copy(tmp_path)
    args = SMALL_GENERATE + ["--out", str(out)]
    port = _free_port()
    ctx = mp.get_context("fork")
    errs = [tmp_path / f"rank{r}.err" for r in range(2)]
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, args, str(errs[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [2, 2]
    for err in errs:
        text = err.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        assert "Traceback" not in text and len(lines) == 1, text
        assert lines[0].startswith("skipstep generate: error: --out"), text
