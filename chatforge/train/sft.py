"""Supervised fine-tuning: the base model learns to answer, from dialogues -> runs/<name>/sft/.

Each dialogue goes through the tokenizer's chat template once (`render_chat`), which marks the
assistant turns; the loss is cross-entropy on those tokens only, every assistant turn of a
multi-turn dialogue included, never the user's or the system's.

Part of every batch is "replay": windows of the pretraining mixture, trained with the plain
next-token loss. Without it a small model forgets, within a few hundred steps, the facts it
learnt in pretraining about entities the dialogues never mention.

The loop, per optimizer step:
  the step's dialogues (a fixed permutation per epoch) + the step's replay windows (seeded by the step)
  -> each process: its share, in micro-batches; loss = (1 - replay)·SFT + replay·replay loss
  -> clip, AdamW, schedule -> log -> now and then held-out dialogue loss and an atomic checkpoint.
With `lora_rank > 0` only LoRA adapters train (via peft) and are merged into the weights on save.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from chatforge import dist
from chatforge.config import Recipe
from chatforge.errors import ConfigError, UserError
from chatforge.model import load_causal_lm, num_params, save_pretrained
from chatforge.tokenizer import load_tokenizer, render_chat
from chatforge.train.loop import (
    Checkpointer, EpochOrder, MetricsLog, autocast, clip_and_step, lr_at, make_optimizer, progress, read_metrics, set_lr,
)
from chatforge.train.pretrain import next_token_loss

STAGE = "sft"


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / STAGE / "summary.json").exists()


def masked_token_loss(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, number of tokens) over the positions where mask_BT is 1.

    Position t's logits predict token t+1, so the target mask is mask_BT[:, 1:]: a token is
    trained exactly when the chat template marked it as assistant output.
    """
    targets = ids_BT[:, 1:]
    weights = mask_BT[:, 1:].float()
    ce = F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (ce * weights.flatten()).sum(), weights.sum()


def encode_dialogues(tokenizer, dialogues: list[list[dict]], max_len: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """(ids, loss mask) per dialogue, cut to max_len; dialogues left with nothing to train are dropped."""
    encoded, dropped = [], 0
    for messages in dialogues:
        ids, mask = render_chat(tokenizer, messages)
        ids, mask = ids[:max_len], mask[:max_len]
        if sum(mask[1:]) == 0:
            dropped += 1
            continue
        encoded.append((torch.tensor(ids), torch.tensor(mask)))
    return encoded, dropped


def pad_right(batch: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T], mask [B, T]; padding goes on the right, where causal attention never looks back at it."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, m) in enumerate(batch):
        ids[i, : len(x)], mask[i, : len(m)] = x, m
    return ids, mask


def run(run_dir: Path, recipe: Recipe) -> dict:
    run_dir, cfg = Path(run_dir), recipe.sft
    stage_dir = run_dir / STAGE
    if is_complete(run_dir):
        dist.print0(f"sft: {stage_dir} is complete, skipping")
        return json.loads((stage_dir / "summary.json").read_text())
    d = dist.init()
    torch.manual_seed(cfg.seed)
    base_dir = run_dir / "base"
    if not (base_dir / "config.json").exists():
        raise UserError(f"{base_dir}: no base model to fine-tune (run `chatforge pretrain --run {run_dir}` first)")
    tokenizer = load_tokenizer(base_dir)
    train, val = _load_dialogues(run_dir, cfg, tokenizer)
    num_replay, num_sft = _split_batch(cfg, d.world_size)
    replay = _replay_sampler(run_dir, recipe, tokenizer) if num_replay else None
    model = _load_model(base_dir, cfg).to(d.device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    ckpt = Checkpointer(stage_dir)
    state = {"step": 0, "seconds": 0.0, "tokens": 0}
    if ckpt.latest():
        state = ckpt.load(model, {"adamw": optimizer})
        dist.print0(f"sft: resuming from step {state['step']} ({ckpt.latest()})")
    elif d.is_main:
        _write_stage_config(stage_dir, cfg, d)
    train_model = dist.wrap(model)
    order = EpochOrder(len(train), cfg.seed)
    log = MetricsLog(stage_dir / "metrics.jsonl", resume_step=state["step"])
    dist.print0(f"sft: {len(train)} dialogues, {num_params(model) / 1e6:.2f}M parameters "
                f"({sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained), "
                f"batch {cfg.batch_size} = {num_sft} dialogues + {num_replay} replay windows, {d.world_size} process(es)")
    bar = progress(cfg.steps, state["step"], "sft")

    for step in range(state["step"], cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        dialogues = [train[i] for i in dist.my_share(order.indices(step, num_sft))]
        windows = replay.rank_rows(step, num_replay) if replay else None
        sft_loss, replay_loss, tokens = _accumulate(train_model, dialogues, windows, cfg, tokenizer.pad_token_id, d)
        grad_norm = clip_and_step(train_model, optimizer, cfg.grad_clip)
        seconds = time.perf_counter() - t0
        state = {"step": step + 1, "seconds": state["seconds"] + seconds, "tokens": state["tokens"] + tokens}
        record = {"step": step + 1, "loss": round(sft_loss, 6), "replay_loss": round(replay_loss, 6), "lr": lr,
                  "grad_norm": round(grad_norm, 4), "assistant_tokens": tokens, "seconds": round(seconds, 3)}
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or last:
            record["val/loss"] = evaluate(model, val, cfg, tokenizer.pad_token_id, d)
            bar.write(f"step {step + 1}: held-out dialogue loss {record['val/loss']:.4f}")
        log.log(record)
        bar.set_postfix(loss=f"{sft_loss:.3f}", replay=f"{replay_loss:.3f}", refresh=False)
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 or last:
            ckpt.save(step + 1, model, {"adamw": optimizer}, state)
    bar.close()
    return _finish(stage_dir, model, tokenizer, cfg, state, d)


def _accumulate(model, dialogues, windows, cfg, pad_id: int, d) -> tuple[float, float, int]:
    """Forward/backward this process's share of one step; returns (SFT loss, replay loss, assistant tokens)."""
    local_tokens = sum(int(m[1:].sum()) for _, m in dialogues)
    global_tokens = float(dist.all_reduce_sum(torch.tensor(float(local_tokens))))
    # DDP averages gradients over processes, so each scales its token sum by N / (global token count):
    # the mean over processes is then the mean over every assistant token of the global batch.
    sft_scale = (1 - cfg.replay) * d.world_size / max(global_tokens, 1.0)
    chunks = [("sft", dialogues[i : i + cfg.micro_batch_size]) for i in range(0, len(dialogues), cfg.micro_batch_size)]
    if windows is not None:
        chunks += [("replay", windows[i : i + cfg.micro_batch_size]) for i in range(0, len(windows), cfg.micro_batch_size)]
    # Sums stay on the device: reading them back per micro-batch would sync the GPU each time.
    sft_sum, replay_sum = torch.zeros((), device=d.device), torch.zeros((), device=d.device)
    for i, (kind, chunk) in enumerate(chunks):
        with dist.no_sync(model, sync=i == len(chunks) - 1), autocast(d.device, cfg.dtype):
            if kind == "sft":
                ids, mask = (x.to(d.device) for x in pad_right(chunk, pad_id))
                loss_sum, _ = masked_token_loss(model(input_ids=ids).logits, ids, mask)
                (loss_sum * sft_scale).backward()
                sft_sum += loss_sum.detach()
            else:
                loss = next_token_loss(model, chunk.to(d.device))
                (loss * cfg.replay * len(chunk) / len(windows)).backward()
                replay_sum += loss.detach() * len(chunk) / len(windows)
    sft_loss = float(dist.all_reduce_sum(sft_sum)) / max(global_tokens, 1.0)
    replay_loss = float(dist.all_reduce_mean(replay_sum)) if windows is not None else 0.0
    return sft_loss, replay_loss, int(global_tokens)


@torch.no_grad()
def evaluate(model, val, cfg, pad_id: int, d) -> float:
    """Mean cross-entropy per assistant token on held-out dialogues (each process takes every N-th)."""
    model.eval()
    total = torch.zeros(2, device=d.device)
    mine = val[d.rank :: d.world_size]
    for i in range(0, len(mine), cfg.micro_batch_size):
        ids, mask = (x.to(d.device) for x in pad_right(mine[i : i + cfg.micro_batch_size], pad_id))
        with autocast(d.device, cfg.dtype):
            loss_sum, count = masked_token_loss(model(input_ids=ids).logits, ids, mask)
        total += torch.stack([loss_sum.detach(), count])
    total = dist.all_reduce_sum(total)
    model.train()
    return round(float(total[0] / total[1].clamp(min=1)), 6)


def _split_batch(cfg, world_size: int) -> tuple[int, int]:
    num_replay = round(cfg.batch_size * cfg.replay)
    num_sft = cfg.batch_size - num_replay
    for name, n in (("dialogues", num_sft), ("replay windows", num_replay)):
        if n % world_size:
            raise ConfigError(f"sft.batch_size x sft.replay gives {n} {name} per step, which does not divide over {world_size} processes")
    if num_sft == 0:
        raise ConfigError("sft.batch_size and sft.replay leave no dialogues in a batch")
    return num_replay, num_sft


def _load_dialogues(run_dir: Path, cfg, tokenizer):
    from chatforge.data.chat import format_report, read_dialogues

    world = run_dir / "data" / "dialogues"
    train_path = Path(cfg.data) if cfg.data else world / "train.jsonl"
    train_msgs, report = read_dialogues(train_path, fmt=cfg.format, skip_invalid=cfg.skip_invalid)
    dist.print0("sft: " + format_report(report))
    val_path = Path(cfg.val_data) if cfg.val_data else (None if cfg.data else world / "val.jsonl")
    val_msgs = read_dialogues(val_path, fmt=cfg.format, skip_invalid=cfg.skip_invalid)[0] if val_path else []
    train, dropped = encode_dialogues(tokenizer, train_msgs, cfg.max_len)
    val, _ = encode_dialogues(tokenizer, val_msgs, cfg.max_len)
    if dropped:
        dist.print0(f"sft: {dropped} dialogues had no assistant token within sft.max_len={cfg.max_len} and were dropped")
    if val_path is None:  # the user's own data with no held-out file: keep 2% (at least one dialogue) back
        held = max(1, len(train) // 50)
        train, val = train[:-held], train[-held:]
    if not train or not val:
        raise UserError(f"{train_path}: no dialogue left to train on or to hold out after encoding (sft.max_len={cfg.max_len})")
    return train, val


def _replay_sampler(run_dir: Path, recipe: Recipe, tokenizer):
    from chatforge.train.pretrain import load_mixture

    # Not pretraining's order (replay should not retrace its steps) and windows of replay_len tokens.
    cfg = replace(recipe.pretrain, seq_len=recipe.sft.replay_len, seed=recipe.sft.seed + 1)
    sampler, _ = load_mixture(run_dir, cfg, tokenizer)
    return sampler


def _load_model(base_dir: Path, cfg):
    model = load_causal_lm(base_dir)
    if not cfg.lora_rank:
        return model
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _write_stage_config(stage_dir: Path, cfg, d):
    from chatforge.io import atomic_write_json

    atomic_write_json(stage_dir / "stage_config.json", {"stage": STAGE, "sft": asdict(cfg), "world_size": d.world_size})


def _finish(stage_dir: Path, model, tokenizer, cfg, state: dict, d) -> dict:
    from chatforge.io import atomic_write_json

    records = read_metrics(stage_dir / "metrics.jsonl") if d.is_main else []
    final = records[-1] if records else {}
    summary = {"stage": STAGE, "steps": state["step"], "train_seconds": round(state["seconds"], 1),
               "assistant_tokens": state["tokens"], "final_loss": final.get("loss"), "val_loss": final.get("val/loss"),
               "lora_rank": cfg.lora_rank, "world_size": d.world_size}
    if d.is_main:
        plain = model.merge_and_unload() if cfg.lora_rank else model  # a plain HF directory either way
        save_pretrained(plain, tokenizer, stage_dir)
        atomic_write_json(stage_dir / "summary.json", summary)
        print(f"sft: done, {stage_dir} (loss {summary['final_loss']}, held-out {summary['val_loss']})", flush=True)
    dist.barrier()
    return summary
