"""Run directories of the lab (``bench``, ``generate``): whose a directory is, who is writing into it, what it
pinned, and the files a run owns -- one mechanism for every command that writes a directory.

* **Marker.** A directory is a skipstep run directory only if its marker file (:data:`MARKER_NAME`) says so and
  names the command. Anything else that is not empty is refused -- with ``--overwrite`` too -- naming what was
  found, so skipstep never writes into (or deletes from) a directory it did not create. A directory that holds
  only what a run killed at its very first write leaves behind (temporary files, the lock, empty folders of the
  command's own names) counts as empty. A directory written by skipstep before markers existed (its
  ``config.json`` has the command's identity and nothing else is in it) is adopted: the marker is written.
* **Lock.** While a run writes into a directory it holds :data:`LOCK_NAME` (an exclusive ``flock``; the kernel
  drops it when the process dies, so a killed run's lock is recognised as stale and taken over). A second run is
  refused with the holder's pid.
* **Owned files.** ``--overwrite`` removes only the command's own names (:attr:`RunDirectory.owned`), never
  anything else in the directory, and never the marker.
* **Temporary files** of killed atomic writers are removed when the next run has the lock; outside a locked
  directory (a tuned-schedule file, a cache folder) only those whose writer process is gone.
* **Seals.** JSON records carry ``record_sha256``, the hash of the rest of the record (:func:`seal`), and name the
  hash of the data file they describe, so a resume can verify every file it reuses.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file, save

from .. import __version__
from ..storage import atomic_write_bytes, atomic_write_json, json_sha256, temp_file_owner, temp_path_for, to_json

try:  # POSIX; elsewhere the lock falls back to an exclusive create plus a pid check
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER_NAME = "skipstep-run.json"
LOCK_NAME = "skipstep-run.lock"
MARKER_FORMAT = "skipstep-run-directory"
CONFIG_NAME = "config.json"
SEAL_KEY = "record_sha256"
PROBE_NAME = ".write-probe"
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


class RunDirectoryError(ValueError):
    """An output location cannot be used: not skipstep's, another command's, busy, unwritable or corrupt (the
    message names the option and the path)."""


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# seals: records that can be verified
# --------------------------------------------------------------------------------------------------------------
def seal(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (as the JSON it is written as) plus ``record_sha256``, the hash of the rest of it."""
    body = json.loads(to_json({k: v for k, v in record.items() if k != SEAL_KEY}))
    return {**body, SEAL_KEY: json_sha256(body)}


def seal_intact(record: Any) -> bool | None:
    """True if ``record``'s seal matches its content, False if not (or it is not a dict), None if it has no seal
    (written by a skipstep that did not seal its records)."""
    if not isinstance(record, dict):
        return False
    if SEAL_KEY not in record:
        return None
    body = {k: v for k, v in record.items() if k != SEAL_KEY}
    return record[SEAL_KEY] == json_sha256(body)


def read_json_record(path: Path) -> tuple[dict | None, str]:
    """``(record, "")`` for a readable JSON object whose seal (if any) is intact, else ``(None, reason)``."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({err})"
    if not isinstance(record, dict):
        return None, f"not a JSON object (a {type(record).__name__})"
    if seal_intact(record) is False:
        return None, "its content does not match its record_sha256 (the file was changed or damaged)"
    return record, ""


# --------------------------------------------------------------------------------------------------------------
# writability and stale temporary files
# --------------------------------------------------------------------------------------------------------------
def check_writable_dir(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove that a file can be written there (a probe, named like a temporary
    file so a killed probe is cleaned like one); raises :class:`RunDirectoryError` naming ``what``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirectoryError(f"{what} {folder} exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path_for(folder / PROBE_NAME)
        probe.unlink(missing_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644))
        probe.unlink()
    except OSError as err:
        raise RunDirectoryError(f"{what} {folder} is not writable ({err.strerror or err})") from None


def check_writable_file(path: Path, option: str, overwrite: bool) -> None:
    """Refuse, before any work, an output file that exists (unless ``overwrite``), is a directory, or whose
    folder cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise RunDirectoryError(f"{option} {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise RunDirectoryError(f"{option} {path} already exists; pass --overwrite to replace it")
    check_writable_dir(path.parent if str(path.parent) else Path("."), f"the folder of {option}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: Path, recursive: bool = False, only_dead_writers: bool = True,
                            targets: Iterable[str] | None = None) -> list[Path]:
    """Remove temporary files of killed atomic writers in ``folder`` (never a finished file): with
    ``only_dead_writers`` only those whose writer pid no longer runs (for folders no lock protects), with
    ``targets`` only those of these file names. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = set(targets) if targets is not None else None
    removed = []
    for path in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        owner = temp_file_owner(path)
        if owner is None or not path.is_file() or (wanted is not None and owner[0] not in wanted):
            continue
        if only_dead_writers and pid_alive(owner[1]):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------------------
# the lock
# --------------------------------------------------------------------------------------------------------------
class DirectoryLock:
    """An exclusive lock on a file that names its holder (pid, host, command, start time)."""

    def __init__(self, path: Path, command: str):
        self.path, self.command = Path(path), command
        self.fd: int | None = None

    def _holder_text(self, raw: str) -> str:
        try:
            info = json.loads(raw)
            return (f"pid {info.get('pid')} on {info.get('host')} (skipstep {info.get('command')}, since "
                    f"{info.get('started')})")
        except (json.JSONDecodeError, AttributeError):
            return "a process that is just starting"

    def acquire(self, what: str) -> str | None:
        """Take the lock; returns the previous holder's description if it was a stale lock of a killed run.
        Raises :class:`RunDirectoryError` naming the holder if another live run holds it."""
        while True:
            if fcntl is None:  # pragma: no cover - exclusive create; a dead holder's file is taken over
                stale = self._acquire_without_flock(what)
                return stale
            try:  # never through a symlink: a planted link would have us truncate its target
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NO_FOLLOW, 0o644)
            except OSError as err:
                raise RunDirectoryError(f"{what}: cannot open its lock file {self.path.name} ({err.strerror}); "
                                        "if it is a symbolic link, remove it") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                raise RunDirectoryError(f"{what} is in use by another skipstep run: {self._holder_text(holder)}. "
                                        "Wait for it to finish, or choose another --out") from None
            try:  # a releasing holder may have unlinked the file between our open and our flock: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            self._write_holder(fd)
            self.fd = fd
            return self._holder_text(previous) if previous else None

    def _write_holder(self, fd: int) -> None:
        # written in place, not with atomic_write_bytes: the lock lives on this file's inode
        info = {"pid": os.getpid(), "host": platform.node(), "command": self.command, "started": now_utc()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def _acquire_without_flock(self, what: str) -> str | None:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644)
        except FileExistsError:
            raw = self.path.read_text(errors="replace")
            try:
                pid = int(json.loads(raw).get("pid"))
            except (ValueError, TypeError, AttributeError, json.JSONDecodeError):
                pid = None
            if pid is not None and pid_alive(pid):
                raise RunDirectoryError(f"{what} is in use by another skipstep run: {self._holder_text(raw)}. "
                                        "Wait for it to finish, or choose another --out") from None
            self.path.unlink(missing_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644)
            self._write_holder(fd)
            self.fd = fd
            return self._holder_text(raw)
        self._write_holder(fd)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody can take the old inode
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------------------------------
def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class RunDirectory:
    """The output directory of one command (see the module docstring). ``owned``: the top-level names the
    command writes (a name may be a glob pattern, ``quality_vs_nfe_w*.png``); ``legacy_identity_key``: a key of ``config.json``'s identity that only this command writes
    (recognises directories made before markers existed)."""

    def __init__(self, out: str | Path, command: str, owned: Iterable[str], legacy_identity_key: str,
                 option: str = "--out"):
        self.out, self.command = Path(out), command
        self.owned = tuple(dict.fromkeys([*owned, CONFIG_NAME]))
        self.legacy_identity_key, self.option = legacy_identity_key, option
        self.lock = DirectoryLock(self.out / LOCK_NAME, command)
        self.what = f"{option} {self.out}"

    @property
    def config_file(self) -> Path:
        return self.out / CONFIG_NAME

    def owns(self, name: str) -> bool:
        """Whether a top-level ``name`` is one of the command's own (``owned``, patterns included)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.owned)

    def owned_paths(self) -> list[Path]:
        """The command's own top-level entries that exist (patterns expanded)."""
        return [p for p in sorted(self.out.iterdir()) if self.owns(p.name)] if self.out.is_dir() else []

    # -- what is in the directory ------------------------------------------------------------------------------
    def _leftover(self, path: Path, top: bool) -> bool:
        """Whether ``path`` is only what a killed first write leaves: our temporary files, the lock, folders of
        our names holding nothing else."""
        if path.is_file():
            owner = temp_file_owner(path)
            if top and path.name == LOCK_NAME:
                return True
            return owner is not None and (not top or self.owns(owner[0]) or owner[0] in (MARKER_NAME, PROBE_NAME))
        if path.is_dir() and (not top or self.owns(path.name)):
            return all(self._leftover(p, top=False) for p in path.iterdir())
        return False

    def inspect(self) -> tuple[str, str]:
        """``(state, detail)``: ``missing``, ``empty``, ``ours``, ``legacy``, or ``foreign`` / ``other`` (with
        what was found)."""
        if not self.out.exists():
            return "missing", ""
        if not self.out.is_dir():
            return "foreign", f"{self.what} exists and is not a directory"
        entries = sorted(self.out.iterdir())
        marker = self.out / MARKER_NAME
        if marker.exists():
            record, reason = read_json_record(marker)
            if record is None or record.get("format") != MARKER_FORMAT:
                return "foreign", (f"{self.what}: its {MARKER_NAME} is not a skipstep marker "
                                   f"({reason or 'wrong format'}); remove the directory or choose another --out")
            if record.get("command") != self.command:
                return "other", (f"{self.what} holds a skipstep {record.get('command')} run, not a "
                                 f"{self.command} run; choose another --out")
            return "ours", ""
        if all(self._leftover(p, top=True) for p in entries):
            return "empty", ""
        unknown = [p.name for p in entries if not self.owns(p.name) and not self._leftover(p, top=True)]
        if not unknown and self._legacy_config():
            return "legacy", ""
        found = [p.name + ("/" if p.is_dir() else "") for p in entries if not self._leftover(p, top=True)]
        return "foreign", (
            f"{self.what} is not a skipstep {self.command} directory (it has no {MARKER_NAME} marker) and is not "
            f"empty: it holds {_listing(found)}. skipstep writes only into new or empty directories, or its own "
            "run directories, and --overwrite never deletes files it did not write; choose another --out")

    def _legacy_config(self) -> bool:
        try:
            config = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        identity = config.get("identity") if isinstance(config, dict) else None
        return isinstance(identity, dict) and self.legacy_identity_key in identity

    # -- claiming it ---------------------------------------------------------------------------------------------
    def claim(self, overwrite: bool, log: Callable[[str], None] | None = None) -> dict | None:
        """Refuse a directory that is not this command's, create it, lock it, remove stale temporary files and
        return its pinned configuration (None for a new directory, or a corrupt one with ``overwrite``)."""
        log = log or (lambda msg: None)
        state, detail = self.inspect()
        if state in ("foreign", "other"):
            raise RunDirectoryError(detail)
        check_writable_dir(self.out, self.option)
        stale_holder = self.lock.acquire(self.what)
        try:
            state, detail = self.inspect()  # again, under the lock: another run may have won the race
            if state in ("foreign", "other"):
                raise RunDirectoryError(detail)
            if stale_holder:
                log(f"took over the lock of a run that no longer runs ({stale_holder})")
            removed = remove_stale_temp_files(self.out, only_dead_writers=False)
            for path in self.owned_paths():
                removed += remove_stale_temp_files(path, recursive=True, only_dead_writers=False)
            if removed:
                log(f"removed {len(removed)} temporary file(s) left by a killed run")
            if state == "legacy":
                log(f"{self.out} was written by an earlier skipstep (no {MARKER_NAME}); adopting it")
            if state != "ours":
                atomic_write_json(self.out / MARKER_NAME, seal({
                    "format": MARKER_FORMAT, "version": 1, "command": self.command, "owned": list(self.owned),
                    "created": now_utc(), "skipstep": __version__,
                    "note": f"written by skipstep {self.command}: --overwrite removes only the owned names"}))
            return self._read_config(overwrite)
        except BaseException:
            self.release()
            raise

    def _read_config(self, overwrite: bool) -> dict | None:
        if not self.config_file.exists():
            return None
        config, reason = read_json_record(self.config_file)
        if config is not None and not isinstance(config.get("identity"), dict):
            config, reason = None, "it has no 'identity' object"
        if config is None:
            if not overwrite:
                raise RunDirectoryError(f"{self.what}: {CONFIG_NAME} is corrupt ({reason}); pass --overwrite to "
                                        "discard this directory's results, or choose another --out")
            self.discard_results()
        return config

    def discard_results(self) -> None:
        """Delete the command's own files and folders (``owned``) -- nothing else, and not the marker."""
        for p in self.owned_paths():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.config_file, config)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def identity_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key of a pinned identity that differs (keys on either side)."""
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    return diffs + [f"{k}: {old[k]!r} -> (absent)" for k in old if k not in new]


# --------------------------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------------------------
def save_tensor(path: Path, tensor: torch.Tensor) -> str:
    """Write ``tensor`` (float32, CPU) atomically as ``{"samples": tensor}`` in a safetensors file; returns the
    file's sha256 (to record it beside)."""
    data = save({"samples": tensor.contiguous().float().cpu()})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensor(path: Path) -> torch.Tensor:
    """The ``samples`` tensor of a file written by :func:`save_tensor`."""
    return load_file(str(path))["samples"]


__all__ = [
    "CONFIG_NAME",
    "LOCK_NAME",
    "MARKER_NAME",
    "DirectoryLock",
    "RunDirectory",
    "RunDirectoryError",
    "check_writable_dir",
    "check_writable_file",
    "identity_differences",
    "load_tensor",
    "now_utc",
    "pid_alive",
    "read_json_record",
    "remove_stale_temp_files",
    "save_tensor",
    "seal",
    "seal_intact",
]
