"""Prompts to answer (sampling for the rankings, PPO, evaluation): records with "messages" (ending with the user's
turn) or "prompt" (one user message), optional "id" and "user_id", in any container of `data.containers` (JSON
lines, JSON, Parquet, datasets folders); the world's prompts add "kind", "lang" and "gold". Validated like a
ranking's prompt (`data.rankings.parse_prompt`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from chatforge.config import Recipe
from chatforge.data.rankings import parse_prompt, read_rankings, split_by_user
from chatforge.errors import DataError
from chatforge.data.containers import records
from chatforge.io import BadLine
from chatforge.paths import rankings_path
from chatforge.tokenizer import render_chat


def read_prompts(path: Path, skip_invalid: bool = False) -> tuple[list[dict], list[str]]:
    """(prompts as {"id", "user_id", "messages", "where", ...}, the errors of the lines skipped); without
    skip_invalid the first bad line is a DataError."""
    prompts, skipped = [], []
    for where, obj in records(path):
        try:
            if isinstance(obj, BadLine):
                raise DataError(f"{where}: {obj}")
            messages, pid = parse_prompt(obj, where)
        except DataError as e:
            if not skip_invalid:
                raise
            skipped.append(str(e))
            continue
        pid = str(obj.get("id") or pid)
        prompts.append({**obj, "id": pid, "user_id": str(obj.get("user_id") or pid), "messages": messages,
                        "where": where})
    if not prompts:
        raise DataError(f"{path}: no prompts" + (f" ({len(skipped)} invalid lines skipped)" if skipped else ""))
    return prompts, skipped


def prompts_file(run_dir: Path, own: str, split: str) -> Path:
    """The user's prompt file `own`, else the world's prompts of `split` (rank, ppo, eval, safety)."""
    return Path(own) if own else Path(run_dir) / "data" / "prompts" / f"{split}.jsonl"


def encode_prompts(prompts: list[dict], tokenizer, max_tokens: int, skip: bool) -> tuple[list[dict], list[str]]:
    """The prompts whose rendering (chat template, generation prompt) fits in `max_tokens`, each with its token
    ids under "ids"; (kept, messages of the ones too long). A prompt too long is an error naming its line,
    unless `skip`."""
    kept, too_long = [], []
    for p in prompts:
        ids = render_chat(tokenizer, p["messages"], add_generation_prompt=True)[0]
        if len(ids) <= max_tokens:
            kept.append({**p, "ids": ids})
            continue
        message = (f"{p['where']}: the prompt is {len(ids)} tokens; with the answer's room, at most {max_tokens} "
                   f"fit in the model's context")
        if not skip:
            raise DataError(message)
        too_long.append(message)
    return kept, too_long


def prompts_of_rankings(rankings: list) -> list[dict]:
    """The prompts of preference data, once each (by prompt id), with their users: what PPO answers when no prompt
    file of its own is given."""
    seen = {}
    for r in rankings:
        seen.setdefault(r.prompt_id, {"id": r.prompt_id, "user_id": r.user_id, "messages": r.messages,
                                      "where": f"prompt {r.prompt_id}"})
    return list(seen.values())


def split_prompts(prompts: list[dict], heldout_users: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out) by user, as the reward model's rankings are split (the same users on the same side when the
    prompts are the rankings' own): held-out prompts are answered by no trained model before the evaluation."""
    rows = [SimpleNamespace(user_id=p["user_id"], prompt_id=p["id"], prompt=p) for p in prompts]
    train, held = split_by_user(rows, heldout_users, seed)
    return [r.prompt for r in train], [r.prompt for r in held]


def own_prompts(run_dir: Path, recipe: Recipe, skip_invalid: bool = False) -> tuple[list[dict], list[str], Path]:
    """(prompts, lines skipped, where from) of a run on your own data: your prompt file (ppo.prompts, else
    sample.prompts), else the prompts of your preferences."""
    own = recipe.ppo.prompts or recipe.sample.prompts
    if own:
        return (*read_prompts(Path(own), skip_invalid), Path(own))
    path = rankings_path(run_dir, recipe.reward.rankings)
    if not path.exists():
        raise DataError(f"{path}: no prompts to answer: give a prompt file (--prompts) or preferences (--preferences)")
    rankings, _ = read_rankings(path, skip_invalid=recipe.reward.skip_invalid)
    return prompts_of_rankings(rankings), [], path
