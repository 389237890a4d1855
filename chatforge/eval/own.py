"""Evaluation on your own data, where no gold judge knows the right answers. What can be measured instead:

- the model's greedy answers to held-out users' prompts (users the reward model and PPO never saw), their length,
  and the reward model's score of each;
- the held-out SFT loss, on the dialogues SFT held out;
- for a model after SFT (PPO's policy): the reward model's win rate of its answers against the SFT model's on the
  same prompts, with a 95% interval, the change in length, and the KL to the SFT model;
- answers side by side, in the report.
The reward model's own held-out accuracy on your preferences is `eval.reward`'s.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from chatforge.answers import answer_prompts
from chatforge.config import Recipe
from chatforge.data.dialogues import padded, sft_dialogues
from chatforge.data.prompts import encode_prompts, own_prompts, split_prompts
from chatforge.eval.llm_judge import LLMJudge
from chatforge.eval.policy import kl_to
from chatforge.eval.stats import interval95, win_rate
from chatforge.io import atomic_write_json, read_json
from chatforge.model import inference_device, load_causal_lm, weights_dtype
from chatforge.scoring import load_reward_model, masked_token_loss, score_texts
from chatforge.tokenizer import load_tokenizer

MAX_PROMPTS = 200  # held-out prompts answered per model: enough for a ±0.07 interval on a win rate


def held_out_prompts(run_dir: Path, recipe: Recipe, tokenizer, context: int) -> list[dict]:
    """The prompts of the users held out of the reward model and PPO (the same split as theirs) that leave room in
    the context for an answer of ppo.max_new_tokens."""
    prompts, _, _ = own_prompts(run_dir, recipe, skip_invalid=True)
    held = split_prompts(prompts, recipe.reward.heldout_users, recipe.reward.seed)[1]
    return encode_prompts(held, tokenizer, context - recipe.ppo.max_new_tokens, skip=True)[0][:MAX_PROMPTS]


def evaluate_own(run_dir: Path, recipe: Recipe, stage: str) -> dict:
    """A model of the run on your own held-out data -> eval/<stage>.json."""
    t0, device = time.time(), inference_device()
    model_dir = Path(run_dir) / stage
    model = load_causal_lm(model_dir, device, weights_dtype(device)).eval()
    tokenizer = load_tokenizer(model_dir)
    prompts = held_out_prompts(run_dir, recipe, tokenizer, model.config.max_position_embeddings)
    answers = answer_prompts(model, tokenizer, prompts, max_new_tokens=recipe.ppo.max_new_tokens)
    result = {"stage": stage, "model": str(model_dir), "against": "your own data", "prompts": len(prompts),
              "answers": {p["id"]: {"question": p["messages"][-1]["content"], "answer": text, "finished": done,
                                    "tokens": len(tokenizer.encode(text, add_special_tokens=False))}
                          for p, (text, done) in zip(prompts, answers)}}
    result["length"] = round(sum(a["tokens"] for a in result["answers"].values()) / max(1, len(prompts)), 2)
    _add_rewards(run_dir, recipe, prompts, result)
    if recipe.sft.data:
        result["heldout_sft_loss"] = heldout_sft_loss(model, tokenizer, run_dir, recipe)
    if stage not in ("base", "sft") and (Path(run_dir) / "sft" / "config.json").exists():
        result["vs_sft"] = against_sft(run_dir, recipe, model, tokenizer, prompts, result)
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(Path(run_dir) / "eval" / f"{stage}.json", result)
    return result


def _add_rewards(run_dir: Path, recipe: Recipe, prompts: list[dict], result: dict):
    """The reward model's score of every answer, and their mean, when the run has a reward model."""
    if not (Path(run_dir) / "reward" / "config.json").exists():
        return
    device = inference_device()
    rm, rm_tokenizer, bias = load_reward_model(Path(run_dir) / "reward", device, weights_dtype(device))
    items = [(p["messages"], result["answers"][p["id"]]["answer"]) for p in prompts]
    for p, r in zip(prompts, score_texts(rm, rm_tokenizer, items, recipe.reward.max_len, bias)):
        result["answers"][p["id"]]["reward"] = round(r, 4)
    result["reward"] = round(sum(a["reward"] for a in result["answers"].values()) / max(1, len(prompts)), 4)


@torch.no_grad()
def heldout_sft_loss(model, tokenizer, run_dir: Path, recipe: Recipe, batch: int = 16) -> float:
    """Cross-entropy per assistant token on the dialogues SFT held out."""
    _, val = sft_dialogues(run_dir, recipe.sft, tokenizer, quiet=True)
    device = next(model.parameters()).device
    total, count = 0.0, 0.0
    for i in range(0, len(val), batch):
        ids, mask = (x.to(device) for x in padded(val[i : i + batch], tokenizer.pad_token_id))
        loss, n = masked_token_loss(model(input_ids=ids).logits, ids, mask)
        total, count = total + float(loss), count + float(n)
    return round(total / max(count, 1.0), 4)


def against_sft(run_dir: Path, recipe: Recipe, model, tokenizer, prompts: list[dict], result: dict) -> dict:
    """What PPO's policy gained over the SFT model on the same held-out prompts, by the reward model's judgement."""
    sft_file = Path(run_dir) / "eval" / "sft.json"
    sft = read_json(sft_file) or evaluate_own(run_dir, recipe, "sft")  # a torn one is a DataError naming it
    out = {"length": {"sft": sft["length"], "this": result["length"]}}
    if "reward" in result and "reward" in sft:
        mine = {i: a["reward"] for i, a in result["answers"].items()}
        theirs = {i: a["reward"] for i, a in sft["answers"].items()}
        out["win_rate"] = win_rate(mine, theirs, [{"id": i} for i in mine])
        out["reward"] = {"sft": sft["reward"], "this": result["reward"], "delta": round(result["reward"] - sft["reward"], 4),
                         "delta_ci95": interval95([mine[i] - theirs[i] for i in mine if i in theirs])}
    device = next(model.parameters()).device
    reference = load_causal_lm(Path(run_dir) / "sft", device, weights_dtype(device)).eval()
    out["kl_to_sft"] = round(kl_to(model, reference, tokenizer, prompts, recipe.ppo.max_new_tokens), 4)
    if recipe.judge.enabled:  # a second opinion, from an LLM judge behind any OpenAI-compatible endpoint
        items = [(p["messages"], result["answers"][p["id"]]["answer"], sft["answers"][p["id"]]["answer"])
                 for p in prompts if p["id"] in sft["answers"]]
        out["llm_judge"] = LLMJudge(recipe.judge, Path(run_dir) / "eval").win_rate(items)
    return out
