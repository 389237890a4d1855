"""A chat model answering prompts in batches: greedy (evaluation) or K distinct samples per prompt (the
answers annotators rank, and the reward model's evaluation)."""

from __future__ import annotations

import torch

from chatforge.config import SampleConfig
from chatforge.generate import generate
from chatforge.tokenizer import answer_stop_ids, render_chat

MAX_ROUNDS = 2  # sampling rounds to find K distinct answers before settling for fewer (at least 2)


def answer_prompts(model, tokenizer, records: list[dict], max_new_tokens: int = 48, batch_size: int = 48):
    """Greedy answers to chat prompts: [(text, finished)], in the order of `records`."""
    prompts = [render_chat(tokenizer, r["messages"], add_generation_prompt=True)[0] for r in records]
    stop_ids = answer_stop_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    answers: list = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        gens = generate(model, [prompts[i] for i in chunk], max_new_tokens, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids)
        for i, g in zip(chunk, gens):
            answers[i] = (tokenizer.decode(g.tokens, skip_special_tokens=True), g.finished)
    return answers


def sample_answers(model, tokenizer, prompts: list[dict], cfg: SampleConfig, seed: int) -> list[dict]:
    """Up to cfg.k distinct sampled answers per prompt, as sample records; prompts the model answers the same
    way every time are left out (nothing to rank). The answers depend on `seed` and the prompts only."""
    stop_ids = answer_stop_ids(tokenizer)
    limit = model.config.max_position_embeddings - cfg.max_new_tokens
    ids = [render_chat(tokenizer, p["messages"], add_generation_prompt=True)[0][-limit:] for p in prompts]
    generator = torch.Generator().manual_seed(seed)
    found: list[dict[str, bool]] = [{} for _ in prompts]  # answer text -> finished, in order of first appearance
    for round_ in range(MAX_ROUNDS):
        # a confident model repeats itself: one spare draw in the first round saves most second rounds
        rows = [i for i, f in enumerate(found) for _ in range(cfg.k - len(f) + (round_ == 0))]
        for b in range(0, len(rows), cfg.batch_size):
            batch = rows[b : b + cfg.batch_size]
            gens = generate(model, [ids[i] for i in batch], cfg.max_new_tokens, pad_id=tokenizer.pad_token_id,
                            stop_ids=stop_ids, temperature=cfg.temperature, top_p=cfg.top_p, generator=generator)
            for i, g in zip(batch, gens):
                text = tokenizer.decode(g.tokens, skip_special_tokens=True)
                if text.strip() and text not in found[i] and len(found[i]) < cfg.k:
                    found[i][text] = g.finished
        if all(len(f) == cfg.k for f in found):
            break
    # a prompt the model answers the same way every time cannot be ranked
    return [sample_record(p, list(f), list(f.values())) for p, f in zip(prompts, found) if len(f) >= 2]


def sample_record(prompt: dict, answers: list[str], finished: list[bool], **extra) -> dict:
    """One line of samples.jsonl: the prompt, its user, the answers (and the world's kind, language and gold)."""
    record = {"prompt_id": prompt["id"], "user_id": prompt["user_id"], "messages": prompt["messages"],
              "answers": answers, "finished": finished}
    record.update({key: prompt[key] for key in ("kind", "lang", "gold") if key in prompt})
    return {**record, **extra}
