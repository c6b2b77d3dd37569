"""Files and hashes: atomic writes, SHA-256 digests, seeds derived by hashing, and skipstep's cache directory.

Every file skipstep writes goes through :func:`atomic_write_bytes`: the bytes land in a temporary file beside the
target (``.<name>.<pid>.tmp``, a name no other writer uses), are flushed to disk, then ``os.replace`` moves them
into place -- so a file that exists is complete, whatever kills the writer. Leftover temporary files of killed
writers match :data:`TEMP_GLOB` (:func:`temp_file_owner` reads the writer's pid back from the name).

Testing hook: ``SKIPSTEP_KILL_AT_WRITE=k`` (:data:`KILL_AT_WRITE_ENV`) makes the process SIGKILL itself in the
middle of its ``k``-th atomic write (counted from 1 in each process), leaving a half-written temporary file, as a
crash or an out-of-memory kill would. It exists to test resumption; never set it otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

#: Environment variable naming the cache directory (optimal-variance tables, reference sample sets, ...).
CACHE_DIR_ENV = "SKIPSTEP_CACHE_DIR"
#: Pattern of the temporary files :func:`atomic_write_bytes` writes (and removes, unless killed).
TEMP_GLOB = ".*.tmp"
#: Testing hook: SIGKILL this process during its k-th atomic write (see the module docstring).
KILL_AT_WRITE_ENV = "SKIPSTEP_KILL_AT_WRITE"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$")
_SEED_MASK = (1 << 63) - 1
#: Flags of a temporary file: a new file, never an existing one or the target of a symlink.
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
_writes_in_process = {"pid": None, "count": 0}


def cache_dir() -> Path:
    """``$SKIPSTEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/skipstep``, else ``~/.cache/skipstep``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skipstep"


def env_int(name: str, default: int = 0, minimum: int = 0) -> int:
    """An integer environment variable (``default`` when unset or empty); a bad value raises ``ValueError``
    naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer >= {minimum}")
    return value


def temp_path_for(path: Path) -> Path:
    """The temporary file :func:`atomic_write_bytes` uses for ``path`` in this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_file_owner(path: str | os.PathLike) -> tuple[str, int] | None:
    """``(target file name, writer pid)`` if ``path`` is named like a temporary file of :func:`atomic_write_bytes`,
    else ``None``."""
    match = _TEMP_NAME.match(Path(path).name)
    return (match["target"], int(match["pid"])) if match else None


def _kill_hook(tmp: Path, data: bytes) -> None:
    """The :data:`KILL_AT_WRITE_ENV` testing hook: at the k-th write, leave half of it and SIGKILL this process."""
    kill_at = env_int(KILL_AT_WRITE_ENV, 0)
    if not kill_at:
        return
    if _writes_in_process["pid"] != os.getpid():  # a forked child counts its own writes
        _writes_in_process.update(pid=os.getpid(), count=0)
    _writes_in_process["count"] += 1
    if _writes_in_process["count"] == kill_at:
        tmp.unlink(missing_ok=True)
        with open(os.open(tmp, _CREATE_NEW, 0o666), "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    _kill_hook(tmp, data)
    tmp.unlink(missing_ok=True)  # a leftover of this pid, or a planted symlink: never written through
    try:
        with open(os.open(tmp, _CREATE_NEW, 0o666), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if callable(obj):
        return getattr(obj, "__name__", repr(obj))
    return str(obj)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as JSON text (numpy scalars and arrays, paths and callables made readable), newline-terminated."""
    return json.dumps(obj, indent=indent, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """:func:`atomic_write_bytes` of :func:`to_json` ``(obj)``."""
    return atomic_write_bytes(path, to_json(obj, indent).encode())


def file_sha256(path: str | os.PathLike, h=None) -> str:
    """Hex SHA-256 of a file's bytes (or, with ``h``, feed them into that hash object and return its hex digest)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """Hex SHA-256 of ``obj`` as canonical JSON (sorted keys): a fingerprint of a configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def derived_seed(tag: str, *parts: Any) -> int:
    """A 63-bit seed for an independent random stream: the first 8 bytes (little endian) of
    ``sha256(f"{tag}:{part_1}:{part_2}...")``. Different tags or parts give unrelated streams."""
    text = ":".join([tag, *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & _SEED_MASK


__all__ = [
    "CACHE_DIR_ENV",
    "KILL_AT_WRITE_ENV",
    "TEMP_GLOB",
    "atomic_write_bytes",
    "atomic_write_json",
    "cache_dir",
    "derived_seed",
    "env_int",
    "file_sha256",
    "json_sha256",
    "temp_file_owner",
    "temp_path_for",
    "to_json",
]
