"""The `chatforge` command: one thin subcommand per stage, plus `run` for all of them in order.

    chatforge run       [--recipe R] [--run runs/NAME] [--set section.key=value ...]
    chatforge world     --run runs/NAME
    chatforge tokenizer --run runs/NAME
    chatforge pretrain  --run runs/NAME [--init HF_DIR]
    chatforge sft       --run runs/NAME [--data FILE] [--lora-rank R] [--skip-invalid]
    chatforge sample    --run runs/NAME          (K answers per ranking prompt from the SFT model)
    chatforge rank      --run runs/NAME          (the gold judge ranks them: rankings/rankings.jsonl)
    chatforge reward    --run runs/NAME [--rankings FILE] [--skip-invalid]
    chatforge ppo       --run runs/NAME [--prompts FILE] [--skip-invalid] [--ptx-coef G] [--reward judge] [--out DIR]
    chatforge eval      --run runs/NAME --stage base|sft|reward|ppo
    chatforge report    --run runs/NAME          (re-render runs/NAME/report.html)
    chatforge chat      MODEL_DIR [--system TEXT] [--temperature T] [--no-moderation]
    chatforge serve     MODEL_DIR [--host H] [--port P] [--api-key KEY] [--no-moderation]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatforge.errors import UserError

DEFAULT_RUN = "runs/laptop"


def _common(p: argparse.ArgumentParser):
    p.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default: {DEFAULT_RUN})")
    p.add_argument("--recipe", type=Path, help="YAML recipe (default: the run's recipe.yaml, else the laptop defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe value, e.g. --set pretrain.steps=200 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatforge", description="Train your own ChatGPT, end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("run", "all stages in order (each skips when done, resumes when partial)"),
        ("world", "generate the built-in bilingual world: facts, corpus, dialogues, prompts, eval sets"),
        ("tokenizer", "train the byte-level BPE tokenizer on the corpus"),
        ("pretrain", "next-token pretraining on the corpus mixture -> base/"),
        ("sft", "supervised fine-tuning on dialogues, loss on assistant tokens only -> sft/"),
        ("sample", "the SFT model answers each ranking prompt K times -> rankings/samples.jsonl"),
        ("rank", "annotators (the gold judge, on the world) rank each prompt's K answers -> rankings/rankings.jsonl"),
        ("reward", "the reward model, trained on the rankings with the K-way pairwise loss -> reward/"),
        ("ppo", "RL: PPO from the SFT model against the frozen reward model, KL penalty and PPO-ptx -> ppo/"),
        ("eval", "evaluate a stage's model on the world's evaluation sets"),
        ("report", "render runs/NAME/report.html from what the run holds: metrics, plots, answers side by side"),
    ]:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name == "pretrain":
            p.add_argument("--init", help="start from this local Hugging Face causal-LM directory")
        if name == "sft":
            p.add_argument("--data", help="dialogue file or folder (OpenAI messages, ShareGPT or Alpaca)")
            p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank instead of all weights")
            p.add_argument("--skip-invalid", action="store_true", help="skip and count malformed dialogues")
        if name == "sample":
            p.add_argument("--prompts", help="prompt file (JSONL with 'messages' or 'prompt', optional 'user_id')")
        if name == "reward":
            p.add_argument("--rankings", help="rankings file or folder (the format of docs/rankings.md)")
            p.add_argument("--skip-invalid", action="store_true", help="skip and count malformed rankings")
        if name == "ppo":
            p.add_argument("--prompts", help="prompt file (JSONL with 'messages' or 'prompt'); default: the world's PPO prompts")
            p.add_argument("--skip-invalid", action="store_true", help="skip and count empty or over-long prompts")
            p.add_argument("--ptx-coef", type=float, help="weight of the pretraining loss (PPO-ptx); 0 for plain PPO")
            p.add_argument("--reward", choices=("model", "judge"),
                           help="score answers with the reward model (default) or, on the world, with the gold judge "
                                "itself: a perfect reward model, to tell PPO's limits from the reward model's")
            p.add_argument("--out", default="ppo", help="directory in the run to write the policy to (default: ppo)")
        if name == "eval":
            p.add_argument("--stage", default="base",
                           help="which stage's model to evaluate: base, sft, reward, ppo (or any model folder of the run)")
    _talk_parsers(sub)
    return parser


def _talk_parsers(sub):
    """chat and serve take a model directory, not a run: any stage's, or any local HF chat model."""
    chat = sub.add_parser("chat", help="talk to a model in the terminal (history, streaming)")
    serve = sub.add_parser("serve", help="OpenAI-compatible API and web chat page for a model")
    for p in (chat, serve):
        p.add_argument("model", help="model directory, e.g. runs/laptop/sft (any local Hugging Face chat model)")
        p.add_argument("--moderation", help="moderation rules file (YAML); default: the built-in rules")
        p.add_argument("--no-moderation", action="store_true", help="turn the moderation filter off")
        p.add_argument("--moderation-log", help="append every moderation decision to this JSON-lines file")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--max-tokens", type=int, default=256)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests")
    serve.add_argument("--name", help="model id reported by /v1/models (default: the directory's name)")
    serve.add_argument("--max-batch", type=int, default=32, help="most requests answered in one batch")
    serve.add_argument("--gather-ms", type=float, default=30.0,
                       help="how long a request waits for others to share its batch (default: 30 ms)")
    serve.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    serve.add_argument("--max-prompt-tokens", type=int, default=4096, help="longest conversation accepted, in tokens")


def resolve_recipe(args):
    """--recipe, else the run's saved recipe, else defaults; then --set overrides. Saved as recipe.yaml."""
    from chatforge import dist
    from chatforge.config import load_recipe, save_yaml, to_dict

    run_dir = Path(args.run)
    saved = run_dir / "recipe.yaml"
    path = args.recipe or (saved if saved.exists() else None)
    overrides = list(args.overrides)
    if getattr(args, "init", None):
        overrides.append(f"pretrain.init={args.init}")
    if getattr(args, "data", None):
        overrides.append(f"sft.data={args.data}")
    if getattr(args, "lora_rank", None) is not None:
        overrides.append(f"sft.lora_rank={args.lora_rank}")
    section = {"reward": "reward", "sample": "reward", "ppo": "ppo"}.get(args.command, "sft")
    if getattr(args, "skip_invalid", False):
        overrides.append(f"{section}.skip_invalid=true")
    if getattr(args, "prompts", None):
        overrides.append(f"{section}.prompts={args.prompts}")
    if getattr(args, "ptx_coef", None) is not None:
        overrides.append(f"ppo.ptx_coef={args.ptx_coef}")
    if getattr(args, "reward", None):
        overrides.append(f"ppo.reward={args.reward}")
    if getattr(args, "rankings", None):
        overrides.append(f"reward.rankings={args.rankings}")
    recipe = load_recipe(path, overrides)
    if getattr(args, "out", "ppo") != "ppo":  # a side experiment (e.g. PPO without ptx) keeps its recipe to itself
        saved = run_dir / args.out / "recipe.yaml"
    if dist.get().is_main:
        save_yaml(to_dict(recipe), saved)
    return run_dir, recipe


def dispatch(args):
    from transformers.utils import logging as hf_logging

    from chatforge import dist, pipeline

    hf_logging.disable_progress_bar()  # per-file loading bars drown our own progress display
    if args.command in ("chat", "serve"):
        from chatforge.serve import app, chat

        (chat if args.command == "chat" else app).main(args)
        return
    dist.init()
    run_dir, recipe = resolve_recipe(args)
    if args.command == "run":
        pipeline.run_all(run_dir, recipe)
    elif args.command == "world":
        pipeline.stage_world(run_dir, recipe)
    elif args.command == "tokenizer":
        pipeline.stage_tokenizer(run_dir, recipe)
    elif args.command == "pretrain":
        from chatforge.train import pretrain

        pretrain.run(run_dir, recipe)
    elif args.command == "sft":
        from chatforge.train import sft

        sft.run(run_dir, recipe)
    elif args.command in ("sample", "rank"):
        from chatforge import feedback

        if dist.get().is_main:
            (feedback.sample if args.command == "sample" else feedback.rank)(run_dir, recipe)
    elif args.command == "reward":
        from chatforge.train import reward

        reward.run(run_dir, recipe)
    elif args.command == "ppo":
        from chatforge.train import ppo

        ppo.run(run_dir, recipe, out=args.out)
    elif args.command == "eval":
        pipeline.stage_eval(run_dir, args.stage)
    elif args.command == "report" and dist.get().is_main:
        from chatforge.report import render

        print(f"report: {render(run_dir)}")
    dist.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dispatch(args)
    except UserError as e:
        print(f"chatforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nchatforge {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
