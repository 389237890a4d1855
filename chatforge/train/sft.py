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
With `sft.lora.rank > 0` only LoRA adapters train (via peft) and are merged into the weights on save.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from chatforge import dist
from chatforge.config import ComputeConfig, Recipe, SFTConfig, check_context
from chatforge.data.dialogues import padded, sft_dialogues
from chatforge.data.corpus import corpus_dir, token_cache
from chatforge.data.mixture import MixtureSampler, load_mixture
from chatforge.errors import ConfigError, UserError
from chatforge.io import atomic_write_json
from chatforge.model import (
    CAUSAL_LM, load_causal_lm, memory_savers, model_config, num_params, num_trained, save_pretrained, weights_dtype,
    with_lora,
)
from chatforge.paths import base_model, has_corpus, has_world
from chatforge.scoring import masked_token_loss, next_token_loss
from chatforge.tokenizer import load_tokenizer
from chatforge.train.loop import EpochOrder, StageRun, autocast, clip_and_step, make_optimizer, read_metrics, scheduled_lr

def run(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    run_dir, cfg = Path(run_dir), recipe.sft
    d = dist.get()
    torch.manual_seed(cfg.seed)
    base_dir = base_model(run_dir, recipe.model.base)
    if not (base_dir / "config.json").exists():
        raise UserError(f"{base_dir}: no base model to fine-tune (run `chatforge pretrain --run {run_dir}` first, "
                        f"or give your own with --base-model)")
    tokenizer = load_tokenizer(base_dir)
    context = model_config(base_dir).max_position_embeddings
    check_context("sft.max_len", cfg.max_len, context)
    if not cfg.data and not has_world(run_dir):
        return _adopt(base_dir, tokenizer, out, d)
    train, val = sft_dialogues(run_dir, cfg, tokenizer)
    num_replay, num_sft = _split_batch(cfg, d.world_size, has_corpus(run_dir, recipe.pretrain.corpus))
    if num_replay:  # replayed windows go through the model too
        check_context("sft.replay_len", cfg.replay_len, context)
    replay = _replay_sampler(run_dir, recipe, tokenizer) if num_replay else None
    model = _load_model(base_dir, cfg, recipe.compute, d)
    train_model = dist.wrap(model, cfg.dtype)  # before the optimizer: FSDP2 replaces the parameters by shards
    optimizer = make_optimizer(model, cfg.optim)
    frame = StageRun("sft", out, total=cfg.steps, save_every=cfg.save_every)
    state = frame.start(model, {"adamw": optimizer}, {"step": 0, "seconds": 0.0, "tokens": 0},
                        {"sft": asdict(cfg), "base": str(base_dir)})
    order = EpochOrder(len(train), cfg.seed)
    dist.print0(f"sft: {len(train)} dialogues, {num_params(model) / 1e6:.2f}M parameters ({num_trained(model) / 1e6:.2f}M "
                f"trained), batch {cfg.batch_size} = {num_sft} dialogues + {num_replay} replay windows, "
                f"{d.world_size} process(es)")

    for step in range(state["step"], cfg.steps):
        t0 = time.perf_counter()
        lr = scheduled_lr(optimizer, cfg.optim, step, cfg.steps)
        dialogues = [train[i] for i in dist.my_share(order.indices(step, num_sft))]
        windows = replay.rank_rows(step, num_replay) if replay else None
        sft_loss, replay_loss, tokens = _accumulate(train_model, dialogues, windows, cfg, tokenizer.pad_token_id, d)
        grad_norm = clip_and_step(train_model, optimizer, cfg.optim.grad_clip)
        seconds = time.perf_counter() - t0
        state = {"step": step + 1, "seconds": state["seconds"] + seconds, "tokens": state["tokens"] + tokens}
        record = {"step": step + 1, "loss": round(sft_loss, 6), "replay_loss": round(replay_loss, 6), "lr": lr,
                  "grad_norm": round(grad_norm, 4), "assistant_tokens": tokens, "seconds": round(seconds, 3)}
        if frame.due(step + 1, cfg.eval_every):
            record["val/loss"] = evaluate(model, val, cfg, tokenizer.pad_token_id, d)
            frame.bar.write(f"step {step + 1}: held-out dialogue loss {record['val/loss']:.4f}")
        frame.end_step(state, record, loss=f"{sft_loss:.3f}", replay=f"{replay_loss:.3f}")
    return _finish(frame, model, tokenizer, cfg, state, d)


def _accumulate(model, dialogues, windows, cfg: SFTConfig, pad_id: int, d) -> tuple[float, float, int]:
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
                ids, mask = (x.to(d.device) for x in padded(chunk, pad_id))
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
def evaluate(model, val, cfg: SFTConfig, pad_id: int, d) -> float:
    """Mean cross-entropy per assistant token on held-out dialogues (each process takes every N-th)."""
    model.eval()
    total = torch.zeros(2, device=d.device)
    for batch, counts in dist.eval_batches(val, cfg.micro_batch_size, model):
        ids, mask = (x.to(d.device) for x in padded(batch, pad_id))
        with autocast(d.device, cfg.dtype):
            loss_sum, count = masked_token_loss(model(input_ids=ids).logits, ids, mask)
        if counts:
            total += torch.stack([loss_sum.detach(), count])
    total = dist.all_reduce_sum(total)
    model.train()
    return round(float(total[0] / total[1].clamp(min=1)), 6)


def _split_batch(cfg: SFTConfig, world_size: int, corpus: bool) -> tuple[int, int]:
    """(replay windows, dialogues) per step; no replay where there is no pretraining corpus (your own model)."""
    if not corpus and cfg.replay > 0:
        dist.print0("sft: no pretraining corpus in this run, so no replay (sft.replay is ignored)")
    num_replay = round(cfg.batch_size * cfg.replay) if corpus else 0
    num_sft = cfg.batch_size - num_replay
    for name, n in (("dialogues", num_sft), ("replay windows", num_replay)):
        if n % world_size:
            raise ConfigError(f"sft.batch_size x sft.replay gives {n} {name} per step, which does not divide over {world_size} processes")
    if num_sft == 0:
        raise ConfigError("sft.batch_size and sft.replay leave no dialogues in a batch")
    return num_replay, num_sft


def _replay_sampler(run_dir: Path, recipe: Recipe, tokenizer) -> MixtureSampler:
    # Not pretraining's order (replay should not retrace its steps) and windows of replay_len tokens.
    sampler, _ = load_mixture(corpus_dir(run_dir, recipe.pretrain.corpus), token_cache(run_dir), tokenizer,
                              recipe.pretrain.mixture, recipe.sft.replay_len, recipe.sft.seed + 1)
    dist.print0(f"sft: replay mixture {sampler.describe()}")
    return sampler


def _load_model(base_dir: Path, cfg: SFTConfig, compute: ComputeConfig, d: dist.Dist):
    """The model to fine-tune on this process's device: every weight in fp32, or, with LoRA, a frozen base (bf16 on
    CUDA) under fp32 adapters."""
    model = load_causal_lm(base_dir, d.device, weights_dtype(d.device, cfg.dtype, trained=not cfg.lora.rank))
    return memory_savers(with_lora(model, cfg.lora, CAUSAL_LM), compute.grad_checkpointing)


def _adopt(base_dir: Path, tokenizer, out: Path, d: dist.Dist) -> dict:
    """With your own model and no dialogues of your own, the model is already the chat model the later stages
    start from: sft/ is that model, unchanged."""
    dist.print0(f"sft: no dialogues given (--sft-data), so {base_dir} is the SFT model as it is")
    if d.is_main:
        save_pretrained(load_causal_lm(base_dir), tokenizer, out)
        atomic_write_json(out / "summary.json", {"stage": "sft", "steps": 0, "adopted": str(base_dir)})
    dist.barrier()
    return {"steps": 0, "adopted": str(base_dir)}


def _finish(frame: StageRun, model, tokenizer, cfg: SFTConfig, state: dict, d) -> dict:
    records = read_metrics(frame.dir / "metrics.jsonl") if d.is_main else []
    final = records[-1] if records else {}
    summary = {"steps": state["step"], "train_seconds": round(state["seconds"], 1),
               "assistant_tokens": state["tokens"], "final_loss": final.get("loss"), "val_loss": final.get("val/loss"),
               "lora_rank": cfg.lora.rank, "world_size": d.world_size}
    return frame.finish(summary, model, lambda out, weights: save_pretrained(model, tokenizer, out, cfg.lora, weights),
                        f"loss {summary['final_loss']}, held-out {summary['val_loss']}")
