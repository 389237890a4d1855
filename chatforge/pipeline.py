"""`chatforge run`: the stages in order, each skipping when its output is complete and resuming when partial."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chatforge import dist
from chatforge.config import Recipe
from chatforge.errors import DataError
from chatforge.io import read_jsonl

STAGES = ["world", "tokenizer", "pretrain", "sft", "sample", "rank", "reward", "ppo", "eval", "report"]


def stage_world(run_dir: Path, recipe: Recipe) -> dict:
    from chatforge.world import build_world

    data_dir = Path(run_dir) / "data"
    if world_is_complete(run_dir):
        print(f"world: {data_dir} is complete, skipping")
        return json.loads((data_dir / "world.json").read_text())
    t0 = time.time()
    result = build_world(recipe.world, data_dir)
    print(f"world: wrote {data_dir} in {time.time() - t0:.1f}s: " + json.dumps(result.get("counts", {}), ensure_ascii=False)[:400])
    return result


def world_is_complete(run_dir: Path) -> bool:
    manifest = Path(run_dir) / "data" / "world.json"
    return manifest.exists() and bool(json.loads(manifest.read_text()).get("complete"))


def tokenizer_is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / "tokenizer" / "tokenizer.json").exists()


def tokenizer_texts(run_dir: Path):
    """The world's name-scrambled tokenizer corpus if there is one, else every training document."""
    from chatforge.data.corpus import discover_sources, read_documents

    data_dir = Path(run_dir) / "data"
    special = data_dir / "tokenizer_corpus.jsonl"
    if special.exists():
        for lineno, obj in read_jsonl(special):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f"{special}:{lineno}: field 'text' is missing or not a string")
            yield obj["text"]
        return
    for src in discover_sources(data_dir / "corpus").values():
        for f in src.train_files:
            yield from read_documents(f)


def stage_tokenizer(run_dir: Path, recipe: Recipe):
    import shutil

    from chatforge.tokenizer import load_tokenizer, train_tokenizer

    out = Path(run_dir) / "tokenizer"
    if tokenizer_is_complete(run_dir):
        print(f"tokenizer: {out} is complete, skipping")
        return load_tokenizer(out)
    t0 = time.time()
    tmp = out.with_name("tokenizer.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = train_tokenizer(tokenizer_texts(run_dir), tmp, recipe.tokenizer.vocab_size, recipe.tokenizer.min_frequency)
    tmp.rename(out)  # whole or absent
    print(f"tokenizer: {len(tok)} tokens, trained in {time.time() - t0:.1f}s -> {out}")
    return tok


def stage_eval(run_dir: Path, stage: str = "base", quiet: bool = False) -> dict:
    from chatforge.eval import evaluate_stage, format_reward_table, format_table, reward_eval

    if stage == "reward":
        result = reward_eval(run_dir)
        if not quiet:
            print(format_reward_table(result))
        return result
    result = evaluate_stage(run_dir, stage)
    if not quiet:
        print(format_table(result))
    return result


def run_all(run_dir: Path, recipe: Recipe):
    from chatforge import feedback
    from chatforge.eta import StageClock, clock, expected_seconds
    from chatforge.eval import format_comparison, format_reward_table, format_vs_sft
    from chatforge.perf import matmul_ceiling
    from chatforge.train import ppo, pretrain, reward, sft

    t0 = time.time()
    # (name, what runs it, whether rank 0 alone does it); the training stages run on every process
    plan = [("world", stage_world, True), ("tokenizer", stage_tokenizer, True), ("pretrain", pretrain.run, False),
            ("sft", sft.run, False), ("sample", feedback.sample, True), ("rank", feedback.rank, True),
            ("reward", reward.run, False), ("ppo", ppo.run, False)]
    timer = StageClock(expected_seconds(recipe, matmul_ceiling(dist.get().device)), skip=_complete(run_dir))
    for i, (name, stage, main_only) in enumerate(plan, 1):
        dist.print0(f"\n== [{i}/{len(STAGES)}] {name} ({timer.start(name, time.time(), t0)})")
        if dist.get().is_main or not main_only:
            stage(run_dir, recipe)
        dist.barrier()
    dist.print0(f"\n== [{len(plan) + 1}/{len(STAGES)}] eval ({timer.start('eval', time.time(), t0)})")
    if dist.get().is_main:
        results = [_eval_once(run_dir, stage) for stage in ("base", "sft", "ppo")]
        rm = _eval_once(run_dir, "reward")
        print("\n" + format_comparison(results))
        print("\n" + format_vs_sft(results[-1]["vs_sft"]))
        print("\n" + format_reward_table(rm))
        from chatforge.report import render

        print(f"\n== [{len(STAGES)}/{len(STAGES)}] report ({timer.start('report', time.time(), t0)})")
        report = render(run_dir)
        chat_dir = Path(run_dir) / "ppo"
        print(f"\nrun: {run_dir} done in {clock(time.time() - t0)}: world -> tokenizer -> pretrain -> sft -> sample "
              f"-> rank -> reward -> ppo -> eval.\n"
              f"The report: {report}\n"
              f"Talk to it:  .venv/bin/chatforge chat {chat_dir}\n"
              f"or serve it (OpenAI API + web page):  .venv/bin/chatforge serve {chat_dir}")
    dist.barrier()


def _complete(run_dir: Path) -> set[str]:
    """The stages whose output is already complete (they will skip), for the expected time of the rest."""
    from chatforge import feedback
    from chatforge.train import ppo, pretrain, reward, sft

    done = {"world": world_is_complete(run_dir), "tokenizer": tokenizer_is_complete(run_dir),
            "pretrain": pretrain.is_complete(run_dir), "sft": sft.is_complete(run_dir),
            "sample": feedback.samples_path(run_dir).exists(), "rank": feedback.rankings_path(run_dir).exists(),
            "reward": reward.is_complete(run_dir), "ppo": ppo.is_complete(run_dir),
            "eval": all(_eval_is_current(run_dir, stage) for stage in ("base", "sft", "ppo", "reward"))}
    return {stage for stage, complete in done.items() if complete}


def _eval_is_current(run_dir: Path, stage: str) -> bool:
    path = Path(run_dir) / "eval" / f"{stage}.json"
    model_file = Path(run_dir) / stage / "model.safetensors"
    return path.exists() and model_file.exists() and path.stat().st_mtime >= model_file.stat().st_mtime


def _eval_once(run_dir: Path, stage: str) -> dict:
    """A stage's eval, computed once: a model that has not changed since is not evaluated again."""
    if _eval_is_current(run_dir, stage):
        return json.loads((Path(run_dir) / "eval" / f"{stage}.json").read_text())
    return stage_eval(run_dir, stage, quiet=True)  # run_all prints the tables side by side
