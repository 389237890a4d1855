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
import time
from pathlib import Path

from chatforge.answers import sample_answers, sample_record
from chatforge.config import Recipe, SampleConfig
from chatforge.data.prompts import own_prompts, prompts_file, read_prompts
from chatforge.data.rankings import Ranking, parse_ranking, write_rankings
from chatforge.errors import DataError, UserError
from chatforge.io import atomic_write_text, read_jsonl
from chatforge.model import load_causal_lm
from chatforge.paths import has_world, samples_path, world_data
from chatforge.tokenizer import load_tokenizer
from chatforge.world.annotators import Annotators
from chatforge.world.judge import Judge

CHUNK = 64  # prompts per resumable part


def sample(run_dir: Path, recipe: Recipe, out: Path) -> Path:
    """K distinct sampled answers per prompt from the SFT model -> rankings/samples.jsonl."""
    run_dir, cfg = Path(run_dir), recipe.sample
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to sample from (run `chatforge sft --run {run_dir}` first)")
    prompts = (read_prompts(prompts_file(run_dir, cfg.prompts, "rank"))[0] if has_world(run_dir)
               else own_prompts(run_dir, recipe)[0])
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


def written_comparisons(run_dir: Path, cfg: SampleConfig) -> list[dict]:
    """The world's written safety comparisons (prompts/safety.jsonl: a request, the demonstrated behaviour and
    its opposite) as sample records marked "source": "written", to be ranked with the sampled answers. None when
    the prompts are the user's own (cfg.prompts): their safety data, if any, comes as rankings."""
    path = world_data(run_dir) / "prompts" / "safety.jsonl"
    if cfg.prompts or not path.exists():
        return []
    return [sample_record(p, p["answers"], [True] * len(p["answers"]), source="written") for p in read_prompts(path)[0]]


def _check_sample(record, where: str):
    """A samples.jsonl record as `rank` reads it: the fields of the ranking it becomes, and the world's gold; a record
    edited by hand is a DataError naming its line and field, not a KeyError."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object (one prompt's samples), got {type(record).__name__}")
    answers = record.get("answers")
    if not isinstance(answers, list):  # the field this file exists for, checked before the prompt's
        raise DataError(f"{where}: field 'answers': missing, or not a list of the K answers")
    parse_ranking({**record, "order": list(range(len(answers)))}, where)
    for key, kind in (("finished", list), ("gold", dict)):
        if not isinstance(record.get(key), kind):
            raise DataError(f"{where}: field '{key}': missing, or not a {kind.__name__}")


def rank(run_dir: Path, recipe: Recipe, out: Path) -> Path:
    """The gold judge, standing in for annotators, orders each prompt's answers -> rankings/rankings.jsonl."""
    run_dir, cfg = Path(run_dir), recipe.rank
    src = samples_path(run_dir)
    if not src.exists():
        raise UserError(f"{src}: no samples to rank (run `chatforge sample --run {run_dir}` first)")
    if not has_world(run_dir):
        raise UserError(f"{src} holds the answers to rank, and on your own data people rank them: "
                        f"`chatforge label --run {run_dir}` serves them to your annotators, then "
                        f"`chatforge label export --run {run_dir} --out {out}`; run again after that (or bring your "
                        f"own preferences with --preferences)")
    judge = Judge.from_world(world_data(run_dir))
    panel = Annotators(cfg.num_annotators, cfg.annotator_noise, cfg.seed, rating_noise=cfg.rating_noise)
    rankings = []
    for lineno, s in read_jsonl(src):
        _check_sample(s, f"{src}:{lineno}")
        prompt = {"id": s["prompt_id"], "messages": s["messages"], "kind": s.get("kind", ""), "gold": s["gold"]}
        ranks, annotator, ratings, flags = panel.judge([judge.score(prompt, a, f) for a, f in zip(s["answers"], s["finished"])])
        rankings.append(Ranking(prompt_id=s["prompt_id"], user_id=s["user_id"], annotator_id=annotator,
                                messages=s["messages"], answers=s["answers"], ranks=ranks, kind=s.get("kind", ""),
                                ratings=ratings, flags=flags))
    write_rankings(out, rankings)
    print(f"rank: {len(rankings)} prompts ranked by {cfg.num_annotators} simulated annotators "
          f"(noise {cfg.annotator_noise}) -> {out}", flush=True)
    return out
