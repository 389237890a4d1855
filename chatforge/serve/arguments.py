"""The command-line arguments of `chatforge chat` and `chatforge serve`, and their checks.

Kept apart from the servers themselves so that building the `chatforge` parser imports nothing heavy.
chatforge.cli takes serve's options and the model options from here; the checks run first in each
command's main, so a value out of range is one line and exit 2 before a model loads or a URL is printed.
"""

from __future__ import annotations

import argparse
import math
import re

from chatforge.errors import UserError

MAX_TOKENS = 4096  # the longest answer `chatforge chat --max-tokens` and /max_tokens accept


def add_model_arguments(parser: argparse.ArgumentParser):
    """What `chatforge chat` and `chatforge serve` both take: the model and the moderation settings."""
    parser.add_argument("model", help="model directory, e.g. runs/laptop/sft (any local Hugging Face chat model)")
    parser.add_argument("--moderation", help="moderation rules file (YAML); default: the built-in rules")
    parser.add_argument("--no-moderation", action="store_true", help="turn the moderation filter off")
    parser.add_argument("--moderation-log", help="append every moderation decision to this JSON-lines file")


def add_chat_arguments(parser: argparse.ArgumentParser):
    """The arguments of `chatforge chat`, as its main reads them. chatforge.cli declares the same flags with argparse
    range types, so that the command line refuses a bad value as it refuses any other flag; check_chat_arguments
    holds the same bounds for callers that build their own parser."""
    add_model_arguments(parser)
    parser.add_argument("--system", help="system message")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default), at most 2")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, above 0 and at most 1 (default 1)")
    parser.add_argument("--max-tokens", type=int, default=256, help=f"longest answer, 1 to {MAX_TOKENS} (default 256)")


def check_model_arguments(args):
    """UserError for model and moderation settings that contradict each other (chat and serve alike)."""
    if args.no_moderation and args.moderation:
        raise UserError("--moderation and --no-moderation contradict each other; give one")


def check_chat_arguments(args):
    """UserError (one line, exit 2) for a setting out of range, before the model loads."""
    check_model_arguments(args)
    if not (math.isfinite(args.temperature) and 0.0 <= args.temperature <= 2.0):
        raise UserError(f"--temperature must be from 0 to 2; got {args.temperature:g}")
    if not (math.isfinite(args.top_p) and 0.0 < args.top_p <= 1.0):
        raise UserError(f"--top-p must be above 0 and at most 1; got {args.top_p:g}")
    if not 1 <= args.max_tokens <= MAX_TOKENS:
        raise UserError(f"--max-tokens must be from 1 to {MAX_TOKENS}; got {args.max_tokens}")


def add_serve_arguments(parser: argparse.ArgumentParser):
    """The arguments of `chatforge serve` (chatforge.cli wires them in)."""
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0: any free port)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages of ORIGIN (e.g. https://example.org, or * for any) call the API from a "
                             "browser; repeatable. Default: only the server's own page")
    parser.add_argument("--feedback", metavar="FILE",
                        help="store the web page's feedback: which of two answers is better, as pairs in the "
                             "rankings format (FILE, .jsonl), and thumbs up/down beside it (FILE's stem + "
                             ".thumbs.ndjson). Default: off (no feedback buttons; /v1/feedback answers 404)")
    parser.add_argument("--name", help="model id reported by /v1/models (default: the directory's name)")
    parser.add_argument("--max-batch", type=int, default=32, help="most requests answered in one batch")
    parser.add_argument("--gather-ms", type=float, default=30.0,
                        help="how long a request waits for others to share its batch (default: 30 ms)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    parser.add_argument("--max-prompt-tokens", type=int, default=4096, help="longest conversation accepted, in tokens")


def check_serve_arguments(args):
    """UserError (one line, exit 2) for a value no server can run with; before anything is loaded or printed."""
    check_model_arguments(args)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535; got {args.port}")
    for flag, value in (("--max-batch", args.max_batch), ("--max-tokens-limit", args.max_tokens_limit),
                        ("--max-prompt-tokens", args.max_prompt_tokens)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1; got {value}")
    if not (math.isfinite(args.gather_ms) and 0 <= args.gather_ms <= 10_000):
        raise UserError(f"--gather-ms must be from 0 to 10000; got {args.gather_ms}")
    for origin in args.allow_origin:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise UserError(f"--allow-origin takes an origin such as https://example.org (scheme and host, no path) "
                            f"or *; got {origin!r}")
