"""Dialogues as SFT trains on them: read (the formats of `data.chat`), held out, rendered through the model's chat
template into (ids, loss mask) pairs, and padded into batches. SFT trains on them; the evaluation measures the
held-out loss on the same held-out dialogues."""

from __future__ import annotations

from pathlib import Path

import torch

from chatforge import dist
from chatforge.config import SFTConfig
from chatforge.data.chat import format_report, read_dialogues
from chatforge.errors import UserError
from chatforge.paths import world_data
from chatforge.scoring import pad_right
from chatforge.tokenizer import render_chat

HOLDOUT_EVERY = 50  # your own dialogues with no held-out file: one in this many (at least one) is held out

Encoded = tuple[torch.Tensor, torch.Tensor]  # (ids [T], loss mask [T])


def encode_dialogues(tokenizer, dialogues: list[list[dict]], max_len: int) -> tuple[list[Encoded], int]:
    """(ids, loss mask) per dialogue, cut to max_len; dialogues left with nothing to train are dropped."""
    encoded, dropped = [], 0
    for messages in dialogues:
        ids, mask = render_chat(tokenizer, messages, max_tokens=max_len)
        ids, mask = ids[:max_len], mask[:max_len]
        if sum(mask[1:]) == 0:
            dropped += 1
            continue
        encoded.append((torch.tensor(ids), torch.tensor(mask)))
    return encoded, dropped


def padded(batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] (pad_id after each dialogue) and mask [B, T] (0 there) of a batch of encoded dialogues."""
    return pad_right([x for x, _ in batch], pad_id)[0], pad_right([m for _, m in batch], 0)[0]


def sft_dialogues(run_dir: Path, cfg: SFTConfig, tokenizer, quiet: bool = False) -> tuple[list[Encoded], list[Encoded]]:
    """(training, held-out) dialogues, encoded: the user's (`sft.data`, held out by `sft.val_data` or one in
    HOLDOUT_EVERY) or the built-in world's."""
    world = world_data(run_dir) / "dialogues"
    train_path = Path(cfg.data) if cfg.data else world / "train.jsonl"
    train_msgs, report = read_dialogues(train_path, fmt=cfg.format, skip_invalid=cfg.skip_invalid)
    val_path = Path(cfg.val_data) if cfg.val_data else (None if cfg.data else world / "val.jsonl")
    val_msgs = read_dialogues(val_path, fmt=cfg.format, skip_invalid=cfg.skip_invalid)[0] if val_path else []
    train, dropped = encode_dialogues(tokenizer, train_msgs, cfg.max_len)
    val, _ = encode_dialogues(tokenizer, val_msgs, cfg.max_len)
    if not quiet:
        dist.print0("sft: " + format_report(report))
        if dropped:
            dist.print0(f"sft: {dropped} dialogues had no assistant token within sft.max_len={cfg.max_len} and were dropped")
    if not train:
        raise UserError(f"{train_path}: none of the {len(train_msgs)} dialogues has an assistant token within the "
                        f"first sft.max_len={cfg.max_len} tokens")
    if val_path is None:
        if len(train) < 2:
            raise UserError(f"{train_path}: one dialogue to train on; at least 2 are needed, one of them held out "
                            f"(or give held-out dialogues with sft.val_data)")
        held = max(1, len(train) // HOLDOUT_EVERY)
        train, val = train[:-held], train[-held:]
    if not val:
        raise UserError(f"{val_path}: no held-out dialogue has an assistant token within sft.max_len={cfg.max_len}")
    return train, val
