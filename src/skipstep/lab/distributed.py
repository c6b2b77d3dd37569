"""The process group of a ``torchrun`` job (PyTorch's own: gloo on CPU, nccl on CUDA), or a world of one.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) each process joins the group and,
on CUDA, uses ``cuda:LOCAL_RANK``; a plain ``python``/``skipstep`` call is a world of one and needs no group.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..storage import env_int

#: Seconds a process waits in a collective (barrier/broadcast) before giving up; default 3 hours, because a rank
#: may wait at the final barrier for a slower rank's last shard.
DIST_TIMEOUT_ENV = "SKIPSTEP_DIST_TIMEOUT_S"
DEFAULT_DIST_TIMEOUT_S = 3 * 3600


@dataclass
class DistContext:
    """This process's place in the run: ``rank`` of ``world_size`` (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group:
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), or a world of
    one. Returns the context and this process's device (``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun).
    A process group the caller already initialised is used as it is (and left open)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        backend = dist.get_backend()
        if device == "cuda" and world > 1:
            device = f"cuda:{local}"
        return DistContext(rank, world, local, backend, owns_group=False), device
    world, rank, local = env_int("WORLD_SIZE", 1), env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = str(device).startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    kwargs: dict[str, Any] = {}
    if cuda:
        if device == "cuda":
            device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(device))
        kwargs["device_id"] = torch.device(device)
    raw_timeout = os.environ.get(DIST_TIMEOUT_ENV) or str(DEFAULT_DIST_TIMEOUT_S)
    try:
        timeout = _dt.timedelta(seconds=float(raw_timeout))
    except ValueError:
        raise ValueError(f"environment variable {DIST_TIMEOUT_ENV}={raw_timeout!r} must be a number of seconds") from None
    dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, owns_group=True), device


__all__ = ["DEFAULT_DIST_TIMEOUT_S", "DIST_TIMEOUT_ENV", "DistContext", "init_distributed"]
