"""torchrun / DistributedDataParallel helpers: read the launch environment, init the process group, reduce.

Launched by ``torchrun`` the environment holds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without it every
helper behaves as a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistInfo:
    """Rank information from the environment set by torchrun (defaults: single process)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )
    except ValueError as exc:
        raise RuntimeError(f"bad torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {exc}") from exc


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Init the default process group when launched with WORLD_SIZE > 1 (nccl on cuda, else gloo).

    Idempotent; on cuda also selects ``cuda:LOCAL_RANK``. Returns the rank information.
    """
    info = dist_env()
    if not info.enabled:
        return info
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            dist.init_process_group(backend=backend, device_id=torch.device("cuda", info.local_rank))
        else:
            dist.init_process_group(backend=backend)
    return info


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns the tensor."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
