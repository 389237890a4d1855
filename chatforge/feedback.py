"""Collecting feedback for the reward model: the SFT model answers each prompt K times (`chatforge
sample`), annotators rank the K answers (`chatforge rank`).

    runs/<name>/rankings/samples.jsonl    prompt, user, K distinct answers (and the world's gold); on the
                                          world, also its written safety comparisons ("source": "written")
    runs/<name>/rankings/rankings.jsonl   the same answers, ordered by an annotator (docs/rankings.md)

On the built-in world the gold judge stands in for the annotators, each of whom adds a little
noise to the judge's score (they disagree, as people do). People's rankings, exported in the same
format, replace rankings.jsonl (or `reward.rankings` points at them).

Sampling is resumable: prompts are answered in chunks, each written whole under samples.parts/
and seeded by its index, so a killed run redoes at most one chunk and gets the same answers.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from chatforge.config import Recipe
from chatforge.errors import DataError, UserError
from chatforge.io import atomic_write_text, read_jsonl

CHUNK = 64  # prompts per resumable part
MAX_ROUNDS = 2  # sampling rounds to find K distinct answers before settling for fewer (at least 2)


def samples_path(run_dir: Path) -> Path:
    return Path(run_dir) / "rankings" / "samples.jsonl"


def rankings_path(run_dir: Path) -> Path:
    return Path(run_dir) / "rankings" / "rankings.jsonl"


def load_prompts(run_dir: Path, cfg, split: str = "rank") -> list[dict]:
    """Prompts as {"id", "user_id", "messages", ...}: the world's prompts of `split`, or the user's file
    `cfg.prompts` (each line "messages" or "prompt", optional "id" and "user_id"; validated like a ranking's prompt)."""
    path = Path(cfg.prompts) if cfg.prompts else Path(run_dir) / "data" / "prompts" / f"{split}.jsonl"
    prompts, _ = read_prompts(path)
    return prompts


def read_prompts(path: Path, skip_invalid: bool = False) -> tuple[list[dict], list[str]]:
    """(prompts, the errors of the lines skipped); without skip_invalid the first bad line is a DataError."""
    from chatforge.data.rankings import parse_prompt
    from chatforge.io import BadLine, jsonl_records

    prompts, skipped = [], []
    for lineno, obj in jsonl_records(path):
        try:
            if isinstance(obj, BadLine):
                raise DataError(f"{path}:{lineno}: {obj}")
            messages, pid = parse_prompt(obj, f"{path}:{lineno}")
        except DataError as e:
            if not skip_invalid:
                raise
            skipped.append(str(e))
            continue
        pid = str(obj.get("id") or pid)
        prompts.append({**obj, "id": pid, "user_id": str(obj.get("user_id") or pid), "messages": messages,
                        "where": f"{path}:{lineno}"})
    if not prompts:
        raise DataError(f"{path}: no prompts" + (f" ({len(skipped)} invalid lines skipped)" if skipped else ""))
    return prompts, skipped


def sample_answers(model, tokenizer, prompts: list[dict], cfg, seed: int) -> list[dict]:
    """Up to cfg.k distinct sampled answers per prompt, as sample records; prompts the model answers the same
    way every time are left out (nothing to rank). The answers depend on `seed` and the prompts only."""
    from chatforge.generate import generate
    from chatforge.tokenizer import answer_stop_ids, render_chat

    stop_ids = answer_stop_ids(tokenizer)
    limit = model.config.max_position_embeddings - cfg.max_new_tokens
    ids = [render_chat(tokenizer, p["messages"], add_generation_prompt=True)[0][-limit:] for p in prompts]
    generator = torch.Generator().manual_seed(seed)
    found: list[dict[str, bool]] = [{} for _ in prompts]  # answer text -> finished, in order of first appearance
    for round_ in range(MAX_ROUNDS):
        # a confident model repeats itself: one spare draw in the first round saves most second rounds
        rows = [i for i, f in enumerate(found) for _ in range(cfg.k - len(f) + (round_ == 0))]
        for b in range(0, len(rows), cfg.sample_batch_size):
            batch = rows[b : b + cfg.sample_batch_size]
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


def sample(run_dir: Path, recipe: Recipe) -> Path:
    """K distinct sampled answers per prompt from the SFT model -> rankings/samples.jsonl."""
    from chatforge.model import load_causal_lm
    from chatforge.tokenizer import load_tokenizer

    run_dir, cfg = Path(run_dir), recipe.reward
    out = samples_path(run_dir)
    if out.exists():
        print(f"sample: {out} is complete, skipping")
        return out
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to sample from (run `chatforge sft --run {run_dir}` first)")
    prompts = load_prompts(run_dir, cfg)
    model, tokenizer = load_causal_lm(sft_dir).eval(), load_tokenizer(sft_dir)
    parts = out.parent / "samples.parts"
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    chunks = range(0, len(prompts), CHUNK)
    for c, start in enumerate(chunks):
        part = parts / f"part-{c:05d}.jsonl"
        if part.exists():
            continue
        records = sample_answers(model, tokenizer, prompts[start : start + CHUNK], cfg, cfg.seed * 100_003 + c)
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        atomic_write_text(part, "".join(lines))
        print(f"sample: {min(start + CHUNK, len(prompts))}/{len(prompts)} prompts, {time.time() - t0:.0f}s", flush=True)
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(parts.glob("part-*.jsonl")))
    kept = text.count("\n")
    written = written_comparisons(run_dir, cfg)
    text += "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written)
    atomic_write_text(out, text)
    for p in parts.glob("part-*.jsonl"):
        p.unlink()
    parts.rmdir()
    print(f"sample: {kept} of {len(prompts)} prompts with >= 2 distinct answers (K = {cfg.k})"
          + (f", and {len(written)} written safety comparisons" if written else "")
          + f" -> {out} in {time.time() - t0:.0f}s", flush=True)
    return out


def written_comparisons(run_dir: Path, cfg) -> list[dict]:
    """The world's written safety comparisons (prompts/safety.jsonl: a request, the demonstrated behaviour and
    its opposite) as sample records marked "source": "written", to be ranked with the sampled answers. None when
    the prompts are the user's own (cfg.prompts): their safety data, if any, comes as rankings."""
    path = Path(run_dir) / "data" / "prompts" / "safety.jsonl"
    if cfg.prompts or not path.exists():
        return []
    return [sample_record(p, p["answers"], [True] * len(p["answers"]), source="written") for p in read_prompts(path)[0]]


def rank(run_dir: Path, recipe: Recipe) -> Path:
    """The gold judge, standing in for annotators, orders each prompt's answers -> rankings/rankings.jsonl."""
    from chatforge.data.rankings import Ranking, write_rankings
    from chatforge.world.judge import Judge

    run_dir, cfg = Path(run_dir), recipe.reward
    out = rankings_path(run_dir)
    if out.exists():
        print(f"rank: {out} is complete, skipping")
        return out
    src = samples_path(run_dir)
    if not src.exists():
        raise UserError(f"{src}: no samples to rank (run `chatforge sample --run {run_dir}` first)")
    if not (run_dir / "data" / "world.json").exists():
        raise UserError(f"{run_dir / 'data'}: no built-in world, so no gold judge to rank with; export your "
                        f"annotators' rankings in the format of docs/rankings.md and set reward.rankings")
    judge = Judge.from_world(run_dir / "data")
    rng = random.Random(cfg.seed)
    annotators = [f"a{i:02d}" for i in range(cfg.num_annotators)]
    rankings = []
    for _, s in read_jsonl(src):
        prompt = {"id": s["prompt_id"], "messages": s["messages"], "kind": s.get("kind", ""), "gold": s["gold"]}
        scores = [judge.score(prompt, a, f) for a, f in zip(s["answers"], s["finished"])]
        ranks = annotate([sc.total for sc in scores], cfg.annotator_noise, rng)
        rankings.append(Ranking(prompt_id=s["prompt_id"], user_id=s["user_id"], annotator_id=rng.choice(annotators),
                                messages=s["messages"], answers=s["answers"], ranks=ranks, kind=s.get("kind", ""),
                                ratings=[ratings_of(sc) for sc in scores], flags=[flags_of(sc) for sc in scores]))
    write_rankings(out, rankings)
    print(f"rank: {len(rankings)} prompts ranked by {cfg.num_annotators} simulated annotators "
          f"(noise {cfg.annotator_noise}) -> {out}", flush=True)
    return out


TIE = 0.1  # annotators call two answers a tie when their (noisy) scores fall in the same band this wide


def annotate(totals: list[float], noise: float, rng) -> list[int]:
    """One annotator's ranks (0 = best, ties shared) from the gold totals: each total plus Gaussian noise,
    read to the nearest band of TIE. Equally good answers (three wordings of "I don't know") come out tied
    rather than in a random order, which would teach the reward model nothing but noise."""
    bands = [round((t + rng.gauss(0.0, noise)) / TIE) if noise > 0 else round(t / TIE) for t in totals]
    return dense([sum(other > b for other in bands) for b in bands])


def dense(ranks: list[int]) -> list[int]:
    """Ranks as positions of tie groups ([0, 2, 0, 1] -> [0, 2, 0, 1]; [0, 2, 0] -> [0, 1, 0])."""
    levels = sorted(set(ranks))
    return [levels.index(r) for r in ranks]


def _seven(x: float) -> int:
    """A judge component in [-1, 1] as the 1..7 Likert scale annotators use."""
    return max(1, min(7, round(4 + 3 * x)))


def ratings_of(score) -> dict:
    """The annotators' rating categories, read off the gold judge's components."""
    return {"correctness": _seven(score.honest), "appropriateness": _seven(score.helpful),
            "safety": _seven(score.harmless), "completeness": _seven(score.helpful), "fluency": _seven(score.fluent)}


FLAG_LABELS = ("hallucination", "complied", "over_refusal", "wrong_value", "truncated", "repetition")


def flags_of(score) -> list[str]:
    return [name for name in FLAG_LABELS if score.labels.get(name)]
