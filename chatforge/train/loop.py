"""What every training stage shares: optimizer, schedule, checkpoints, metrics, progress.

Each stage (pretrain.py, and later sft/reward/ppo) writes its own loop, top to bottom, from
these pieces, so the loop stays readable and the pieces stay in one place.

Checkpoints never use pickle: weights and optimizer tensors go to safetensors, everything else
to JSON. A checkpoint directory is written under a temporary name and renamed when whole; the
file LATEST names the newest one and is replaced atomically, so `kill -9` at any moment leaves
either the previous checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from chatforge import dist
from chatforge.io import atomic_write_json, atomic_write_text

# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW; matrices decay, vectors (norm gains, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `peak * min_ratio` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the global gradient norm (if max_norm > 0), step, zero the grads; returns the pre-clip norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on CUDA (the default there); plain fp32 elsewhere."""
    if device.type == "cuda" and dtype in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class EpochOrder:
    """Item indices (dialogues, prompts) for step s: a fresh permutation each epoch, a pure function of (seed, step)."""

    def __init__(self, num_items: int, seed: int):
        self.n, self.seed, self._perms = num_items, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))}
        return self._perms[epoch]

    def indices(self, step: int, count: int) -> list[int]:
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(step * count, (step + 1) * count)]


# ----------------------------------------------------------------------------- checkpoints


def _flatten(obj, prefix: str, tensors: dict):
    """Replace every tensor in a nested dict/list by a reference into `tensors` (JSON-able skeleton)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):  # kept apart from lists: optimizers compare betas as tuples
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


class Checkpointer:
    """stage_dir/checkpoints/step-000100/{model,optimizer}.safetensors + state.json; LATEST points at one."""

    def __init__(self, stage_dir: Path, keep: int = 1):
        self.root = Path(stage_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.json").exists() else None

    def save(self, step: int, model: torch.nn.Module, optimizers: dict, state: dict):
        """Rank 0 writes; every rank waits, so none runs ahead of a checkpoint it may resume from."""
        if dist.get().is_main:
            name = f"step-{step:07d}"
            tmp = self.root / f".{name}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            save_model(model, str(tmp / "model.safetensors"))
            tensors: dict = {"rng.torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                tensors["rng.cuda"] = torch.cuda.get_rng_state()
            skeleton = {k: _flatten(opt.state_dict(), f"opt.{k}", tensors) for k, opt in optimizers.items()}
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            atomic_write_json(tmp / "optimizer.json", skeleton)
            atomic_write_json(tmp / "state.json", {**state, "step": step})
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(self.root / "LATEST", name + "\n")
            self._prune(keep_name=name)
        dist.barrier()

    def _prune(self, keep_name: str):
        steps = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in steps[: -self.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, model: torch.nn.Module, optimizers: dict) -> dict:
        path = self.latest()
        assert path is not None, "load() called without a checkpoint"
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        assert not unexpected and not missing, f"checkpoint does not fit the model: {missing} {unexpected}"
        tensors = load_file(str(path / "optimizer.safetensors"))
        skeleton = json.loads((path / "optimizer.json").read_text())
        for key, opt in optimizers.items():
            opt.load_state_dict(_unflatten(skeleton[key], tensors))
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        return json.loads((path / "state.json").read_text())


# ----------------------------------------------------------------------------- logging


class MetricsLog:
    """metrics.jsonl, one JSON object per logged step, written by rank 0.

    On resume, records past the checkpoint's step are dropped (those steps run again), so the
    file of a resumed run reads like the file of an uninterrupted one.
    """

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.enabled = dist.get().is_main
        if self.enabled and self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            atomic_write_text(self.path, "".join(x + "\n" for x in kept))

    def log(self, record: dict):
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=desc, disable=not dist.get().is_main,
        dynamic_ncols=True, mininterval=1.0 if tty else 30.0, file=sys.stderr, leave=True,
    )


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
