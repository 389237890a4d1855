"""Running stages: one on its own (`chatforge sft ...`) or all in order (`chatforge run`), each skipping when its
output is complete and resuming when partial. The stages themselves are listed in `chatforge.stages`."""

from __future__ import annotations

import time
from pathlib import Path

from chatforge import dist
from chatforge.config import Recipe
from chatforge.eta import StageClock, clock, expected_seconds
from chatforge.io import atomic_write_json
from chatforge.perf import matmul_ceiling
from chatforge.stages import STAGES, Stage


def output_of(stage: Stage, run_dir: Path, out: str | None = None) -> Path:
    """Where `stage` writes in `run_dir`: its own place, or `out` (a side experiment, e.g. PPO without ptx)."""
    return Path(run_dir) / (out or stage.writes)


def run_stage(entry: Stage, run_dir: Path, recipe: Recipe, **options):
    """Run one stage, unless its output is complete and nothing asks for more (a run-time option, such as the model
    `chatforge eval --stage` evaluates, always runs). Under torchrun, training stages run on every process and the
    others on rank 0 alone."""
    out = output_of(entry, run_dir, options.pop("out", None))
    options = {k: v for k, v in options.items() if v is not None}
    reason = entry.skip(recipe)
    if reason:
        dist.print0(f"{entry.name}: not needed ({reason})")
    elif not options and not entry.rerun and entry.done(Path(run_dir), out):
        dist.print0(f"{entry.name}: {out} is complete, skipping")
    elif entry.every_rank or dist.get().is_main:
        entry.run(Path(run_dir), recipe, out, **options)
    dist.barrier()


def run_all(run_dir: Path, recipe: Recipe):
    """Every stage in order, each announced with where the run is and what is left, then where to look."""
    t0 = time.time()
    # a stage that looks at what came before it (eval, report) is not done before those stages ran: never skipped here
    done = {s.name for s in STAGES if s.skip(recipe) or (not s.rerun and s.done(Path(run_dir), output_of(s, run_dir)))}
    timer = StageClock(expected_seconds(STAGES, recipe, matmul_ceiling(dist.get().device)), skip=done)
    timings = {}
    for i, stage in enumerate(STAGES, 1):
        dist.print0(f"\n== [{i}/{len(STAGES)}] {stage.name} ({timer.start(stage.name, time.time(), t0)})")
        started = time.time()
        run_stage(stage, run_dir, recipe)
        timings[stage.name] = round(time.time() - started, 1)
    if dist.get().is_main:  # the report's card reads them: how long each stage took in the last `chatforge run`
        atomic_write_json(Path(run_dir) / "timings.json", timings)
    chat_dir = Path(run_dir) / "ppo"
    dist.print0(f"\nrun: {run_dir} done in {clock(time.time() - t0)}: {' -> '.join(s.name for s in STAGES)}.\n"
                f"The report: {Path(run_dir) / 'report.html'}\n"
                f"Talk to it:  .venv/bin/chatforge chat {chat_dir}\n"
                f"or serve it (OpenAI API + web page):  .venv/bin/chatforge serve {chat_dir}")
