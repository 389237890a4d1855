"""The reward model: which answers do people prefer? -> runs/<name>/reward/.

The SFT transformer with its unembedding replaced by a linear head that reads one scalar at the
last token (`AutoModelForSequenceClassification`, one label). It learns from K-way rankings with
the InstructGPT loss: for each prompt, every pair of its answers that the annotator ordered,

    loss(prompt) = -1/#pairs · Σ_{i ≻ j} log σ(r(x, y_i) - r(x, y_j))      (ties skipped)

and the batch loss is the mean over prompts. All K answers of a prompt go through the model in the
same forward batch, so K forward passes give C(K, 2) comparisons, and a prompt's pairs, which are
highly correlated, count as one example rather than C(K, 2) (training on shuffled pairs overfits).

Rankings are split by user, never by row: a user's prompts, and so all K answers of each, are
either trained on or held out. After training the reward is shifted so that the SFT model's own
answers score 0 on average; the shift is stored as `reward_bias` in config.json (the Llama
classification head has no bias term of its own) and `load_reward_model` adds it.

The loop, per step: the step's prompts (a permutation per epoch) -> each process its share ->
[prompts x K answers] rewards -> ranking loss -> clip, AdamW, schedule -> log -> now and then
held-out pairwise accuracy and an atomic checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from chatforge import dist
from chatforge.config import Recipe
from chatforge.errors import UserError
from chatforge.tokenizer import IM_END, load_tokenizer, render_chat
from chatforge.train.loop import (
    Checkpointer, EpochOrder, MetricsLog, autocast, clip_and_step, lr_at, make_optimizer, progress, read_metrics, set_lr,
)

STAGE = "reward"


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / STAGE / "summary.json").exists()


# ----------------------------------------------------------------------------- the loss


def preference_pairs(ranks_BK: torch.Tensor, valid_BK: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: entry (b, i, j) is True when answer i of prompt b was ranked above answer j.

    ranks_BK: 0 = best, equal ranks are ties (no pair); valid_BK marks real answers (prompts
    with fewer than K answers are padded)."""
    both = valid_BK[:, :, None] & valid_BK[:, None, :]
    return (ranks_BK[:, :, None] < ranks_BK[:, None, :]) & both


def ranking_loss(rewards_BK: torch.Tensor, ranks_BK: torch.Tensor, valid_BK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per prompt [B], pairs per prompt [B]): -log σ(r_i - r_j) averaged over each prompt's pairs.

    A prompt with no pair (all answers tied) has loss 0 and 0 pairs; average over prompts that have pairs."""
    pairs = preference_pairs(ranks_BK, valid_BK)
    margins = rewards_BK[:, :, None] - rewards_BK[:, None, :]  # [B, K, K]: r_i - r_j
    per_pair = -F.logsigmoid(margins) * pairs
    count = pairs.sum(dim=(1, 2))
    return per_pair.sum(dim=(1, 2)) / count.clamp(min=1), count


def pairwise_accuracy(rewards_BK: torch.Tensor, ranks_BK: torch.Tensor, valid_BK: torch.Tensor) -> tuple[int, int]:
    """(pairs the rewards order like the ranking, pairs): a reward tie counts as half right."""
    pairs = preference_pairs(ranks_BK, valid_BK)
    margins = rewards_BK[:, :, None] - rewards_BK[:, None, :]
    right = ((margins > 0).float() + 0.5 * (margins == 0).float()) * pairs
    return float(right.sum()), int(pairs.sum())


# ----------------------------------------------------------------------------- the model


def answer_ids(tokenizer, messages: list[dict], answer: str, max_len: int) -> list[int]:
    """The conversation and the answer through the chat template, ending at the answer's <|im_end|>,
    which is where the reward is read. Too long: the start of the conversation goes, never the answer."""
    ids, _ = render_chat(tokenizer, messages + [{"role": "assistant", "content": answer}])
    end = tokenizer.convert_tokens_to_ids(IM_END)
    last = max(i for i, t in enumerate(ids) if t == end)
    return ids[: last + 1][-max_len:]


def on_grid(rewards_N: torch.Tensor, valid_BK: torch.Tensor) -> torch.Tensor:
    """[B, K] rewards from the N = valid_BK.sum() real answers (prompt-major), 0 where there is no answer."""
    return torch.zeros(valid_BK.shape, dtype=rewards_N.dtype, device=rewards_N.device).masked_scatter(valid_BK, rewards_N)


def rewards_of(model, ids_NT: torch.Tensor, lengths_N: torch.Tensor) -> torch.Tensor:
    """Scalar reward [N] per right-padded sequence (no bias): the classification model's own forward, which
    reads the head at the last token that is not padding (answers end with <|im_end|>, never with the pad
    token), so a DDP wrapper sees the call and `transformers` computes exactly the same number."""
    mask = (torch.arange(ids_NT.shape[1], device=ids_NT.device)[None, :] < lengths_N[:, None]).long()
    return model(input_ids=ids_NT, attention_mask=mask).logits[:, 0].float()


def pad_sequences(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


@torch.no_grad()
def rewards_of_seqs(model, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Rewards (no bias) of encoded sequences, in batches."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, lengths = pad_sequences(seqs[i : i + batch_size], pad_id)
        out += rewards_of(model, ids.to(device), lengths.to(device)).tolist()
    return out


def score_texts(model, tokenizer, items: list[tuple[list[dict], str]], max_len: int, bias: float = 0.0,
                batch_size: int = 64) -> list[float]:
    """Rewards of (messages, answer) pairs, bias included."""
    seqs = [answer_ids(tokenizer, m, a, max_len) for m, a in items]
    return [r + bias for r in rewards_of_seqs(model, seqs, tokenizer.pad_token_id, batch_size)]


def load_reward_model(path: Path):
    """(model, tokenizer, bias) of a reward directory; the reward is model score + bias."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: no reward model here (run `chatforge reward` first)")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, load_tokenizer(path), float(getattr(model.config, "reward_bias", 0.0))


def _init_model(sft_dir: Path, tokenizer):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point, not a warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id  # HF finds the last real token by it
    torch.nn.init.zeros_(model.score.weight)  # every answer starts at 0: no preference before any data
    return model


# ----------------------------------------------------------------------------- data


class Encoded:
    """A ranking, encoded once: the K answers' token ids (conversation + answer) and their ranks."""

    def __init__(self, ranking, tokenizer, max_len: int):
        self.ranking = ranking
        self.seqs = [answer_ids(tokenizer, ranking.messages, a, max_len) for a in ranking.answers]
        self.ranks = list(ranking.ranks)


def collate(items: list[Encoded], pad_id: int):
    """(ids [N, T], lengths [N], ranks [B, K], valid [B, K]): the N = Σ K_b answers of the B prompts, prompt-major
    (no filler rows for prompts with fewer than K answers: `on_grid` puts their rewards in place)."""
    k = max(len(e.seqs) for e in items)
    seqs, ranks, valid = [], torch.zeros(len(items), k, dtype=torch.long), torch.zeros(len(items), k, dtype=torch.bool)
    for b, e in enumerate(items):
        seqs += e.seqs
        ranks[b, : len(e.ranks)] = torch.tensor(e.ranks)
        valid[b, : len(e.seqs)] = True
    ids, lengths = pad_sequences(seqs, pad_id)
    return ids, lengths, ranks, valid


def load_rankings(run_dir: Path, cfg):
    from chatforge.data.rankings import read_rankings, split_by_user
    from chatforge.feedback import rankings_path

    path = Path(cfg.rankings) if cfg.rankings else rankings_path(run_dir)
    if not path.exists():
        raise UserError(f"{path}: no rankings (run `chatforge sample` and `chatforge rank`, or set reward.rankings)")
    rankings, report = read_rankings(path, skip_invalid=cfg.skip_invalid)
    if report.get("skipped"):
        dist.print0(f"reward: skipped {report['skipped']} invalid rankings in {path}; first: {report['first_errors'][:1]}")
    train, heldout = split_by_user(rankings, cfg.heldout_users, cfg.seed)
    if not train or not heldout:
        raise UserError(f"{path}: {len(rankings)} rankings from too few users to hold some out "
                        f"(reward.heldout_users={cfg.heldout_users})")
    return path, train, heldout


# ----------------------------------------------------------------------------- the stage


def run(run_dir: Path, recipe: Recipe) -> dict:
    run_dir, cfg = Path(run_dir), recipe.reward
    stage_dir = run_dir / STAGE
    if is_complete(run_dir):
        dist.print0(f"reward: {stage_dir} is complete, skipping")
        return json.loads((stage_dir / "summary.json").read_text())
    d = dist.init()
    torch.manual_seed(cfg.seed)
    path, train_r, held_r = load_rankings(run_dir, cfg)  # the user's data first: its errors come before any work
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to start the reward model from (run `chatforge sft` first)")
    tokenizer = load_tokenizer(sft_dir)
    train = [Encoded(r, tokenizer, cfg.max_len) for r in train_r]
    held = [Encoded(r, tokenizer, cfg.max_len) for r in held_r]
    if cfg.batch_size % d.world_size:
        raise UserError(f"reward.batch_size ({cfg.batch_size}) must divide over {d.world_size} processes")
    steps = max(1, math.ceil(cfg.epochs * len(train) / cfg.batch_size))
    model = _init_model(sft_dir, tokenizer).to(d.device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    ckpt = Checkpointer(stage_dir)
    state = {"step": 0, "seconds": 0.0}
    if ckpt.latest():
        state = ckpt.load(model, {"adamw": optimizer})
        dist.print0(f"reward: resuming from step {state['step']} ({ckpt.latest()})")
    elif d.is_main:
        from chatforge.io import atomic_write_json

        atomic_write_json(stage_dir / "stage_config.json", {"stage": STAGE, "reward": asdict(cfg), "rankings": str(path),
                                                            "steps": steps, "world_size": d.world_size})
    train_model = dist.wrap(model)
    order = EpochOrder(len(train), cfg.seed)
    log = MetricsLog(stage_dir / "metrics.jsonl", resume_step=state["step"])
    k_mean = sum(len(e.seqs) for e in train) / len(train)
    dist.print0(f"reward: {len(train)} training prompts (K = {k_mean:.1f} on average), {len(held)} held out "
                f"(users split), {steps} steps of {cfg.batch_size} prompts, {d.world_size} process(es)")
    bar = progress(steps, state["step"], "reward")
    for step in range(state["step"], steps):
        t0 = time.perf_counter()
        lr = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=steps, min_ratio=cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        items = [train[i] for i in dist.my_share(order.indices(step, cfg.batch_size))]
        ids, lengths, ranks, valid = (x.to(d.device) for x in collate(items, tokenizer.pad_token_id))
        loss, acc = _step_loss(train_model, ids, lengths, ranks, valid, cfg, d)
        grad_norm = clip_and_step(train_model, optimizer, cfg.grad_clip)
        seconds = time.perf_counter() - t0
        state = {"step": step + 1, "seconds": state["seconds"] + seconds}
        record = {"step": step + 1, "loss": round(loss, 6), "accuracy": round(acc, 4), "lr": lr,
                  "grad_norm": round(grad_norm, 4), "seconds": round(seconds, 3)}
        last = step + 1 == steps
        if (step + 1) % cfg.eval_every == 0 or last:
            record["val/accuracy"] = round(evaluate(model, held, tokenizer.pad_token_id, d), 4)
            bar.write(f"step {step + 1}: held-out pairwise accuracy {record['val/accuracy']:.3f}")
        log.log(record)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}", refresh=False)
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 or last:
            ckpt.save(step + 1, model, {"adamw": optimizer}, state)
    bar.close()
    return _finish(run_dir, stage_dir, model, tokenizer, train, held, cfg, state, d)


def _step_loss(train_model, ids, lengths, ranks, valid, cfg, d) -> tuple[float, float]:
    """Forward/backward this process's prompts; returns (mean loss over prompts, pairwise accuracy) of the global batch."""
    with autocast(d.device, cfg.dtype):
        rewards = on_grid(rewards_of(train_model, ids, lengths), valid)
    per_prompt, pairs = ranking_loss(rewards, ranks, valid)
    prompts = dist.all_reduce_sum((pairs > 0).float().sum()).clamp(min=1)  # prompts with pairs, all processes
    # DDP averages gradients over processes, so each scales its sum by N / prompts: the mean over prompts
    (per_prompt.sum() * d.world_size / prompts).backward()
    right, total = pairwise_accuracy(rewards.detach(), ranks, valid)
    sums = dist.all_reduce_sum(torch.tensor([float(per_prompt.detach().sum()), right, float(total)], device=d.device))
    return float(sums[0] / prompts), float(sums[1] / max(float(sums[2]), 1.0))


@torch.no_grad()
def evaluate(model, held: list[Encoded], pad_id: int, d, batch: int = 16) -> float:
    """Pairwise accuracy on held-out rankings against their own order (each process every N-th prompt)."""
    model.eval()
    right, total = 0.0, 0
    mine = held[d.rank :: d.world_size]
    for i in range(0, len(mine), batch):
        ids, lengths, ranks, valid = (x.to(d.device) for x in collate(mine[i : i + batch], pad_id))
        r, t = pairwise_accuracy(on_grid(rewards_of(model, ids, lengths), valid), ranks, valid)
        right, total = right + r, total + t
    sums = dist.all_reduce_sum(torch.tensor([right, float(total)], device=d.device))
    model.train()
    return float(sums[0] / sums[1].clamp(min=1))


def _finish(run_dir, stage_dir, model, tokenizer, train, held, cfg, state, d) -> dict:
    from chatforge.io import atomic_write_json

    records = read_metrics(stage_dir / "metrics.jsonl") if d.is_main else []
    final = records[-1] if records else {}
    summary = {"stage": STAGE, "steps": state["step"], "train_seconds": round(state["seconds"], 1),
               "train_prompts": len(train), "heldout_prompts": len(held), "final_loss": final.get("loss"),
               "val_accuracy": final.get("val/accuracy"), "world_size": d.world_size}
    if d.is_main:
        model.eval()
        # The SFT model's answers score 0 on average: the reward's zero means "as good as SFT already is".
        raw = rewards_of_seqs(model, [seq for e in train for seq in e.seqs], tokenizer.pad_token_id)
        model.config.reward_bias = -sum(raw) / len(raw)
        summary["reward_bias"] = round(model.config.reward_bias, 6)
        model.save_pretrained(str(stage_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(stage_dir))
        atomic_write_json(stage_dir / "summary.json", summary)
        print(f"reward: done, {stage_dir} (loss {summary['final_loss']}, held-out pairwise accuracy "
              f"{summary['val_accuracy']}, bias {summary['reward_bias']:+.3f})", flush=True)
    dist.barrier()
    return summary
