"""Faults: a SIGKILL in the middle of chosen file writes (generate, bench, tune), damaged files on resume, and two
runs into one directory at once.

Kills use the testing hook ``SKIPSTEP_KILL_AT_WRITE=k`` (``skipstep.storage``): the process SIGKILLs itself halfway
through its k-th atomic write, leaving a half-written temporary file, as a crash would. Each kill runs the real
command line (``skipstep.lab.cli.main``) in a forked child (cheap: no second import of torch); the rerun must give
the same bytes as an uninterrupted run and leave no temporary file behind. Everything runs on the exact ``gmm``
model with a handful of samples.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import skipstep.lab.bench as B
import skipstep.lab.generate as G
from skipstep.lab import cli
from skipstep.lab.models import load_model
from skipstep.lab.run_dirs import LOCK_NAME, MARKER_NAME, RunDirectoryError
from skipstep.storage import KILL_AT_WRITE_ENV, TEMP_GLOB, atomic_write_bytes, file_sha256

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GENERATE = ["generate", "--model", "gmm", "--sampler", "skipstep", "--nfe", "3", "--num-samples", "5",
            "--shard-size", "2", "--batch-size", "2", "--seed", "3", "--no-progress"]
#: marker, config.json, then (sidecar, shard) x 3, then index.json
GENERATE_WRITES = 9
BENCH = ["bench", "--model", "gmm", "--samplers", "ddim", "--nfe", "2", "--num-samples", "6", "--batch-size", "6",
         "--seed", "0", "--num-reference", "6", "--no-progress"]
#: marker, config, reference (samples, meta), cell (samples, record), floors, results.json, results.md, plot, grids
BENCH_WRITES = 12


@functools.lru_cache(maxsize=None)
def _cached_model(name, device="cpu"):
    return load_model(name, device=device)


@pytest.fixture(autouse=True)
def _fast_model_loading(monkeypatch):
    """Forked children inherit the loaded models; no leftover hooks from the environment."""
    monkeypatch.setattr(G, "load_model", lambda name, device="cpu": _cached_model(name, device))
    monkeypatch.setattr(B, "load_model", lambda name, device="cpu": _cached_model(name, device))
    for var in (KILL_AT_WRITE_ENV, G.FAIL_AFTER_ENV, B.STOP_AFTER_ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _in_child(fn, env: dict[str, str] | None = None, timeout: float = 120) -> int:
    """Run ``fn()`` in a forked child with ``env`` (output discarded); its exit code (-9: SIGKILLed)."""
    def target():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.environ.update(env or {})
        os._exit(int(fn() or 0))

    proc = mp.get_context("fork").Process(target=target)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


def _killed_cli(args: list[str], k: int) -> int:
    return _in_child(lambda: cli.main(args), {KILL_AT_WRITE_ENV: str(k)})


def _temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob(TEMP_GLOB)]


def _shard_hashes(out: Path) -> list[str]:
    return [file_sha256(p) for p in sorted((out / "shards").glob("*.safetensors"))]


# --------------------------------------------------------------------------------------------------------------
# kills at every write
# --------------------------------------------------------------------------------------------------------------
def test_generate_killed_at_every_write_resumes_to_the_same_bytes(tmp_path, capsys):
    reference = tmp_path / "uninterrupted"
    assert cli.main(GENERATE + ["--out", str(reference)]) == 0
    want = _shard_hashes(reference)
    assert len(want) == 3
    for k in range(1, GENERATE_WRITES + 1):
        out = tmp_path / f"killed-at-{k}"
        assert _killed_cli(GENERATE + ["--out", str(out)], k) == -signal.SIGKILL, k
        if k == 1:  # killed in the very first write: only the marker's half-written temporary file exists
            assert [p.name for p in out.iterdir()] != [] and not (out / MARKER_NAME).exists()
        assert cli.main(GENERATE + ["--out", str(out)]) == 0, capsys.readouterr().err
        assert _shard_hashes(out) == want, k
        assert [s["sha256"] for s in json.loads((out / "index.json").read_text())["shards"]] == want
        G.load_samples(out, verify=True)
        assert _temp_files(out) == [], k
        assert not (out / LOCK_NAME).exists()
    # more writes than the run makes: never killed
    assert _killed_cli(GENERATE + ["--out", str(tmp_path / "not-killed")], GENERATE_WRITES + 1) == 0


def _deterministic_records(out: Path) -> list[dict]:
    timing = {"seconds", "seconds_per_sample", "run_id", "finished_at", "record_sha256"}
    return [{k: v for k, v in r.items() if k not in timing} for r in json.loads((out / "results.json").read_text())]


def test_bench_killed_at_chosen_writes_resumes_to_the_same_results(tmp_path, capsys):
    reference = tmp_path / "uninterrupted"
    assert cli.main(BENCH + ["--out", str(reference)]) == 0
    tensors = sorted(p.relative_to(reference) for p in reference.rglob("*.safetensors"))
    assert len(tensors) == 2  # the reference set and the cell's samples
    for k in (1, 2, 3, 4, 5, 6, 7, 9, BENCH_WRITES):
        out = tmp_path / f"killed-at-{k}"
        assert _killed_cli(BENCH + ["--out", str(out)], k) == -signal.SIGKILL, k
        assert cli.main(BENCH + ["--out", str(out)]) == 0, capsys.readouterr().err
        for rel in tensors:  # the same bytes
            assert file_sha256(out / rel) == file_sha256(reference / rel), (k, rel)
        assert _deterministic_records(out) == _deterministic_records(reference), k
        assert _temp_files(out) == [], k


def test_tune_killed_in_its_cache_and_output_writes_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    import skipstep.lab.tune as tune

    def tuned_wins(*args, **kwargs):  # the write path (forked children inherit the patch)
        return {**real_check(*args, **kwargs), "tuned_wins": True}

    real_check = tune.final_check
    monkeypatch.setattr(tune, "final_check", tuned_wins)

    def args(name):
        return ["tune", "--model", "gmm", "--nfe", "3", "--base", "skipstep-ddim", "--num-samples", "24",
                "--batch-size", "24", "--fit-seeds", "0", "--eval-seeds", "2", "--budget-nfe", "24",
                "--reference-steps", "20", "--budget-minutes", "10", "--cache-dir", str(tmp_path / f"cache-{name}"),
                "--out", str(tmp_path / f"{name}.json"), "--no-progress"]

    assert cli.main(args("uninterrupted")) == 0
    want = json.loads((tmp_path / "uninterrupted.json").read_text())
    # writes: the converged solutions of seeds 0, 1, 2 (samples, metadata), then the schedule
    for k in (1, 2, 3):
        name = f"killed-at-{k}"
        assert _killed_cli(args(name), k) == -signal.SIGKILL, k
        assert not (tmp_path / f"{name}.json").exists()
        assert cli.main(args(name)) == 0, capsys.readouterr().err
        got = json.loads((tmp_path / f"{name}.json").read_text())
        assert (got["timesteps"], got["eta"]) == (want["timesteps"], want["eta"]), k
        assert _temp_files(tmp_path / f"cache-{name}") == [] and list(tmp_path.glob(".*.tmp")) == [], k


def test_sample_killed_in_its_png_write_leaves_nothing_behind(tmp_path):
    args = ["sample", "--model", "gmm", "--nfe", "2", "--num-samples", "4", "--out", str(tmp_path / "g.png"),
            "--no-progress"]
    assert _killed_cli(args, 1) == -signal.SIGKILL
    assert not (tmp_path / "g.png").exists() and len(list(tmp_path.glob(".g.png.*.tmp"))) == 1
    assert cli.main(args) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG" and list(tmp_path.glob(".*.tmp")) == []


def test_a_run_killed_at_its_first_write_is_resumed_not_refused(tmp_path):
    """What a kill during the first config.json write leaves (its temporary file, an empty shards/) is no
    reason to refuse the directory."""
    out = tmp_path / "g"
    (out / "shards").mkdir(parents=True)
    (out / ".config.json.999999.tmp").write_bytes(b'{"ident')
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "index.json", MARKER_NAME, "shards"}
    bench_out = tmp_path / "b"
    bench_out.mkdir()
    (bench_out / f".{MARKER_NAME}.999999.tmp").write_bytes(b"{")
    assert cli.main(BENCH + ["--out", str(bench_out)]) == 0
    assert _temp_files(out, bench_out) == []


# --------------------------------------------------------------------------------------------------------------
# damaged files on resume
# --------------------------------------------------------------------------------------------------------------
def _flip_byte_near_the_end(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_shard_is_recomputed_not_reused(tmp_path, capsys):
    out = tmp_path / "g"
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    good = _shard_hashes(out)
    shard = out / "shards" / "shard-00001.safetensors"
    _flip_byte_near_the_end(shard)
    capsys.readouterr()
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shard-00001.safetensors: its sha256" in text and "recomputing it" in text
    assert "2 reused" in text and "1 written by rank 0" in text
    assert _shard_hashes(out) == good
    G.load_samples(out, verify=True)
    assert json.loads((out / "index.json").read_text())["shards"][1]["sha256"] == good[1]


def test_a_damaged_shard_sidecar_means_the_shard_is_recomputed(tmp_path, capsys):
    out = tmp_path / "g"
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    good = _shard_hashes(out)
    sidecar = out / "shards" / "shard-00000.json"
    sidecar.write_text(sidecar.read_text().replace('"rank": 0', '"rank": 5'))
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    assert "does not match its record_sha256" in capsys.readouterr().out
    assert _shard_hashes(out) == good


@pytest.mark.parametrize("damage", ["empty object", "flipped byte", "samples changed"])
def test_a_damaged_bench_cell_is_recomputed_and_kept_in_the_results(tmp_path, damage, capsys):
    args = ["bench", "--model", "gmm", "--samplers", "ddim,skipstep", "--nfe", "3", "--num-samples", "6",
            "--batch-size", "6", "--seed", "0,1", "--num-reference", "6", "--no-progress", "--out", str(tmp_path / "b")]
    assert cli.main(args) == 0
    cell = tmp_path / "b" / "cells" / "ddim" / "nfe3_seed1.json"
    if damage == "empty object":
        cell.write_text("{}")
    elif damage == "flipped byte":
        cell.write_text(cell.read_text().replace('"nfe": 3', '"nfe": 4'))
    else:
        _flip_byte_near_the_end(cell.with_suffix(".safetensors"))
    capsys.readouterr()
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "cells/ddim/nfe3_seed1.json" in text and "recomputing it" in text
    assert "1 cells computed, 3 reused" in text
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())) == 4  # none silently missing


# --------------------------------------------------------------------------------------------------------------
# two runs at once
# --------------------------------------------------------------------------------------------------------------
def _hold_directory(out: Path, ready: Path) -> int:
    """A child that claims a generate directory, writes a temporary file there as a live writer would, and
    waits (until it is killed)."""
    rundir = G.run_directory(out)
    rundir.claim(overwrite=False)
    (out / f".shard-live.{os.getpid()}.tmp").write_bytes(b"half")
    atomic_write_bytes(ready, str(os.getpid()).encode())
    time.sleep(120)
    return 0


def test_a_second_run_is_refused_while_one_writes_and_takes_over_a_killed_runs_lock(tmp_path, capsys):
    out, ready = tmp_path / "g", tmp_path / "ready"
    ctx = mp.get_context("fork")
    holder = ctx.Process(target=_hold_directory, args=(out, ready))
    holder.start()
    try:
        for _ in range(1200):
            if ready.exists():
                break
            time.sleep(0.05)
        pid = int(ready.read_text())
        live_temp = out / f".shard-live.{pid}.tmp"
        for extra in ([], ["--overwrite"]):
            assert cli.main(GENERATE + ["--out", str(out)] + extra) == 2
            err = capsys.readouterr().err
            assert f"is in use by another skipstep run: pid {pid}" in err and len(err.strip().splitlines()) == 1
            assert live_temp.exists()  # the refused run removed nothing of the live one
        with pytest.raises(RunDirectoryError, match=f"pid {pid}"):
            G.run_directory(out).claim(overwrite=False)
    finally:
        holder.kill()
        holder.join()
    # the holder was killed: its lock is stale and taken over, its half-written file removed
    assert (out / LOCK_NAME).exists()
    messages: list[str] = []
    result = G.generate(G.GenerateConfig(out=out, progress=False, model="gmm", sampler="skipstep", nfe=3,
                                         num_samples=5, seed=3, shard_size=2, batch_size=2), log=messages.append)
    assert len(result.computed) == 3
    assert any(f"took over the lock of a run that no longer runs (pid {pid}" in m for m in messages)
    assert not live_temp.exists() and not (out / LOCK_NAME).exists()


def test_stale_temporary_files_of_live_writers_outside_a_locked_directory_are_kept(tmp_path):
    from skipstep.lab.run_dirs import remove_stale_temp_files

    live = tmp_path / f".s.json.{os.getpid()}.tmp"
    live.write_bytes(b"x")
    dead = tmp_path / ".s.json.999999999.tmp"  # pid_max is far below: no such process
    dead.write_bytes(b"x")
    other = tmp_path / ".t.json.999999999.tmp"
    other.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path, targets=["s.json"]) == [dead]
    assert live.exists() and other.exists()
