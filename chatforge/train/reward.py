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

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from chatforge import dist
from chatforge.config import ComputeConfig, Recipe, RewardConfig, check_context
from chatforge.data.rankings import Ranking, format_report, read_rankings, split_by_user
from chatforge.errors import UserError
from chatforge.paths import rankings_path
from chatforge.model import SEQ_CLS, load_sequence_classifier, memory_savers, model_config, save_pretrained, with_lora
from chatforge.scoring import answer_ids, pad_right, reward_pad_id, rewards_of, rewards_of_seqs
from chatforge.tokenizer import load_tokenizer
from chatforge.train.loop import EpochOrder, StageRun, autocast, clip_and_step, make_optimizer, read_metrics, scheduled_lr


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


def on_grid(rewards_N: torch.Tensor, valid_BK: torch.Tensor) -> torch.Tensor:
    """[B, K] rewards from the N = valid_BK.sum() real answers (prompt-major), 0 where there is no answer."""
    return torch.zeros(valid_BK.shape, dtype=rewards_N.dtype, device=rewards_N.device).masked_scatter(valid_BK, rewards_N)


def _init_model(sft_dir: Path, tokenizer, cfg: RewardConfig, compute: ComputeConfig, d: dist.Dist):
    """The SFT transformer with a scalar head (zero: no preference before any data), in fp32 on this process's
    device; with LoRA, adapters on it and the head trained whole."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point, not a warning
    try:
        model = load_sequence_classifier(sft_dir, d.device, torch.float32, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = reward_pad_id(tokenizer)  # transformers finds the last real token by it
    torch.nn.init.zeros_(model.score.weight)  # every answer starts at 0: no preference before any data
    return memory_savers(with_lora(model, cfg.lora, SEQ_CLS), compute.grad_checkpointing)


class Encoded:
    """A ranking, encoded once: the K answers' token ids (conversation + answer) and their ranks."""

    def __init__(self, ranking: Ranking, tokenizer, max_len: int):
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
    ids, lengths = pad_right(seqs, pad_id)
    return ids, lengths, ranks, valid


def load_rankings(run_dir: Path, cfg: RewardConfig) -> tuple[Path, list[Ranking], list[Ranking]]:
    """(path, training rankings, held-out rankings): split by user, never by row."""
    path = rankings_path(run_dir, cfg.rankings)
    if not path.exists():
        raise UserError(f"{path}: no rankings (run `chatforge sample` and `chatforge rank`, or set reward.rankings)")
    rankings, report = read_rankings(path, skip_invalid=cfg.skip_invalid)
    dist.print0("reward: " + format_report(report))
    if not any(len(set(r.ranks)) > 1 for r in rankings):
        raise UserError(f"{path}: every one of its {len(rankings)} rankings ties all its answers, so there is no "
                        f"pair to learn a preference from")
    train, heldout = split_by_user(rankings, cfg.heldout_users, cfg.seed)
    if not train or not heldout:
        raise UserError(f"{path}: {len(rankings)} rankings from too few users to hold some out "
                        f"(reward.heldout_users={cfg.heldout_users})")
    return path, train, heldout


# ----------------------------------------------------------------------------- the stage


def run(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    run_dir, cfg = Path(run_dir), recipe.reward
    d = dist.get()
    torch.manual_seed(cfg.seed)
    path, train_r, held_r = load_rankings(run_dir, cfg)  # the user's data first: its errors come before any work
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to start the reward model from (run `chatforge sft` first)")
    tokenizer = load_tokenizer(sft_dir)
    check_context("reward.max_len", cfg.max_len, model_config(sft_dir).max_position_embeddings)
    train = [Encoded(r, tokenizer, cfg.max_len) for r in train_r]
    held = [Encoded(r, tokenizer, cfg.max_len) for r in held_r]
    if cfg.batch_size % d.world_size:
        raise UserError(f"reward.batch_size ({cfg.batch_size}) must divide over {d.world_size} processes")
    steps = max(1, math.ceil(cfg.epochs * len(train) / cfg.batch_size))
    model = _init_model(sft_dir, tokenizer, cfg, recipe.compute, d)
    train_model = dist.wrap(model, cfg.dtype)  # before the optimizer: FSDP2 replaces the parameters by shards
    optimizer = make_optimizer(model, cfg.optim)
    frame = StageRun("reward", out, total=steps, save_every=cfg.save_every)
    state = frame.start(model, {"adamw": optimizer}, {"step": 0, "seconds": 0.0},
                        {"reward": asdict(cfg), "rankings": str(path), "steps": steps})
    order = EpochOrder(len(train), cfg.seed)
    pad_id = reward_pad_id(tokenizer)
    k_mean = sum(len(e.seqs) for e in train) / len(train)
    dist.print0(f"reward: {len(train)} training prompts (K = {k_mean:.1f} on average), {len(held)} held out "
                f"(users split), {steps} steps of {cfg.batch_size} prompts, {d.world_size} process(es)")
    for step in range(state["step"], steps):
        t0 = time.perf_counter()
        lr = scheduled_lr(optimizer, cfg.optim, step, steps)
        items = [train[i] for i in dist.my_share(order.indices(step, cfg.batch_size))]
        ids, lengths, ranks, valid = (x.to(d.device) for x in collate(items, pad_id))
        loss, acc = _step_loss(train_model, ids, lengths, ranks, valid, cfg, d)
        grad_norm = clip_and_step(train_model, optimizer, cfg.optim.grad_clip)
        seconds = time.perf_counter() - t0
        state = {"step": step + 1, "seconds": state["seconds"] + seconds}
        record = {"step": step + 1, "loss": round(loss, 6), "accuracy": round(acc, 4), "lr": lr,
                  "grad_norm": round(grad_norm, 4), "seconds": round(seconds, 3)}
        if frame.due(step + 1, cfg.eval_every):
            record["val/accuracy"] = round(evaluate(model, held, pad_id, d), 4)
            frame.bar.write(f"step {step + 1}: held-out pairwise accuracy {record['val/accuracy']:.3f}")
        frame.end_step(state, record, loss=f"{loss:.3f}", acc=f"{acc:.2f}")
    return _finish(frame, model, tokenizer, train, held, state, cfg, d)


def _step_loss(train_model, ids, lengths, ranks, valid, cfg: RewardConfig, d) -> tuple[float, float]:
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
    for items, counts in dist.eval_batches(held, batch, model):
        ids, lengths, ranks, valid = (x.to(d.device) for x in collate(items, pad_id))
        r, t = pairwise_accuracy(on_grid(rewards_of(model, ids, lengths), valid), ranks, valid)
        if counts:
            right, total = right + r, total + t
    sums = dist.all_reduce_sum(torch.tensor([right, float(total)], device=d.device))
    model.train()
    return float(sums[0] / sums[1].clamp(min=1))


def _finish(frame: StageRun, model, tokenizer, train: list[Encoded], held: list[Encoded], state: dict,
            cfg: RewardConfig, d: dist.Dist) -> dict:
    records = read_metrics(frame.dir / "metrics.jsonl") if d.is_main else []
    final = records[-1] if records else {}
    summary = {"steps": state["step"], "train_seconds": round(state["seconds"], 1),
               "train_prompts": len(train), "heldout_prompts": len(held), "final_loss": final.get("loss"),
               "val_accuracy": final.get("val/accuracy"), "world_size": d.world_size}
    if d.is_main or dist.sharded(model):  # each forward of a sharded model needs every process (all get the same bias)
        model.eval()
        # The SFT model's answers score 0 on average: the reward's zero means "as good as SFT already is".
        every = math.ceil(len(train) / cfg.bias_prompts)  # 1, all of them, on the laptop's 1.5k prompts
        raw = rewards_of_seqs(model, [seq for e in train[::every] for seq in e.seqs], reward_pad_id(tokenizer))
        bias = -sum(raw) / len(raw)
        (model.get_base_model() if cfg.lora.rank else model).config.reward_bias = bias
        summary["reward_bias"] = round(bias, 6)
    return frame.finish(summary, model, lambda out, weights: save_pretrained(model, tokenizer, out, cfg.lora, weights),
                        f"loss {summary['final_loss']}, held-out pairwise accuracy {summary['val_accuracy']}, "
                        f"bias {summary.get('reward_bias', 0.0):+.3f}")
