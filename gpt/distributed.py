"""torchrun/DDP set-up, rank-0 helpers and the one device picker (`resolve_device`).

Under `torchrun` (RANK, LOCAL_RANK and WORLD_SIZE in the environment) `setup()` joins the process
group (NCCL on CUDA, gloo on CPU) and picks this rank's device; without torchrun it is a no-op
returning rank 0 of 1. Only rank 0 prints and writes files (`print0`, `is_main`); every rank
reaches every collective (`all_reduce_mean`, `all_gather_objects`, `barrier`); a rank that fails
calls `abort`, so that the others' collectives fail at once instead of hanging.

    torchrun --standalone --nproc_per_node=8 train.py
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

# PyTorch's abort, still private; destroy_process_group() may wait on pending NCCL work.
from torch.distributed.distributed_c10d import _abort_process_group

from gpt.cli import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, its node-local rank, the world size, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """The one device picker of every command: "auto" -> CUDA if available, else MPS, else CPU;
    otherwise the named device (cuda, cuda:N, mps or cpu), which must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch refuses a string such as "cuda:x" or "gpu"
        device = None
    if device is None or device.type not in ("cuda", "mps", "cpu"):
        raise UserError(f"--device {name}: use auto, cuda, cuda:N, mps or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but MPS is not available")
    return device


def under_torchrun() -> bool:
    """True when torchrun (or another launcher) set the RANK/WORLD_SIZE variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun, and choose this rank's device."""
    base = resolve_device(device)
    if not under_torchrun():
        return DistEnv(rank=0, local_rank=0, world_size=1, device=base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ["WORLD_SIZE"])
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    elif base.type == "mps" and world_size > 1:
        raise UserError("multi-process training on MPS is not supported; use CUDA or CPU")
    if not dist.is_initialized():
        backend = "nccl" if base.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=base)


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def abort() -> None:
    """Leave the process group at once after a failure on this rank, without waiting for the
    other ranks: their pending and later collectives fail immediately (gloo: the connections
    close; NCCL: the communicators are aborted), so the launcher ends the whole job instead of
    the others waiting for the process-group timeout. A no-op outside a process group."""
    if dist.is_initialized():
        _abort_process_group()


def is_main() -> bool:
    """True on rank 0 (and in a plain, non-distributed process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks, in place (a no-op outside a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable, from our own processes), in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decide_on_rank0(decide: Callable[[], T]) -> T:
    """`decide()` run on rank 0 only, its answer on every rank: for whatever depends on one
    node's files or environment, so that all ranks take the same path through the collectives.
    A UserError raised by `decide` is raised on every rank (each exits with the same line)."""
    answer: T | UserError | None = None
    if is_main():
        try:
            answer = decide()
        except UserError as e:
            answer = e
    answer = broadcast_object(answer)
    if isinstance(answer, UserError):
        raise answer
    return answer  # type: ignore[return-value]


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
