"""torchrun integration: the few collective operations the trainer needs.

The trainer runs unchanged in one process or under ``torchrun``; these
helpers read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), start the
process group once (gloo on CPU, nccl on CUDA) and turn every collective into
a no-op when there is a single process, so no caller needs two code paths.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank, world size and local rank as torchrun exports them (1 process when absent)."""
    try:
        return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise RuntimeError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from e


def init_distributed(device: torch.device, timeout_s: float = 7200.0) -> DistInfo:
    """Join the torchrun process group if there is one; idempotent.

    The long default timeout lets rank 0 evaluate the dev set alone while the
    other ranks wait; if a rank dies, torchrun stops the rest, so nothing hangs
    for that long.
    """
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != info.world_size:
            raise RuntimeError(f"process group has {dist.get_world_size()} ranks but WORLD_SIZE={info.world_size}")
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(_destroy)
    return info


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum, min or max); the tensor must live on the backend's device."""
    if _active():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                                    "max": dist.ReduceOp.MAX}[op])
    return tensor
