"""Run directories (``skipstep.lab.run_dirs``): a directory is skipstep's only if its marker says so; --overwrite
removes only skipstep's own files; directories of earlier skipstep versions are adopted; the lock is released."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from skipstep.lab import cli
from skipstep.lab.bench import OWNED_NAMES as BENCH_OWNED
from skipstep.lab.models import load_model
from skipstep.lab.run_dirs import LOCK_NAME, MARKER_NAME, RunDirectory, RunDirectoryError, seal, seal_intact
from skipstep.lab.testbeds.digits import DIGITS_UNET_DIR

GENERATE = ["generate", "--model", "gmm", "--nfe", "2", "--num-samples", "4", "--shard-size", "2", "--no-progress"]
BENCH = ["bench", "--model", "gmm", "--samplers", "ddim", "--nfe", "2", "--num-samples", "6", "--no-progress"]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", [GENERATE, BENCH], ids=["generate", "bench"])
def test_overwrite_never_deletes_a_model_directory(command, tmp_path, capsys):
    """The reported data loss: `--out m/unet --overwrite` replaced the UNet's config.json."""
    shutil.copytree(DIGITS_UNET_DIR, tmp_path / "m")
    unet = tmp_path / "m" / "unet"
    before = _digests(unet)
    for extra in ([], ["--overwrite"]):
        assert cli.main(command + ["--out", str(unet)] + extra) == 2
        err = capsys.readouterr().err
        assert "is not a skipstep" in err and "it holds config.json, diffusion_pytorch_model.safetensors" in err
        assert "different configuration" not in err  # the old, misleading message
    assert _digests(unet) == before
    load_model(str(tmp_path / "m"))  # still loads


def test_overwrite_keeps_the_users_own_files_in_a_skipstep_directory(tmp_path):
    out = tmp_path / "g"
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "shards" / "keep.txt").write_text("inside an owned folder: removed with it")
    assert cli.main(GENERATE + ["--out", str(out), "--overwrite", "--seed", "5"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / MARKER_NAME).is_file()
    assert not (out / "shards" / "keep.txt").exists()
    assert json.loads((out / "index.json").read_text())["seed"] == 5


def test_a_directory_of_another_command_is_refused(tmp_path, capsys):
    out = tmp_path / "g"
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    assert cli.main(BENCH + ["--out", str(out), "--overwrite"]) == 2
    assert "holds a skipstep generate run, not a bench run" in capsys.readouterr().err


def test_a_directory_of_an_earlier_skipstep_is_adopted(tmp_path, capsys):
    """Before markers, config.json (with the command's identity) was the only sign: such a directory, holding
    nothing but skipstep's names, is adopted and resumed."""
    out = tmp_path / "b"
    assert cli.main(BENCH + ["--out", str(out)]) == 0
    (out / MARKER_NAME).unlink()
    config = json.loads((out / "config.json").read_text())
    config.pop("record_sha256")  # older versions did not seal it either
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(BENCH + ["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "adopting it" in text and "0 cells computed, 1 reused" in text
    assert (out / MARKER_NAME).is_file()
    # but a config.json without the identity of the command is not enough
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"identity": {"something": 1}}))
    assert cli.main(BENCH + ["--out", str(other)]) == 2


def test_a_damaged_marker_is_refused(tmp_path, capsys):
    out = tmp_path / "g"
    assert cli.main(GENERATE + ["--out", str(out)]) == 0
    (out / MARKER_NAME).write_text((out / MARKER_NAME).read_text().replace("generate", "bench"))
    assert cli.main(GENERATE + ["--out", str(out), "--overwrite"]) == 2
    assert f"its {MARKER_NAME} is not a skipstep marker" in capsys.readouterr().err


def test_the_lock_is_released_and_cannot_be_taken_twice(tmp_path):
    rundir = RunDirectory(tmp_path / "r", "bench", BENCH_OWNED, "protocol_version")
    assert rundir.claim(overwrite=False) is None
    assert (tmp_path / "r" / LOCK_NAME).is_file()
    with pytest.raises(RunDirectoryError, match="in use by another skipstep run"):
        RunDirectory(tmp_path / "r", "bench", BENCH_OWNED, "protocol_version").claim(overwrite=False)
    rundir.release()
    assert not (tmp_path / "r" / LOCK_NAME).exists()
    with RunDirectory(tmp_path / "r", "bench", BENCH_OWNED, "protocol_version") as again:
        again.claim(overwrite=False)
    assert not (tmp_path / "r" / LOCK_NAME).exists()


def test_seals_detect_any_change():
    record = seal({"a": 1, "b": [1.5, "x"]})
    assert seal_intact(record) is True
    assert seal_intact({**record, "a": 2}) is False
    assert seal_intact({"a": 1}) is None  # unsealed: written by an older skipstep
    assert seal_intact([1]) is False


def test_planted_symlinks_are_never_written_through(tmp_path):
    """A symlink where skipstep puts its lock or a temporary file must not make it truncate the link's target."""
    import os

    from skipstep.storage import atomic_write_bytes, temp_path_for

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "g"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunDirectoryError, match="cannot open its lock file"):
        RunDirectory(out, "generate", ("shards",), "seed_function").claim(overwrite=False)
    target = tmp_path / "file.json"
    temp_path_for(target).symlink_to(victim)
    atomic_write_bytes(target, b"new")
    assert victim.read_text() == "precious" and target.read_bytes() == b"new"
    assert not os.path.lexists(temp_path_for(target))


def test_an_index_cannot_name_files_outside_its_directory(tmp_path):
    from skipstep.lab.shards import load_samples

    (tmp_path / "index.json").write_text(json.dumps({"shards": [{"file": "../elsewhere.safetensors"}]}))
    with pytest.raises(ValueError, match="outside"):
        load_samples(tmp_path)
