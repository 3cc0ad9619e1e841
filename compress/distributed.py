"""torch.distributed for `torchrun --nproc_per_node=N -m compress.run plan.yaml`.

Every rank runs the plan. Rank 0 runs the ordinary steps and writes every file; the other ranks wait
at a barrier and then read what it wrote. Steps whose config class sets `distributed = True`
(distill) run on every rank, with data sharded by rank and gradients all-reduced by DDP.
Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Followers wait at a barrier while rank 0 runs the non-distributed steps (pretraining, GPTQ, export),
# which can take hours; the default 30 min would kill a healthy run.
BARRIER_TIMEOUT = timedelta(hours=24)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) and return this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's value of a boolean, on every rank (so all ranks take the same branch)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_float(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src=0)
    return float(t.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Average a small float tensor over the ranks (for logging and the NaN check)."""
    if not active():
        return values
    t = values.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(t)
    return (t / world_size()).to(values.device)
