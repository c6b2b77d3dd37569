"""Run directories of the harness (bench, generate): the pinned configuration, the files a run owns, tensors.

A run directory's ``config.json`` pins what its results depend on; a rerun compares against it and resumes, or
refuses a different configuration. Only files a command writes itself (its *owned* names) are ever removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save

from ..storage import TEMP_GLOB, atomic_write_bytes


def read_pinned_config(config_file: Path, overwrite: bool, error: type[Exception]) -> dict | None:
    """The configuration an output directory was made with (its config.json), or None if it has none; a corrupt
    file raises ``error`` unless ``overwrite`` (then it is treated as absent)."""
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if not overwrite:
            raise error(f"{config_file} is corrupt ({err}); use --overwrite to start afresh") from err
        return None


def remove_owned(out: Path, names: Iterable[str]) -> None:
    """Delete the files and folders ``names`` (relative to ``out``) that a command wrote there -- nothing else."""
    for name in names:
        p = Path(out) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def remove_stale_temp_files(folder: Path) -> None:
    """Remove the temporary files of killed atomic writers in ``folder`` (never a finished file)."""
    for stale in Path(folder).glob(TEMP_GLOB):
        stale.unlink(missing_ok=True)


def save_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Write ``tensor`` (float32, CPU) atomically as ``{"samples": tensor}`` in a safetensors file."""
    atomic_write_bytes(path, save({"samples": tensor.contiguous().float().cpu()}))


def load_tensor(path: Path) -> torch.Tensor:
    """The ``samples`` tensor of a file written by :func:`save_tensor`."""
    return load_file(str(path))["samples"]


__all__ = ["load_tensor", "read_pinned_config", "remove_owned", "remove_stale_temp_files", "save_tensor"]
