"""Command-line building blocks shared by the harness's subcommands (list parsing, the common run options)."""

from __future__ import annotations

import argparse

import torch

from .models import CLIP_MODES

#: Samples per batch of the benchmark, the tuner and the demo (part of a run's configuration: it fixes the
#: per-step noise streams).
DEFAULT_BATCH_SIZE = 500


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...); default cpu")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"samples per batch (default {DEFAULT_BATCH_SIZE}; part of the configuration because it "
                        "fixes the per-step noise streams)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--clip", choices=CLIP_MODES, default="model",
                   help="clip x0_hat to the data range: as the model's scheduler config says (clip_sample), or "
                        "force it on/off for every sampler that can clip")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op CPU threads (default 1: on a busy machine oversubscribed threads made the "
                        "digits UNet 15-30x slower; 0 keeps torch's default)")

def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (0 or absent: leave torch's default)."""
    threads = getattr(args, "threads", 0)
    if threads and threads > 0:
        torch.set_num_threads(int(threads))


__all__ = ["DEFAULT_BATCH_SIZE", "add_common_run_args", "apply_threads", "int_list", "name_list"]
