"""``skipstep generate``: per-sample seeding, shards, resumption, and torchrun/gloo distribution on the CPU.

Everything uses the built-in ``gmm`` model (loadable by name in any process) with 10 samples in shards of 3
(the last one partial), batches of 2 and a stochastic sampler at 3 NFE, so per-step noise matters.
One test launches real ``torchrun`` (2 gloo processes); the resume tests fork 2 ranks that read the same
``RANK``/``WORLD_SIZE``/``MASTER_*`` variables torchrun sets (forking keeps them cheap: no second import).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import skipstep.lab.generate as G
from skipstep.lab import cli
from skipstep.lab.models import load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUN = dict(model="gmm", sampler="skipstep", nfe=3, num_samples=10, seed=7, shard_size=3, batch_size=2)


@functools.lru_cache(maxsize=None)
def _cached_model(name, device="cpu"):
    return load_model(name, device=device)


@pytest.fixture(autouse=True)
def _fast_model_loading(monkeypatch):
    monkeypatch.setattr(G, "load_model", lambda name, device="cpu": _cached_model(name, device))
    monkeypatch.delenv(G.FAIL_AFTER_ENV, raising=False)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _cfg(out, **kw):
    return G.GenerateConfig(out=out, progress=False, **{**RUN, **kw})


def _run(out, **kw):
    return G.generate(_cfg(out, **kw), log=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hashes(out: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((out / "index.json").read_text())["shards"]]


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").glob("*.safetensors")}


def _assert_same_set(out: Path, reference: Path) -> None:
    a, ia = G.load_samples(out, verify=True)
    b, ib = G.load_samples(reference, verify=True)
    assert torch.equal(ia, torch.arange(RUN["num_samples"])) and torch.equal(ia, ib)  # none dropped or repeated
    assert (a - b).abs().max().item() == 0.0
    assert _hashes(out) == _hashes(reference)  # byte-identical shard files


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted single-process run every other run must reproduce."""
    out = tmp_path_factory.mktemp("gen") / "one-process"
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(G, "load_model", lambda name, device="cpu": _cached_model(name, device))
        G.generate(_cfg(out), log=None)
    return out


# ------------------------------------------------------------------------------------------------------------
# per-sample noise
# ------------------------------------------------------------------------------------------------------------
def test_sample_seed_is_the_documented_function():
    digest = hashlib.sha256(b"skipstep-sample:7:3").digest()
    assert G.sample_seed(7, 3) == int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    assert len({G.sample_seed(s, i) for s in range(3) for i in range(50)}) == 150
    assert "sha256" in G.SEED_FUNCTION


@pytest.mark.parametrize("sampler", ["skipstep", "ddpm", "dpmpp-2m-sde"])
def test_a_sample_does_not_depend_on_its_batch(sampler):
    spec = _cached_model("gmm")
    whole = G.generate_batch(spec, sampler, 3, 5, list(range(5)))
    singles = torch.cat([G.generate_batch(spec, sampler, 3, 5, [i]) for i in range(5)])
    split = torch.cat([G.generate_batch(spec, sampler, 3, 5, [0, 1, 2]), G.generate_batch(spec, sampler, 3, 5, [3, 4])])
    assert torch.equal(whole, singles) and torch.equal(whole, split)
    assert not torch.equal(whole[0], whole[1])


def test_layout_index_and_config(reference_run):
    out = reference_run
    files = sorted(p.name for p in (out / "shards").glob("*.safetensors"))
    assert files == [f"shard-{j:05d}.safetensors" for j in range(4)]
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == G.INDEX_FORMAT and index["num_samples"] == 10 and index["seed"] == 7
    assert index["sampler"] == "skipstep" and index["nfe"] == 3 and index["model_fingerprint"]
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    for s in index["shards"]:
        assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
        assert s["written_by"]["batch_size"] == 2 and s["written_by"]["world_size"] == 1
    meta = G.read_shard_metadata(out / index["shards"][3]["file"])
    assert (meta["start"], meta["stop"], meta["seed"]) == (9, 10, 7)
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["shard_size"] == 3 and "world_size" not in config["identity"]
    assert not list((out / "shards").glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------------------
# distribution: real torchrun, 2 gloo processes
# ------------------------------------------------------------------------------------------------------------
def _cli_args(out: Path) -> list[str]:
    args = ["generate", "--out", str(out), "--no-progress"]
    for key in ("model", "sampler", "nfe", "num_samples", "seed", "shard_size", "batch_size"):
        args += [f"--{key.replace('_', '-')}", str(RUN[key])]
    return args


def test_torchrun_two_processes_match_one_process_bit_for_bit(reference_run, tmp_path):
    out = tmp_path / "two-processes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "skipstep.lab.cli", *_cli_args(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "world size 2" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert sorted({s["written_by"]["rank"] for s in index["shards"]}) == [0, 1]
    assert all(s["written_by"]["world_size"] == 2 for s in index["shards"])
    _assert_same_set(out, reference_run)  # max abs diff 0.0 and equal sha256 for every shard


# ------------------------------------------------------------------------------------------------------------
# resumption
# ------------------------------------------------------------------------------------------------------------
def test_killed_run_resumes_without_rewriting_finished_shards(reference_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    monkeypatch.setenv(G.FAIL_AFTER_ENV, "2")
    with pytest.raises(G.GenerateInterrupted):
        _run(out)
    assert not (out / "index.json").exists()
    before = _stamps(out)
    assert sorted(before) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    monkeypatch.delenv(G.FAIL_AFTER_ENV)
    result = _run(out)
    assert result.computed == [2, 3] and result.reused == 2
    after = _stamps(out)
    assert {k: after[k] for k in before} == before  # same inode, same mtime: never rewritten
    _assert_same_set(out, reference_run)
    # a rerun of a finished directory computes nothing
    assert _run(out).computed == [] and _stamps(out) == after


def _fork_rank(rank: int, world: int, port: int, out: str, fail_after: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if fail_after:
        os.environ[G.FAIL_AFTER_ENV] = str(fail_after)
    try:
        G.generate(_cfg(Path(out)), log=None)
    except G.GenerateInterrupted:
        os._exit(3)
    os._exit(0)


def _forked_world(out: Path, world: int, fail_after: int = 0) -> list[int]:
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_fork_rank, args=(r, world, port, str(out), fail_after)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in procs]


def test_resume_with_a_different_world_size_gives_the_same_set(reference_run, tmp_path):
    # 2 processes, each killed after its first shard; resumed by 1 process
    out = tmp_path / "two-then-one"
    assert _forked_world(out, 2, fail_after=1) == [3, 3]
    before = _stamps(out)
    assert len(before) == 2 and not (out / "index.json").exists()
    messages: list[str] = []
    result = G.generate(_cfg(out), log=messages.append)
    assert len(result.computed) == 2 and result.reused == 2
    assert any("different world size (2 -> 1)" in m for m in messages)
    assert {k: v for k, v in _stamps(out).items() if k in before} == before
    _assert_same_set(out, reference_run)
    runs = json.loads((out / "config.json").read_text())["runs"]
    assert [r["world_size"] for r in runs] == [2, 1]

    # 1 process killed after one shard; resumed by 2 processes
    out = tmp_path / "one-then-two"
    with pytest.MonkeyPatch.context() as m:
        m.setenv(G.FAIL_AFTER_ENV, "1")
        with pytest.raises(G.GenerateInterrupted):
            _run(out)
    before = _stamps(out)
    assert _forked_world(out, 2) == [0, 0]
    assert {k: v for k, v in _stamps(out).items() if k in before} == before
    _assert_same_set(out, reference_run)
    index = json.loads((out / "index.json").read_text())
    assert [s["written_by"]["world_size"] for s in index["shards"]] == [1, 2, 2, 2]


# ------------------------------------------------------------------------------------------------------------
# configuration pinning
# ------------------------------------------------------------------------------------------------------------
def test_a_different_configuration_is_refused_unless_overwrite(reference_run, tmp_path, capsys):
    out = tmp_path / "pinned"
    _run(out, num_samples=4)
    with pytest.raises(G.GenerateConfigError, match=r"nfe: 3 -> 4"):
        _run(out, num_samples=4, nfe=4)
    with pytest.raises(G.GenerateConfigError, match=r"seed: 7 -> 8"):
        _run(out, num_samples=4, seed=8)
    # the CLI turns it into one line and status 2
    args = _cli_args(out)
    args[args.index("--nfe") + 1] = "4"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "holds samples of a different configuration" in err and "--overwrite" in err
    # world size and batch size are not part of the configuration
    assert _run(out, num_samples=4, batch_size=3).computed == []
    # --overwrite discards the old samples
    result = _run(out, num_samples=4, nfe=4, overwrite=True)
    assert result.computed == [0, 1] and json.loads((out / "index.json").read_text())["nfe"] == 4
    # a foreign non-empty directory is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(G.GenerateConfigError, match="not a skipstep generate directory.*it holds x.txt"):
            _run(foreign, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["x.txt"]
    with pytest.raises(G.GenerateConfigError, match="positive integer"):
        _cfg(tmp_path / "bad", shard_size=0)
