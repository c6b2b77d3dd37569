"""The files of a generate run: where shard ``j`` and its sidecar live, the shard's bytes and metadata, and
reading a finished run back (:func:`load_samples`). The layout is described in ``docs/generate.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from ..storage import file_sha256

SHARD_FORMAT = "skipstep-shard-v1"
INDEX_FORMAT = "skipstep-generate-index-v1"


def shard_path(out: Path, j: int) -> Path:
    return Path(out) / "shards" / f"shard-{j:05d}.safetensors"


def provenance_path(out: Path, j: int) -> Path:
    """Sidecar of shard ``j``: which rank wrote it, with which batch size and device, how fast."""
    return Path(out) / "shards" / f"shard-{j:05d}.json"


def read_shard_metadata(path: str | Path) -> dict[str, Any]:
    """The (deterministic) skipstep metadata of a shard file."""
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("skipstep")
    if raw is None:
        raise ValueError(f"{path} is not a skipstep shard (no 'skipstep' metadata)")
    return json.loads(raw)


def shard_bytes(samples: torch.Tensor, indices: torch.Tensor, metadata: dict[str, Any]) -> bytes:
    # one metadata key: safetensors writes several keys in a random order, which would make the bytes differ
    return save({"samples": samples.contiguous().float().cpu(), "indices": indices.to(torch.int64).contiguous()},
                metadata={"skipstep": json.dumps(metadata, sort_keys=True)})


def load_samples(out: str | Path, verify: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of a finished generate directory in index order: ``(samples, indices)``.

    ``verify=True`` checks every file's sha256 against ``index.json``."""
    out = Path(out)
    index_file = out / "index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} not found (the run has not finished; rerun it to resume)")
    index = json.loads(index_file.read_text())
    chunks, idx = [], []
    for entry in index["shards"]:
        path = out / entry["file"]
        if not path.resolve().is_relative_to(out.resolve()):  # an index names files of its own directory only
            raise ValueError(f"{index_file} names {entry['file']!r}, which lies outside {out}")
        if verify and file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from index.json (the file changed after the run)")
        tensors = load_file(str(path))
        chunks.append(tensors["samples"])
        idx.append(tensors["indices"])
    return torch.cat(chunks), torch.cat(idx)


__all__ = ["INDEX_FORMAT", "SHARD_FORMAT", "load_samples", "provenance_path", "read_shard_metadata", "shard_bytes",
           "shard_path"]
