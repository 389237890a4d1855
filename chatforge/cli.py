"""The `chatforge` command: a subcommand per stage of `chatforge.stages`, `run` for all of them in order, and
`chat` / `serve` to talk to a model.

    chatforge run       [--recipe R] [--run runs/NAME] [--set section.key=value ...]
    chatforge <stage>   [--run runs/NAME] [the stage's options]      (chatforge <stage> --help lists them)
    chatforge chat      MODEL_DIR [--system TEXT] [--temperature T] [--no-moderation]
    chatforge serve     MODEL_DIR [--host H] [--port P] [--api-key KEY] [--no-moderation]
    chatforge label     [serve|add-annotator|export|simulate|ai] --run runs/NAME   (docs/labelling.md)
"""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging

from chatforge import dist, pipeline
from chatforge.config import Recipe, load_recipe, origin, save_yaml, to_dict
from chatforge.errors import UserError
from chatforge.io import atomic_write_bytes
from chatforge.label import cli as label_cli
from chatforge.serve import app, chat
from chatforge.serve.arguments import MAX_TOKENS, add_model_arguments, add_serve_arguments
from chatforge.stages import BY_NAME, RUN_OPTIONS, STAGES, Option

DEFAULT_RUN = "runs/laptop"


class _Parser(argparse.ArgumentParser):
    """argparse, except that a command line it cannot read is one line, as every other error is: the usage it
    would print first is what --help shows."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def _in_range(kind: type, low: float, high: float, low_open: bool = False):
    """An argparse type: a `kind` number in [low, high] (or (low, high] when low_open), nan refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if math.isnan(value) or value < low or value > high or (low_open and value == low):
            bounds = f"{'(' if low_open else '['}{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value

    return parse


def _common(p: argparse.ArgumentParser):
    p.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default: {DEFAULT_RUN})")
    p.add_argument("--recipe", type=Path, help="YAML recipe (default: the run's recipe.yaml, else the laptop defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe value, e.g. --set pretrain.steps=200 (repeatable)")


def _dest(option: Option) -> str:
    return option.flag.lstrip("-").replace("-", "_")


def _add_option(p: argparse.ArgumentParser, option: Option):
    flags = (option.flag, *option.aliases)
    if option.type is bool:
        p.add_argument(*flags, dest=_dest(option), action="store_true", help=option.help)
    else:
        p.add_argument(*flags, dest=_dest(option), type=option.type, choices=option.choices, default=option.default,
                       help=option.help)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chatforge", description="Train your own ChatGPT, end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="all stages in order (each skips when done, resumes when partial)")
    _common(run)
    for option in RUN_OPTIONS:
        _add_option(run, option)
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        _common(p)
        for option in stage.options:
            _add_option(p, option)
    _talk_parsers(sub)
    label_cli.add_parsers(sub)
    return parser


def _talk_parsers(sub):
    """chat and serve take a model directory, not a run: any stage's, or any local HF chat model."""
    # serve's options are chatforge.serve.arguments' own, which its main and tests read: defined once, so the command
    # line cannot lag behind what the server reads
    chat_p = sub.add_parser("chat", help="talk to a model in the terminal (history, streaming)")
    serve_p = sub.add_parser("serve", help="OpenAI-compatible API and web chat page for a model")
    add_model_arguments(chat_p)
    chat_p.add_argument("--system", help="system message")
    # the bounds of the REPL's /temp, /top_p and /max_tokens (serve.chat), which the flags set at the start; checked
    # by argparse here, so a bad value is "argument --temperature: ..." like every other flag the command line refuses
    chat_p.add_argument("--temperature", type=_in_range(float, 0.0, 2.0), default=0.0,
                        help="0 is greedy (default), at most 2")
    chat_p.add_argument("--top-p", type=_in_range(float, 0.0, 1.0, low_open=True), default=1.0,
                        help="nucleus sampling, above 0 and at most 1 (default 1)")
    chat_p.add_argument("--max-tokens", type=_in_range(int, 1, MAX_TOKENS), default=256,
                        help=f"longest answer, 1 to {MAX_TOKENS} (default 256)")
    add_serve_arguments(serve_p)


def _options(command: str) -> tuple[Option, ...]:
    return RUN_OPTIONS if command == "run" else BY_NAME[command].options


def _option_overrides(args) -> list[str]:
    """`section.key=value` for each recipe field an option given on the command line sets."""
    out = []
    for option in _options(args.command):
        value = getattr(args, _dest(option))
        if value not in (None, False):
            out += [f"{key}={'true' if value is True else value}" for key in option.key]
    return out


def _run_options(args) -> dict:
    """The stage's options that are not recipe fields, as keyword arguments of its run function."""
    return {_dest(option): getattr(args, _dest(option)) for option in _options(args.command) if not option.key}


def resolve_recipe(args) -> tuple[Path, Recipe, Path]:
    """(run directory, recipe, where the recipe is kept): --recipe, else the run's saved recipe, else defaults; then
    the command's options and --set overrides. A side experiment (`--out DIR`) keeps its recipe in DIR."""
    run_dir = Path(args.run)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a folder (--run names the run's folder)")
    saved = run_dir / "recipe.yaml"
    recipe = load_recipe(args.recipe or (saved if saved.exists() else None), [*_option_overrides(args), *args.overrides])
    out = getattr(args, "out", None)
    target = run_dir / out / "recipe.yaml" if out and out != "ppo" else saved
    if target.exists():
        _refuse_changes_to_complete_stages(load_recipe(target), recipe, run_dir, out)
    return run_dir, recipe, target


def _refuse_changes_to_complete_stages(before: Recipe, after: Recipe, run_dir: Path, out: str | None):
    """A setting that would change the output of a stage that is already complete is refused: the run's recipe must
    keep saying what made its models."""
    changed = []
    for stage in STAGES:
        keys = [k for s in stage.sections for k in _diff(to_dict(getattr(before, s)), to_dict(getattr(after, s)), s)]
        if keys and stage.done(run_dir, pipeline.output_of(stage, run_dir, out if stage.name == "ppo" else None)):
            changed.append(f"{stage.name} ({', '.join(keys)})")
    if changed:
        raise UserError(f"{run_dir}: these settings differ from the run's recipe and would change stages that are "
                        f"already complete: {'; '.join(changed)}. Use a new --run, or delete those stages' output to "
                        f"make them again")


def _diff(a: dict, b: dict, prefix: str) -> list[str]:
    """The dotted keys whose values differ between two config mappings."""
    out = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += _diff(a[key], b[key], f"{prefix}.{key}")
        elif a.get(key) != b.get(key):
            out.append(f"{prefix}.{key}")
    return out


@contextmanager
def committed(run_dir: Path, target: Path, recipe: Recipe):
    """Save the recipe for the command's stages to read back; if the command fails on the user's input before any
    stage wrote anything, take it back, with the folders the command made: a failing command changes nothing in
    the run folder. (A stage that did write keeps the recipe it was made with.)"""
    before = target.read_bytes() if target.is_file() else None
    made = [p for p in (target.parent.parent, target.parent) if not p.exists()]
    files = _files(run_dir, skip=target)
    if dist.get().is_main:
        save_yaml(to_dict(recipe), target)
    try:
        yield
    except UserError:
        if dist.get().is_main and _files(run_dir, skip=target) == files:
            if before is None:
                target.unlink(missing_ok=True)
            else:
                atomic_write_bytes(target, before)
            for folder in reversed(made):
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
        raise


def _files(run_dir: Path, skip: Path) -> set[tuple[str, int, int]]:
    """(path, size, modification time) of every file in the run folder but `skip`: whether a command wrote anything."""
    if not run_dir.is_dir():
        return set()
    return {(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file() and p != skip}


@contextmanager
def blamed(args, source: Path | None):
    """An error a stage raises about a recipe value ("sft.max_len (1000) is longer than ...") starts with where
    that value came from: the --set or option that gave it, else the recipe file's line."""
    try:
        yield
    except UserError as e:
        given = []  # in the order resolve_recipe applies them: options, then --set
        for option in _options(args.command):
            value = getattr(args, _dest(option))
            if option.key and value not in (None, False):
                given += [(f"{option.flag} {value}" if value is not True else option.flag, key) for key in option.key]
        given += [(f"--set {text}", text.split("=", 1)[0].strip()) for text in args.overrides]
        where = origin(str(e), source, given)
        if where is None:
            raise
        raise type(e)(f"{where}: {e}") from None


def dispatch(args):
    hf_logging.disable_progress_bar()  # per-file loading bars drown our own progress display
    if args.command in ("chat", "serve"):
        (chat if args.command == "chat" else app).main(args)
        return
    if args.command == "label":  # works on a run's samples and its own store, never on the recipe
        label_cli.main(args)
        return
    source = args.recipe or (Path(args.run) / "recipe.yaml" if (Path(args.run) / "recipe.yaml").is_file() else None)
    run_dir, recipe, target = resolve_recipe(args)
    with blamed(args, source):
        dist.init(recipe.compute.device, recipe.compute.parallel)
        with committed(run_dir, target, recipe):
            if args.command == "run":
                pipeline.run_all(run_dir, recipe)
            else:
                pipeline.run_stage(BY_NAME[args.command], run_dir, recipe, **_run_options(args))
    dist.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dispatch(args)
    except UserError as e:
        print(f"chatforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "" if args.command in ("chat", "serve", "label") else "; run the same command again to resume"
        print(f"\nchatforge {args.command}: interrupted{resume}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
