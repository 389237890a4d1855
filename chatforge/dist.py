"""Distributed setup, in one place. Single-process runs go through the same calls and skip the collectives.

Launch with `torchrun --nproc_per_node N chatforge ...`: torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK, and `init()` picks NCCL on CUDA and gloo on CPU.

Two ways to train on several processes (`compute.parallel`), both applied by `wrap` alone:
  ddp   every process holds the whole model; gradients are averaged after the backward.
  fsdp  FSDP2 (`fully_shard`): each process holds 1/N of every weight, gradient and optimizer state
        (DTensor shards); a block's weights are gathered just before it runs and freed after.
A sharded model's forward is a collective: every process must join every forward, so code that
runs a model unevenly (one rank alone, or a different number of times per rank) asks `sharded`
and keeps in step (`eval_batches`, `all_true`). Its whole weights exist only when gathered
(`full_weights`, `full_optimizer_state`; loaded back by `load_full`).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from chatforge.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    parallel: str = "ddp"  # compute.parallel: how `wrap` spreads a model over several processes (ddp | fsdp)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def shards(self) -> bool:
        """Whether `wrap` shards models (FSDP2) rather than copying them (DDP)."""
        return self.enabled and self.parallel == "fsdp"


_state = Dist()


def init(device: str = "auto", parallel: str = "ddp") -> Dist:
    """Join the process group if torchrun started us; choose the device; share the CPU cores fairly (unless the user
    said how many threads to use, with OMP_NUM_THREADS); keep how `wrap` will spread models (`parallel`)."""
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
    _state = Dist(rank, world_size, local_rank, dev, parallel)
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


def wrap(model: torch.nn.Module, dtype: str = "auto") -> torch.nn.Module:
    """The one place a model is made distributed, when there are several processes: DDP, or with compute.parallel=fsdp
    FSDP2, in place (`model` itself becomes the sharded model, its parameters DTensor shards: build optimizers after
    this). dtype: the stage's compute dtype; under FSDP2 on CUDA, bf16 ("auto" or "bf16") also gathers the weights in
    bf16 and reduces the gradients in fp32."""
    if not _state.enabled:
        return model
    if _state.shards:
        return _fully_shard(model, dtype)
    ids = [_state.local_rank] if _state.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def _fully_shard(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """FSDP2 on each transformer block, then on the root (embeddings, final norm, head): a block's weights are whole
    only while it runs. LoRA is refused: saving merges the adapters into weights that no process holds whole."""
    if any(hasattr(m, "peft_config") for m in model.modules()):
        raise ConfigError("compute.parallel=fsdp does not support LoRA yet (lora.rank > 0): set the stage's "
                          "lora.rank=0, or use compute.parallel=ddp")
    mesh = init_device_mesh(_state.device.type, (_state.world_size,))
    bf16 = _state.device.type == "cuda" and dtype in ("auto", "bf16")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of the block classes a Hugging Face model names in `_no_split_modules` (LlamaDecoderLayer...),
    found anywhere in `model` (a peft model, or a value model around a backbone, included)."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    return [m for m in model.modules() if type(m).__name__ in names]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def sharded(model: torch.nn.Module) -> bool:
    """Whether `model` has FSDP2 shards in it: then each of its forwards is a collective that every process joins."""
    return _state.enabled and any(isinstance(m, FSDPModule) for m in model.modules())


def no_sync(model: torch.nn.Module, sync: bool):
    """Skip the gradient reduction on accumulation micro-steps; reduce on the last one (DDP's no_sync; FSDP2 keeps the
    unreduced gradients whole until then)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor computed from shards (a gradient norm under FSDP2) reduced to its value; any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective: every process calls it, as often as the others)."""
    if not _state.enabled:
        return flag
    return float(all_reduce_sum(torch.tensor(0.0 if flag else 1.0, device=_state.device))) == 0.0


def eval_batches(items, size: int, model: torch.nn.Module) -> list[tuple[object, bool]]:
    """This process's share of `items` (every N-th one; a list or a tensor) in batches of `size`, each with whether it
    counts. Every process runs as many batches as the busiest when `model` is sharded (its forwards are collectives):
    one with a batch fewer runs the first batch of `items` again and drops the result (counts False)."""
    mine = items[_state.rank :: _state.world_size]
    batches = [(mine[i : i + size], True) for i in range(0, len(mine), size)]
    if sharded(model):
        most = math.ceil(len(items[:: _state.world_size]) / size)  # rank 0's: it has the most items
        batches += [(items[:size], False)] * (most - len(batches))
    return batches


# ----------------------------------------------------------------------------- whole state of a sharded model
# Gathering is a collective (every process calls it); the whole tensors land in rank 0's CPU memory, one at a
# time, and the other processes get {}.
_WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole weights of a sharded model by name (on rank 0; {} elsewhere), a tied weight under each of its names
    as one tensor (as the unsharded model's state_dict has it); None for a model that holds its weights whole."""
    if not sharded(model):
        return None
    weights = get_model_state_dict(model, options=_WHOLE)
    if weights:
        for name, first in _aliases(model).items():
            weights[name] = weights[first]
    return weights


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole state of an optimizer over `model`'s sharded parameters, keyed by parameter name (on rank 0; {}
    elsewhere)."""
    return get_optimizer_state_dict(model, optimizer, options=_WHOLE)


def load_full(model: torch.nn.Module, weights: dict[str, torch.Tensor], optimizers: dict) -> None:
    """Load whole weights (some of them: the rest stay) and whole optimizer states (keyed by parameter name; `optimizers`
    maps each optimizer to its state) into a sharded model: each process keeps its shard. Every process calls it."""
    weights = dict(weights)
    for name, first in _aliases(model).items():  # else the stale alias would be loaded over the weight it ties
        if first in weights:
            weights[name] = weights[first]
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    for optimizer, state in optimizers.items():
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """{later name: first name} of each parameter that has several names (tied embeddings)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        first.setdefault(id(p), name)
    return out


def shutdown():
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
