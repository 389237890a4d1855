"""Batched sampling with a KV cache: greedy, temperature, top-k, top-p; left padding; stop tokens.

Prompts are padded on the left so every row's next token sits in the last column; positions
count only real tokens, so a padded prompt is continued exactly as it would be alone.
Used by pretraining samples and evaluation now, and by sampling, PPO, chat and serving.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from chatforge import dist


@dataclass
class Generation:
    tokens: list[int]  # generated ids, without the stop token
    finished: bool  # True if a stop token ended it, False if it ran out of max_new_tokens
    stop: int | None = None  # the stop token that ended it (PPO trains on it too)


def sample_next(
    logits_BV: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, generator=None
) -> torch.Tensor:
    """Next token per row [B] from logits [B, V]; temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits_BV.argmax(dim=-1)
    logits = logits_BV.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        # The nucleus of a trained model is a few dozen tokens: take the 64 most likely instead of sorting the
        # whole vocabulary, and sort everything only for the rows whose 64 do not reach top_p (exact either way:
        # a token past them follows at least top_p of mass, so it would be dropped).
        top, order = probs.topk(min(64, probs.size(-1)), dim=-1)
        out = _nucleus(top, order, top_p, generator)
        wide = top.sum(-1) < top_p
        if top.size(-1) < probs.size(-1) and wide.any():
            out[wide] = _nucleus(*torch.sort(probs[wide], descending=True, dim=-1), top_p, generator)
        return out
    return _race(probs, generator)


def _nucleus(top_BN, order_BN, top_p: float, generator=None) -> torch.Tensor:
    """Draw from the smallest set of most likely tokens holding top_p of the mass; top_BN / order_BN are the
    N most likely probabilities and their token ids, in descending order."""
    drop = (top_BN.cumsum(-1) - top_BN) >= top_p  # the tokens above already hold top_p (the first always stays)
    choice = _race(top_BN.masked_fill(drop, 0.0), generator)
    return order_BN.gather(-1, choice[:, None]).squeeze(-1)


def _race(weights_BV: torch.Tensor, generator=None) -> torch.Tensor:
    """One categorical draw per row, proportional to the (unnormalised) weights: argmax w_i / E_i with
    E_i ~ Exp(1) picks i with probability w_i / Σw. Exact, and several times cheaper than multinomial on a CPU."""
    race = torch.empty_like(weights_BV).exponential_(generator=generator)
    return (weights_BV / race).argmax(-1)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L], attention mask [B, L]) with every prompt right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    pad_id: int,
    stop_ids: list[int],
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[list[int]], list[int] | None] | None = None,
) -> list[Generation]:
    """Continue every prompt (token ids) by up to max_new_tokens; a row ends at its first stop id.

    on_step, if given, sees each step's new token per row (pad_id for rows already done) and may
    return row indices to end there (a client went away, or the row reached its own length
    limit): what streaming and serving need. It costs a device sync per step.

    A model sharded over processes (FSDP2) needs every process in each of its forwards: then all take the same
    number of steps, until every row of every process has ended (a process whose rows are all done feeds them on)."""
    device = next(model.parameters()).device
    lockstep = dist.sharded(model)
    ids, mask = left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    kv = {cache_keyword(model): cache}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kv, use_cache=True, logits_to_keep=1)
    next_pos = positions[:, -1:] + 1
    stops = torch.tensor(stop_ids, device=device)
    rows = torch.arange(len(prompts), device=device)  # the original row of each row still in the batch
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_tokens = []
    for _ in range(max_new_tokens):
        tok = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        step = torch.full((len(prompts),), pad_id, dtype=tok.dtype, device=device)
        new_tokens.append(step.index_copy_(0, rows, tok))
        done |= torch.isin(tok, stops)
        if on_step is not None:
            ended = set(on_step(step.tolist()) or ())
            if ended:
                done |= torch.tensor([int(r) in ended for r in rows.tolist()], device=device)
        if (dist.all_true(bool(done.all())) if lockstep else done.all()):
            break
        num_done = int(done.sum())
        if len(done) > num_done and 2 * num_done >= len(done):  # (all done: only a sharded model's lockstep goes on)
            # Half the rows have ended: drop them from the batch and the cache. One long answer no longer
            # makes every finished row pay for its steps (sampling K answers is mostly such stragglers).
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, tok, mask, next_pos, done = rows[keep], tok[keep], mask[keep], next_pos[keep], done[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, **kv, use_cache=True)
        next_pos = next_pos + 1
    return _collect(torch.stack(new_tokens, 1).tolist() if new_tokens else [[] for _ in prompts], set(stop_ids))


def cache_keyword(model) -> str:
    """The keyword under which the model's forward takes its KV cache: `cache` in the transformers releases that
    renamed it (which warn that `past_key_values` goes away in 5.40), `past_key_values` in the earlier ones."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model: the wrapped one
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _collect(rows: list[list[int]], stops: set[int]) -> list[Generation]:
    results = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        results.append(Generation(row, False) if cut is None else Generation(row[:cut], True, row[cut]))
    return results


def complete(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int = 64, **sampling) -> list[str]:
    """Plain-text continuations of plain-text prompts (no chat template), in batches."""
    eos = model.generation_config.eos_token_id
    stop_ids = [eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id])
    outputs = []
    for i in range(0, len(texts), batch_size):
        chunk = [tokenizer.encode(t, add_special_tokens=False) for t in texts[i : i + batch_size]]
        gens = generate(model, chunk, max_new_tokens, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids, **sampling)
        outputs += [tokenizer.decode(g.tokens) for g in gens]
    return outputs
