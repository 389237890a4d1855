"""Distributed setup, in one place. Single-process runs go through the same calls and skip the collectives.

Launch with `torchrun --nproc_per_node N chatforge ...`: torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK, and `init()` picks NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP

from chatforge.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_state = Dist()


def init(device: str = "auto") -> Dist:
    """Join the process group if torchrun started us; choose the device; share the CPU cores fairly (unless the user
    said how many threads to use, with OMP_NUM_THREADS)."""
    global _state
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"compute.device is {device}, but this torch sees no CUDA device (torch {torch.__version__}): "
                          f"set compute.device to auto or cpu")
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        # N processes on one machine would each start a thread per core and fight over them.
        if not os.environ.get("OMP_NUM_THREADS"):
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        # Same recipe, same machine, same model, bit for bit. On the CPU the one kernel that was not
        # repeatable is torch.compile's embedding backward (a scatter-add that threads race to
        # accumulate); a run then drifted from its twin by 1e-7 after 30 steps and ended a different
        # model. The deterministic kernel costs nothing measurable here. CUDA is left alone: there it
        # needs CUBLAS_WORKSPACE_CONFIG and slower kernels, a choice for the user.
        torch.use_deterministic_algorithms(True)
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    _state = Dist(rank, world_size, local_rank, dev)
    return _state


def get() -> Dist:
    return _state


def print0(*args, **kwargs):
    if _state.is_main:
        print(*args, **kwargs, flush=True)


def barrier():
    if _state.enabled:
        torch_dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over processes, as a new tensor on `t`'s device (`t` is untouched)."""
    return all_reduce_sum(t) / _state.world_size


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over processes, as a new tensor on `t`'s device.

    The collective runs on this process's device (NCCL only reduces CUDA tensors), so callers may
    pass CPU scalars and counts without caring which backend is in use.
    """
    if not _state.enabled:
        return t.detach().clone()
    out = t.detach().to(_state.device, copy=True)
    torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out.to(t.device)


def my_share(items):
    """This process's contiguous share of a global batch (a list or a tensor), the same for any N that divides it."""
    per = len(items) // _state.world_size
    return items[_state.rank * per : (_state.rank + 1) * per]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The one place a model is made distributed: DDP when there are several processes."""
    if not _state.enabled:
        return model
    ids = [_state.local_rank] if _state.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def no_sync(model: torch.nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on accumulation micro-steps; sync on the last one."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def shutdown():
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
