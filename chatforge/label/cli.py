"""The `label` subcommand: people rank the run's samples in a web app (docs/labelling.md).

    chatforge label [serve] --run runs/NAME [--samples FILE] [--host 127.0.0.1] [--port 8100]
    chatforge label add-annotator NAME --run runs/NAME [--new-token]
    chatforge label export --run runs/NAME [--out FILE] [--no-merge] [--min-labels M]
    chatforge label simulate --run runs/NAME --error P [--annotators A] [--seed S] [--url URL]
    chatforge label ai --run runs/NAME --endpoint URL --model NAME [--name NAME] [--api-key-env VAR] [--url URL]

`add_parsers(subparsers)` adds it to the `chatforge` command's subparsers and `main(args)` runs it (user errors
are raised as UserError, which chatforge.cli prints in one line).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chatforge.config import load_recipe
from chatforge.errors import UserError
from chatforge.label.config import LabelConfig
from chatforge.label.store import LabelStore, store_path
from chatforge.label.tasks import read_tasks

DEFAULT_RUN = "runs/laptop"
DEFAULT_PORT = 8100
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Add `label` and its subcommands (serve when none is named) to `subparsers`."""
    label = subparsers.add_parser("label", help="people rank the run's samples in a web app; export for the reward model",
                                  description="A web app where annotators rank the SFT model's K answers per prompt.")
    _run_options(label, top=True)
    _serve_options(label, top=True)
    sub = label.add_subparsers(dest="label_command", metavar="{serve,add-annotator,export,simulate,ai}")
    serve = sub.add_parser("serve", help="serve the labelling app (the default)")
    _run_options(serve)
    _serve_options(serve)
    add = sub.add_parser("add-annotator", help="register an annotator and print their token")
    _run_options(add)
    add.add_argument("name", help="the annotator's name (letters, digits, '_', '.', '-')")
    add.add_argument("--new-token", action="store_true", help="give an existing annotator a new token")
    export = sub.add_parser("export", help="write the labels as rankings (docs/rankings.md)")
    _run_options(export)
    export.add_argument("--out", help="rankings file to write (default: RUN/rankings/labels.jsonl)")
    export.add_argument("--no-merge", action="store_true", help="one line per annotator instead of one per task")
    export.add_argument("--min-labels", type=int, default=1, help="leave out tasks with fewer rankable labels")
    _simulate_parser(sub)
    _ai_parser(sub)
    return label


def _run_options(p, top: bool = False):
    # Given again on every subcommand so that `label add-annotator X --run R` works too; SUPPRESS keeps a
    # subcommand's missing option from overwriting what was given before the subcommand's name.
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    p.add_argument("--run", default=default(DEFAULT_RUN), help=f"run directory (default: {DEFAULT_RUN})")
    p.add_argument("--recipe", type=Path, default=default(None),
                   help="YAML recipe (default: the run's recipe.yaml, else the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=default([]), metavar="SECTION.KEY=VALUE",
                   help="override one recipe value, e.g. --set label.annotators_per_task=2 (repeatable)")


def _serve_options(p, top: bool = False):
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    p.add_argument("--samples", default=default(None),
                   help="tasks: a JSONL file of K answers per prompt (default: RUN/rankings/samples.jsonl)")
    p.add_argument("--host", default=default("127.0.0.1"), help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=default(DEFAULT_PORT), help=f"default {DEFAULT_PORT}")


def _simulate_parser(sub):
    p = sub.add_parser("simulate", help="the gold judge labels every task through the API (built-in world)")
    _run_options(p)
    p.add_argument("--samples", default=argparse.SUPPRESS, help="tasks file (default: RUN/rankings/samples.jsonl)")
    p.add_argument("--error", type=float, default=0.0,
                   help="probability that a label is replaced by a random one (default 0)")
    p.add_argument("--annotators", type=int, help="how many (default: label.annotators_per_task)")
    p.add_argument("--prefix", default="sim", help="their names: PREFIX-00, PREFIX-01, ... (default sim)")
    p.add_argument("--seed", type=int, default=0, help="seed of the errors (default 0)")
    p.add_argument("--url", help="a running label server of this run (default: start one in this process)")


def _ai_parser(sub):
    p = sub.add_parser("ai", help="a model behind an OpenAI-compatible endpoint labels through the API")
    _run_options(p)
    p.add_argument("--samples", default=argparse.SUPPRESS, help="tasks file (default: RUN/rankings/samples.jsonl)")
    p.add_argument("--endpoint", required=True, help="base URL of the model's API, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="the model name the endpoint expects")
    p.add_argument("--name", help="the annotator's name (default: ai-MODEL)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's key")
    p.add_argument("--limit", type=int, help="stop after this many labels")
    p.add_argument("--url", help="a running label server of this run (default: start one in this process)")


def label_config(args) -> LabelConfig:
    """The run's recipe (or --recipe), with --set overrides: its `label` section."""
    saved = Path(args.run) / "recipe.yaml"
    path = args.recipe or (saved if saved.exists() else None)
    return load_recipe(path, args.overrides).label


def open_store(args, with_tasks: bool) -> LabelStore:
    """The run's store; with_tasks also copies in the tasks of --samples (or the run's samples) not there yet."""
    store = LabelStore(store_path(args.run), create=with_tasks)
    if with_tasks:
        samples = Path(getattr(args, "samples", None) or Path(args.run) / "rankings" / "samples.jsonl")
        if not samples.exists():
            raise UserError(f"{samples}: no samples to label (run `chatforge sample --run {args.run}`, "
                            f"or give --samples FILE)")
        added = store.add_tasks(read_tasks(samples), str(samples))
        print(f"label: {added} new tasks from {samples}" if added else f"label: tasks of {samples} already in the store")
    return store


def main(args) -> None:
    command = getattr(args, "label_command", None) or "serve"
    {"serve": serve, "add-annotator": add_annotator, "export": export,
     "simulate": simulate, "ai": ai}[command](args)


def add_annotator(args):
    store = LabelStore(store_path(args.run))
    token = store.add_annotator(args.name, new_token=args.new_token)
    print(f"annotator {args.name}: token {token}")
    print("  (shown once: give it to them; the page asks for it, scripts send 'Authorization: Bearer TOKEN')")


def export(args):
    from chatforge.label.export import export as write_export

    store = LabelStore(store_path(args.run), create=False)
    out = Path(args.out) if args.out else Path(args.run) / "rankings" / "labels.jsonl"
    report = write_export(store, out, merge=not args.no_merge, min_labels=args.min_labels)
    how = "one line per task, merged by Borda count" if report["merged"] else "one line per label"
    print(f"label export: {report['lines']} rankings of {report['tasks']} tasks ({how}; {report['labels']} labels, "
          f"{report['not_rankable']} not rankable left out) -> {out}")


def serve(args):
    import uvicorn  # deferred: only serving needs it

    from chatforge.label.api import create_app
    from chatforge.label.gold import GoldJudge

    cfg = label_config(args)
    store = open_store(args, with_tasks=True)
    app = create_app(store, cfg, GoldJudge.of_run(args.run))
    if args.host not in LOOPBACK:
        print(f"label: listening on {args.host}: tokens travel in clear text over plain HTTP; "
              f"put it behind HTTPS for anything but a trusted network", file=sys.stderr)
    if not store.annotators():
        print(f"label: no annotators yet: chatforge label add-annotator NAME --run {args.run}")
    print(f"chatforge label: http://{args.host}:{args.port}/  (dashboard at /dashboard, API at /api)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _local_server(args, store, cfg, gold):
    """--url, or a server on this store started in this process: (url, a function that stops it)."""
    from chatforge.label.api import background_server, create_app

    if args.url:
        return args.url, lambda: None
    server, thread, url = background_server(create_app(store, cfg, gold))

    def stop():
        server.should_exit = True
        thread.join(timeout=30)

    return url, stop


def simulate(args):
    from chatforge.label.gold import GoldJudge
    from chatforge.label.simulate import run_simulation

    cfg = label_config(args)
    if not 0.0 <= args.error <= 1.0:
        raise UserError(f"--error must be a probability in [0, 1], got {args.error}")
    gold = GoldJudge.of_run(args.run)
    if gold is None:
        raise UserError(f"{Path(args.run) / 'data'}: no built-in world, so no gold judge to simulate annotators with")
    store = open_store(args, with_tasks=True)
    tasks = store.tasks()
    if any("gold" not in t for t in tasks):
        raise UserError(f"{store.path}: {sum('gold' not in t for t in tasks)} tasks have no 'gold' (not the world's "
                        f"samples); the judge cannot label them")
    count = args.annotators or cfg.annotators_per_task
    tokens = {f"{args.prefix}-{i:02d}": None for i in range(count)}
    tokens = {name: store.add_annotator(name, new_token=True) for name in tokens}
    url, stop = _local_server(args, store, cfg, gold)
    try:
        counts = run_simulation(url, tokens, tasks, gold, args.error, args.seed)
    finally:
        stop()
    print(f"label simulate: {sum(counts.values())} labels by {count} simulated annotators "
          f"(error {args.error:g}): " + ", ".join(f"{n} {c}" for n, c in counts.items()))


def ai(args):
    from chatforge.label.ai import run_ai

    cfg = label_config(args)
    store = open_store(args, with_tasks=True)
    name = args.name or "ai-" + "".join(c if c.isalnum() or c in "_.-" else "-" for c in args.model)[:37]
    token = store.add_annotator(name, new_token=True)
    url, stop = _local_server(args, store, cfg, None)
    try:
        counts = run_ai(url, token, args.endpoint, args.model, os.environ.get(args.api_key_env), args.limit)
    finally:
        stop()
    print(f"label ai: {name} labelled {counts['labelled']} tasks, skipped {counts['skipped']} "
          f"(replies that were no valid ranking)")
