"""What every training stage shares: optimizer, schedule, checkpoints, metrics, progress, and the frame
around a stage's loop (`StageRun`: resume, log, checkpoint, finish).

Each stage (pretrain.py, sft.py, reward.py, ppo.py) writes its own loop, top to bottom, from these
pieces, so the loop stays readable and the pieces stay in one place.

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
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from chatforge import dist
from chatforge.config import OptimConfig
from chatforge.errors import DataError
from chatforge.io import atomic_write_json, atomic_write_text, file_digest

# ----------------------------------------------------------------------------- optimisation


def make_optimizer(params, optim: OptimConfig, lr: float | None = None):
    """AdamW over the trainable parameters of `params` (a model, or a list) at `lr` (default optim.lr); matrices decay,
    vectors (norm gains, biases) do not."""
    params = [p for p in (params.parameters() if isinstance(params, torch.nn.Module) else params) if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=optim.lr if lr is None else lr, betas=(optim.beta1, optim.beta2),
                             fused=fused or None)


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `peak * min_ratio` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def scheduled_lr(optimizer: torch.optim.Optimizer, optim: OptimConfig, step: int, total: int,
                 peak: float | None = None) -> float:
    """Set and return the learning rate of `step` of `total` by `optim`'s schedule (peak: default optim.lr)."""
    lr = lr_at(step, peak=optim.lr if peak is None else peak, warmup=optim.warmup_steps, total=total,
               min_ratio=optim.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def clip_and_step(params, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the global gradient norm of `params` (a model's parameters, or a list) if max_norm > 0, step, zero the
    grads; returns the pre-clip norm."""
    params = [p for p in (params.parameters() if isinstance(params, torch.nn.Module) else params) if p.grad is not None]
    # clip_grad_norm_ in its two halves, so that a sharded model's norm (a sum over shards) is reduced before use
    norm = dist.whole(torch.nn.utils.get_total_norm([p.grad for p in params]))
    torch.nn.utils.clip_grads_with_norm_(params, max_norm if max_norm > 0 else float("inf"), norm)
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


def trained_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint must keep: those being trained (all of them, or only the LoRA adapters; the frozen
    rest is reloaded from where it came from). A tied weight is kept once, under its first name."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def trained_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def gathered(model: torch.nn.Module, optimizers: dict) -> tuple[dict, dict]:
    """(trained weights, optimizer state dicts) in the checkpoint's layout, on rank 0 ({} elsewhere). A sharded model's
    (FSDP2) are gathered from every process's shards: every process calls this."""
    if not dist.sharded(model):
        if not dist.get().is_main:
            return {}, {}
        return trained_weights(model), {key: opt.state_dict() for key, opt in optimizers.items()}
    weights = dist.full_weights(model)
    states = {key: dist.full_optimizer_state(model, opt) for key, opt in optimizers.items()}
    if not dist.get().is_main:
        return {}, {}
    return {n: weights[n] for n in trained_names(model)}, {key: by_number(s) for key, s in states.items()}


def by_number(state: dict) -> dict:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint's) in Optimizer.state_dict()'s layout,
    parameters numbered in the order of the param groups: one checkpoint format, however the run was spread."""
    number = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return {"state": {number[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [number[n] for n in g["params"]]} for g in state["param_groups"]]}


def by_name(state: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """The inverse of `by_number` for `optimizer` over `model`'s parameters: number i is its i-th parameter's name."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


class Checkpointer:
    """stage_dir/checkpoints/step-000100/{model,optimizer}.safetensors + state.json; LATEST points at one."""

    def __init__(self, stage_dir: Path, keep: int = 1):
        self.root = Path(stage_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest checkpoint, or None if there is none. A LATEST that names no checkpoint was damaged after it
        was written (it is replaced only once its checkpoint is whole): a DataError, not a silent fresh start."""
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        try:
            name = pointer.read_bytes().decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise self._damaged(pointer, f"not a checkpoint's name ({e})") from None
        if not re.fullmatch(r"step-\d{7}", name):
            raise self._damaged(pointer, f"not a checkpoint's name: {name[:40]!r}")
        if not (self.root / name / "state.json").exists():
            raise self._damaged(pointer, f"names {name}, which is not a whole checkpoint")
        return self.root / name

    def _damaged(self, path: Path, problem: str) -> DataError:
        return DataError(f"{path}: {problem}; delete {self.root} to start the stage from the beginning")

    def save(self, step: int, model: torch.nn.Module, optimizers: dict, state: dict):
        """Every rank gathers (a sharded model's state is in pieces), rank 0 writes; every rank waits, so none runs
        ahead of a checkpoint it may resume from."""
        weights, optimizer_states = gathered(model, optimizers)
        if dist.get().is_main:
            self._write(f"step-{step:07d}", weights, optimizer_states, {**state, "step": step})
        dist.barrier()

    def _write(self, name: str, weights: dict, optimizer_states: dict, state: dict):
        tmp = self.root / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"))
        tensors: dict = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        skeleton = {k: _flatten(s, f"opt.{k}", tensors) for k, s in optimizer_states.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "optimizer.json", skeleton)
        atomic_write_json(tmp / "state.json", state)
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.root / "LATEST", name + "\n")
        self._prune(keep_name=name)

    def _prune(self, keep_name: str):
        steps = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in steps[: -self.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, model: torch.nn.Module, optimizers: dict) -> dict:
        """Every rank loads the newest checkpoint (a sharded model keeps its shard of each tensor); returns its state.
        A checkpoint that cannot be read back (a damaged disk, a file edited by hand) is a DataError that says how to
        start over."""
        path = self.latest()
        assert path is not None, "load() called without a checkpoint"
        try:
            saved = load_file(str(path / "model.safetensors"))
            tensors = load_file(str(path / "optimizer.safetensors"))
            skeleton = json.loads((path / "optimizer.json").read_text())
            state = json.loads((path / "state.json").read_text())
        except Exception as e:  # noqa: BLE001 - safetensors and json raise their own kinds; all mean "damaged"
            raise self._damaged(path, f"the checkpoint cannot be read ({_first_line(e)})") from None
        if not (isinstance(state, dict) and type(state.get("step")) is int and state["step"] >= 0):
            raise self._damaged(path / "state.json", "field 'step': missing, or not a whole number of steps")
        if set(saved) != set(trained_names(model)):
            raise self._damaged(path, "the checkpoint does not fit the model (another recipe made it)")
        try:
            states = {key: _unflatten(skeleton[key], tensors) for key in optimizers}
            if dist.sharded(model):
                dist.load_full(model, saved, {opt: by_name(states[key], opt, model) for key, opt in optimizers.items()})
            else:
                model.load_state_dict(saved, strict=False)
                for key, opt in optimizers.items():
                    opt.load_state_dict(states[key])
            torch.set_rng_state(tensors["rng.torch"])
        except Exception as e:  # noqa: BLE001 - a skeleton edited by hand fails in as many ways as it can be edited
            raise self._damaged(path, f"the optimizer state cannot be restored ({_first_line(e)})") from None
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        return state


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e).strip() else type(e).__name__


def _check_state(state: dict, fresh: dict, path: Path):
    """A resumed state has every field of a fresh one, of its type: a state.json edited by hand fails here, with its
    name, not as a KeyError in the middle of the stage's loop."""
    for key, value in fresh.items():
        kind = (int, float) if isinstance(value, float) else type(value)
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool) != isinstance(value, bool):
            raise DataError(f"{path}: field {key!r}: missing or not a {type(value).__name__}; delete "
                            f"{path.parent.parent} to start the stage from the beginning")


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
            kept = [line for line, record in _records(self.path) if record["step"] <= resume_step]
            atomic_write_text(self.path, "".join(x + "\n" for x in kept))

    def log(self, record: dict):
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def progress(total: int, initial: int, desc: str):
    tty = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=desc, disable=not dist.get().is_main,
        dynamic_ncols=True, mininterval=1.0 if tty else 30.0, file=sys.stderr, leave=True,
    )


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line torn by a kill is left out."""
    path = Path(path)
    if not path.exists():
        return []
    return [record for _, record in _records(path)]


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each line of a metrics file that is a whole record: a JSON object with a step. A kill can
    tear the last line anywhere, inside a character of a Chinese sample too, so a line that is not UTF-8 or not
    JSON is left out; so is one that is not a record of ours (a list, a step that is not a number)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    out = []
    for line in raw.splitlines():
        try:
            text = line.decode("utf-8")
            record = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            continue
        if isinstance(record, dict) and type(record.get("step")) is int:
            out.append((text, record))
    return out


# ----------------------------------------------------------------------------- the frame of a training stage


class StageRun:
    """The frame every training stage repeats around its own loop, written once:

        run = StageRun("sft", stage_dir, total=cfg.steps, save_every=cfg.save_every)
        state = run.start(model, {"adamw": optimizer}, {"step": 0, ...}, config={...})
        for step in range(state["step"], run.total):
            ...                                    # the stage's own step
            state = {...,"step": step + 1}
            run.end_step(state, record)            # metrics.jsonl, progress bar, checkpoint when due
        return run.finish(summary, model, save, ...)  # the model, then summary.json: the stage is complete

    `start` resumes from the newest checkpoint (model, optimizers, RNG, state) or, starting fresh, writes
    stage_config.json. Whether a stage is already complete is the registry's business (`chatforge.stages`).
    """

    def __init__(self, name: str, stage_dir: Path, total: int, save_every: int, unit: str = "step"):
        self.name, self.dir, self.total, self.save_every, self.unit = name, Path(stage_dir), total, save_every, unit
        self.ckpt = Checkpointer(stage_dir)

    def start(self, model: torch.nn.Module, optimizers: dict, state: dict, config: dict) -> dict:
        """The state to go on from: the newest checkpoint's, else `state` (and the stage's config is written)."""
        d = dist.get()
        if self.ckpt.latest():
            fresh, state = state, self.ckpt.load(model, optimizers)
            _check_state(state, fresh, self.ckpt.latest() / "state.json")
            dist.print0(f"{self.name}: resuming from {self.unit} {state['step']} ({self.ckpt.latest()})")
        elif d.is_main:
            atomic_write_json(self.dir / "stage_config.json", {"stage": self.name, **config, "world_size": d.world_size})
        self.model, self.optimizers = model, optimizers
        self.log = MetricsLog(self.dir / "metrics.jsonl", resume_step=state["step"])
        self.bar = progress(self.total, state["step"], self.name)
        return state

    def due(self, step: int, every: int) -> bool:
        """Whether something done every `every` steps (evaluation, checkpoint) is due after `step` steps."""
        return step % every == 0 or step == self.total

    def end_step(self, state: dict, record: dict, **postfix):
        """Log the step's record, move the progress bar, and checkpoint (model, optimizers, RNG, state) when due."""
        self.log.log(record)
        self.bar.set_postfix(**postfix, refresh=False)
        self.bar.update(1)
        if self.due(state["step"], self.save_every):
            self.ckpt.save(state["step"], self.model, self.optimizers, state)

    def finish(self, summary: dict, model: torch.nn.Module, save: Callable[[Path, dict | None], None],
               message: str) -> dict:
        """Rank 0 saves the model into the stage directory, `save(dir, weights)`, then writes summary.json, the mark of a
        complete stage. weights: None, or, when `model` (the one `save` writes) is sharded, its whole weights, which
        every rank gathers first (to hand to `save_pretrained`: no process holds them)."""
        self.bar.close()
        weights = dist.full_weights(model)
        if dist.get().is_main:
            save(self.dir, weights)
            files = {p.name: file_digest(p) for p in sorted(self.dir.glob("*.safetensors"))}
            atomic_write_json(self.dir / "summary.json", {"stage": self.name, **summary, "files": files})
            shutil.rmtree(self.ckpt.root, ignore_errors=True)  # the model is saved: resuming is over
            print(f"{self.name}: done, {self.dir} ({message})", flush=True)
        dist.barrier()
        return summary
