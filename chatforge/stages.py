"""Every stage of the pipeline, in order, written once. The CLI's subcommands, `chatforge run`, the expected
times and the report all read this list: adding a stage is adding one entry.

An entry says what the stage reads and writes (paths inside the run directory), how to run it, how to tell
that its output is complete (a complete stage is skipped), what it costs (FLOPs, for the expected time), and
which command-line options it takes. An option with a `key` sets that recipe field; one without is handed to
the run function as a keyword argument.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from chatforge import eta, feedback, tokenizer
from chatforge.config import Recipe
from chatforge.eval import evaluate
from chatforge.errors import DataError, UserError
from chatforge.io import read_json, verified
from chatforge.report import checked_json, render
from chatforge.paths import has_world
from chatforge.report.tables import (
    by_stage, card_footer, format_comparison, format_gains, format_own_comparison, format_reward_table, format_table,
    format_vs_sft, results_card, stage_gains,
)
from chatforge.train import pretrain, ppo, reward, sft
from chatforge.world import build_world, world_is_complete


@dataclass(frozen=True)
class Option:
    flag: str  # e.g. "--data"
    help: str
    key: tuple[str, ...] = ()  # the recipe fields it sets (e.g. ("sft.data",)); none: a keyword argument of `run`
    type: type = str  # bool: a switch
    choices: tuple[str, ...] | None = None
    default: object = None
    aliases: tuple[str, ...] = ()  # other spellings of the flag


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    reads: tuple[str, ...]  # what it needs, inside the run directory
    writes: str  # its output, inside the run directory
    run: Callable  # run(run_dir, recipe, out, **options)
    done: Callable[[Path, Path], bool]  # done(run_dir, out): complete, so `chatforge run` skips it
    flops: Callable[[Recipe], tuple[float, float]] = eta.no_flops  # (training, sampling) FLOPs
    fixed_seconds: float = 1.0  # loading, saving, judging: seconds that do not grow with the FLOPs
    compiles: Callable[[Recipe], bool] | None = None  # whether it spends eta.COMPILE seconds on torch.compile
    every_rank: bool = False  # training stages run on every process under torchrun; the rest on rank 0 alone
    trains: bool = False  # writes a model with metrics.jsonl and summary.json (the report's stage table)
    rerun: bool = False  # runs even when complete: it re-reads what is there (the evaluation's tables, the report)
    options: tuple[Option, ...] = ()
    sections: tuple[str, ...] = ()  # the recipe sections its output depends on: changing one of a complete stage is refused
    skip: Callable[[Recipe], str | None] = lambda recipe: None  # why the stage does not apply to a run, if it does not


def own_model(recipe: Recipe) -> str | None:
    return "the run starts from model.base, your own model" if recipe.model.base else None


def own_preferences(recipe: Recipe) -> str | None:
    return "the reward model trains on reward.rankings, your own preferences" if recipe.reward.rankings else None


def no_ablation(recipe: Recipe) -> str | None:
    """Why the PPO ablations do not run: they are the built-in world's, and asked for by ppo.ablations."""
    return own_model(recipe) or (None if recipe.ppo.ablations else "ppo.ablations is off")


def run_ppo_judge(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    """PPO with the gold judge as its reward, a perfect reward model: how much the learned one leaves on the table."""
    return ppo.run(run_dir, replace(recipe, ppo=replace(recipe.ppo, reward="judge")), out)


def run_ppo_noptx(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    """PPO without the pretraining loss: what PPO-ptx keeps of the language model (the alignment tax)."""
    return ppo.run(run_dir, replace(recipe, ppo=replace(recipe.ppo, ptx_coef=0.0)), out)


def has_summary(run_dir: Path, out: Path) -> bool:
    return verified(out)


def exists(run_dir: Path, out: Path) -> bool:
    return out.exists()


# ----------------------------------------------------------------------------- the stages that are not a module's


def run_world(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    t0 = time.time()
    manifest = build_world(recipe.world, out)
    print(f"world: wrote {out} in {time.time() - t0:.1f}s: " + json.dumps(manifest.get("counts", {}), ensure_ascii=False)[:400])
    return manifest


# the models `chatforge run` evaluates, side by side, where the run has them
EVALUATED = ("base", "sft", "ppo", "ppo-judge", "ppo-noptx")


def run_eval(run_dir: Path, recipe: Recipe, out: Path, stage: str | None = None) -> dict:
    """`chatforge eval --stage S`: one model's evaluation, printed. In `chatforge run`: every model's (each only if
    it changed since its last evaluation) and the reward model's, printed side by side."""
    if stage is not None:
        if not (run_dir / stage / "config.json").is_file() or Path(stage).name != stage or stage in (".", ".."):
            raise UserError(f"--stage {stage!r}: not a model folder of {run_dir} (base, sft, reward, ppo, or the --out "
                            f"of a side experiment)")
        result = evaluate(run_dir, recipe, stage)
        print(format_reward_table(result) if stage == "reward" else
              format_table(result) if has_world(run_dir) else format_own_comparison([result]))
        return result
    results = [_eval_once(run_dir, recipe, s) for s in EVALUATED if (run_dir / s / "config.json").exists()]
    rm = _eval_once(run_dir, recipe, "reward")
    print("\n" + (format_comparison(results) if has_world(run_dir) else format_own_comparison(results)))
    ppo_result = by_stage(results).get("ppo", {})
    if has_world(run_dir) and "vs_sft" in ppo_result:
        print("\n" + format_vs_sft(ppo_result["vs_sft"]))
    print("\n" + format_reward_table(rm))
    if has_world(run_dir):
        print("\n" + format_gains(stage_gains(results, rm)))
    return {"models": results, "reward": rm}


def _eval_once(run_dir: Path, recipe: Recipe, stage: str) -> dict:
    """A stage's eval, computed once: a model that has not changed since is not evaluated again."""
    if eval_is_current(run_dir, stage):
        try:
            return read_json(run_dir / "eval" / f"{stage}.json", missing_ok=False)
        except DataError:  # torn by a kill: evaluated again
            pass
    return evaluate(run_dir, recipe, stage)


def eval_is_current(run_dir: Path, stage: str) -> bool:
    """Whether eval/<stage>.json is newer than the stage's model (a stage the run does not have needs no eval)."""
    path, model_dir = run_dir / "eval" / f"{stage}.json", run_dir / stage
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        return True
    return path.exists() and path.stat().st_mtime >= max(w.stat().st_mtime for w in weights)


def run_report(run_dir: Path, recipe: Recipe, out: Path, card: bool = False) -> Path:
    """report.html, re-rendered; with --card, also the results card (Markdown) on standard output."""
    text = _card(run_dir) if card else None  # read before the page is written: a bad file leaves the run as it was
    path = render(run_dir, [s.writes for s in STAGES if s.trains])
    print(f"report: {path}")
    if text is not None:
        print("\n" + text)
    return path


def _card(run_dir: Path) -> str:
    """The results card of what the run's evaluation files say; a file it cannot show is a DataError naming it."""
    results = [r for s in EVALUATED if (r := checked_json(run_dir / "eval" / f"{s}.json",
                                                         lambda r: results_card([r], None, {})))]
    rm = checked_json(run_dir / "eval" / "reward.json", lambda rm: card_footer(rm, {}))
    timings = checked_json(run_dir / "timings.json", lambda t: card_footer(None, t))
    return results_card(results, rm, timings or {})


# ----------------------------------------------------------------------------- the registry

SKIP_INVALID = "skip and count malformed records instead of stopping at the first"
BASE_MODEL = Option("--base-model", "start from this local Hugging Face causal LM (its tokenizer and chat template) "
                    "instead of pretraining one", key=("model.base",))
SFT_DATA = Option("--sft-data", "dialogues to fine-tune on, a file or folder (docs/data-formats.md)", key=("sft.data",),
                  aliases=("--data",))
PREFERENCES = Option("--preferences", "preferences to train the reward model on, a file or folder (docs/data-formats.md)",
                     key=("reward.rankings",), aliases=("--rankings",))


def lora_rank(*sections: str) -> Option:
    return Option("--lora-rank", "train LoRA adapters of this rank instead of all weights",
                  key=tuple(f"{s}.lora.rank" for s in sections), type=int)


STAGES: tuple[Stage, ...] = (
    Stage("world", "generate the built-in bilingual world: facts, corpus, dialogues, prompts, eval sets",
          reads=(), writes="data", sections=("world",), skip=own_model,
          run=run_world, done=lambda run_dir, out: world_is_complete(out)),
    Stage("tokenizer", "train the byte-level BPE tokenizer on the corpus",
          reads=("data",), writes="tokenizer", sections=("tokenizer",), skip=own_model,
          run=tokenizer.run, done=lambda run_dir, out: (out / "tokenizer.json").exists()),
    Stage("pretrain", "next-token pretraining on the corpus mixture -> base/",
          reads=("data", "tokenizer"), writes="base", sections=("model", "pretrain"), skip=own_model,
          run=pretrain.run, done=has_summary, flops=eta.pretrain_flops, fixed_seconds=5,
          compiles=lambda r: r.pretrain.compile, every_rank=True, trains=True,
          options=(Option("--init", "start from this local Hugging Face causal-LM directory", key=("pretrain.init",)),)),
    Stage("sft", "supervised fine-tuning on dialogues, loss on assistant tokens only -> sft/",
          reads=("base", "data/dialogues"), writes="sft", sections=("sft",),
          run=sft.run, done=has_summary, flops=eta.sft_flops, fixed_seconds=5, every_rank=True, trains=True,
          options=(BASE_MODEL, SFT_DATA, lora_rank("sft"),
                   Option("--skip-invalid", SKIP_INVALID, key=("sft.skip_invalid",), type=bool))),
    Stage("sample", "the SFT model answers each prompt K times, for annotators to rank -> rankings/samples.jsonl",
          reads=("sft", "data/prompts"), writes="rankings/samples.jsonl", sections=("sample",), skip=own_preferences,
          run=feedback.sample, done=exists, flops=eta.sample_flops, fixed_seconds=3,
          options=(Option("--prompts", "prompt file (JSONL with 'messages' or 'prompt', optional 'user_id')",
                          key=("sample.prompts",)),)),
    Stage("rank", "annotators (on the world, the gold judge) rank each prompt's K answers -> rankings/rankings.jsonl",
          reads=("rankings/samples.jsonl", "data"), writes="rankings/rankings.jsonl", sections=("rank",),
          skip=own_preferences, run=feedback.rank, done=exists),
    Stage("reward", "the reward model, trained on the rankings with the K-way pairwise loss -> reward/",
          reads=("sft", "rankings/rankings.jsonl"), writes="reward", sections=("reward",),
          run=reward.run, done=has_summary, flops=eta.reward_flops, fixed_seconds=3, every_rank=True, trains=True,
          options=(PREFERENCES, lora_rank("reward"),
                   Option("--skip-invalid", SKIP_INVALID, key=("reward.skip_invalid",), type=bool))),
    Stage("ppo", "RL: PPO from the SFT model against the frozen reward model, KL penalty and PPO-ptx -> ppo/",
          reads=("sft", "reward", "data/prompts"), writes="ppo", sections=("ppo",),
          run=ppo.run, done=has_summary, flops=eta.ppo_flops, fixed_seconds=5, every_rank=True, trains=True,
          options=(Option("--prompts", "prompt file (JSONL with 'messages' or 'prompt'); default: the world's PPO "
                          "prompts, or your preferences' prompts", key=("ppo.prompts",)),
                   lora_rank("ppo"),
                   Option("--skip-invalid", "skip and count empty or over-long prompts", key=("ppo.skip_invalid",),
                          type=bool),
                   Option("--ptx-coef", "weight of the pretraining loss (PPO-ptx); 0 for plain PPO",
                          key=("ppo.ptx_coef",), type=float),
                   Option("--reward", "score answers with the reward model (default) or, on the world, with the gold "
                          "judge itself: a perfect reward model, to tell PPO's limits from the reward model's",
                          key=("ppo.reward",), choices=("model", "judge")),
                   Option("--out", "directory in the run to write the policy to, for a side experiment (default: ppo)"))),
    Stage("ppo-judge", "PPO against the gold judge itself, a perfect reward model: the ceiling of the reward model's "
          "part (the world only) -> ppo-judge/", reads=("sft", "data/prompts"), writes="ppo-judge", sections=("ppo",),
          skip=no_ablation, run=run_ppo_judge, done=has_summary, flops=eta.ppo_flops, fixed_seconds=5,
          every_rank=True, trains=True),
    Stage("ppo-noptx", "PPO without PPO-ptx: what the pretraining loss keeps of the language model -> ppo-noptx/",
          reads=("sft", "reward", "data/prompts"), writes="ppo-noptx", sections=("ppo",),
          skip=lambda r: no_ablation(r) or (None if r.ppo.ptx_coef > 0 else "ppo.ptx_coef is 0: PPO is without ptx"),
          run=run_ppo_noptx, done=has_summary, flops=eta.ppo_flops, fixed_seconds=5, every_rank=True, trains=True),
    Stage("eval", "evaluate the models of the run (or one, with --stage)",
          reads=("base", "sft", "reward", "ppo"), writes="eval", run=run_eval, flops=eta.eval_flops, fixed_seconds=3,
          rerun=True, done=lambda run_dir, out: all(eval_is_current(run_dir, s) for s in (*EVALUATED, "reward")),
          options=(Option("--stage", "which stage's model to evaluate: base, sft, reward, ppo (or any model folder "
                          "of the run)"),)),
    Stage("report", "render runs/NAME/report.html from what the run holds: metrics, plots, answers side by side",
          reads=("eval",), writes="report.html", run=run_report, done=exists, fixed_seconds=2, rerun=True,
          options=(Option("--card", "also print the results card: what each stage added, in Markdown", type=bool),)),
)
BY_NAME = {s.name: s for s in STAGES}
# `chatforge run`: from your own model and data to an aligned model in one command
RUN_OPTIONS = (BASE_MODEL, SFT_DATA, PREFERENCES,
               Option("--prompts", "prompts to sample answers for and to run PPO on (JSONL with 'messages' or 'prompt')",
                      key=("sample.prompts", "ppo.prompts")),
               lora_rank("sft", "reward", "ppo"))
