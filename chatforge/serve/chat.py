"""`chatforge chat MODEL_DIR`: talk to a model in the terminal.

The conversation so far is sent with every turn (the model sees earlier turns through its chat
template); answers are printed as they are generated. Commands:

    /reset          forget the conversation (the system message stays)
    /system TEXT    set the system message (empty: none) and start over
    /save FILE      write the conversation as JSON ({"messages": [...]}, the OpenAI format)
    /temp X  /top_p X  /max_tokens N     sampling settings (temperature 0 is greedy)
    /settings       show them        /help    this list        /quit   leave (or Ctrl-D)
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from chatforge.errors import UserError
from chatforge.io import atomic_write_json
from chatforge.serve.arguments import MAX_TOKENS, check_chat_arguments
from chatforge.serve.engine import Engine, Sampling, blocked_input, prompt_ids

HELP = __doc__.split("Commands:\n", 1)[1]


class Conversation:
    """History, settings and one model: what the REPL and the tests drive."""

    def __init__(self, engine: Engine, moderator=None, sampling: Sampling = Sampling(temperature=0.0), system: str = ""):
        self.engine, self.moderator, self.sampling, self.system = engine, moderator, sampling, system
        self.history: list[dict] = []
        self.forgotten = 0  # exchanges dropped to fit the context

    def messages(self, user_text: str | None = None) -> list[dict]:
        turns = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        return turns + ([{"role": "user", "content": user_text}] if user_text is not None else [])

    def fit(self, user_text: str) -> list[int]:
        """The prompt for the next turn, dropping the oldest exchanges while it leaves too little room
        for the answer in the model's context (small models have short ones)."""
        context = getattr(self.engine.model.config, "max_position_embeddings", 1 << 30)
        room = min(self.sampling.max_tokens, context // 2)
        while True:
            ids = prompt_ids(self.engine.tokenizer, self.messages(user_text))
            if len(ids) + room <= context or not self.history:
                return ids
            self.history = self.history[2:]
            self.forgotten += 1

    def say(self, user_text: str, on_delta=None) -> tuple[str, str]:
        """(answer, finish reason). A blocked exchange is not kept in the history."""
        text = blocked_input(self.moderator, self.messages(user_text))
        if text is not None:
            if on_delta:
                on_delta(text)
            return text, "content_filter"
        text, final = self.engine.complete(self.fit(user_text), self.sampling, on_delta, self.moderator)
        if final.finish != "content_filter":
            self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": text}]
        return text, final.finish

    def save(self, path: str) -> str:
        """Write the conversation; a path that cannot be written is said, and the conversation goes on."""
        if not path:
            return "usage: /save FILE"
        try:
            atomic_write_json(Path(path), {"messages": self.messages()})
        except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
            return f"could not save to {path}: {getattr(e, 'strerror', None) or e} (the conversation is still here; " \
                   "try another path)"
        return f"(saved {len(self.messages())} messages to {path})"

    def command(self, line: str) -> str:
        """Run a /command; returns what to print."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name == "reset":
            self.history = []
            return "(conversation cleared)"
        if name == "system":
            self.system, self.history = arg, []
            return f"(system message {'set' if arg else 'removed'}; conversation cleared)"
        if name == "save":
            return self.save(arg)
        settings = {"temp": ("temperature", float, 0.0, 2.0), "temperature": ("temperature", float, 0.0, 2.0),
                    "top_p": ("top_p", float, 0.01, 1.0), "max_tokens": ("max_tokens", int, 1, MAX_TOKENS)}
        if name in settings:
            field, kind, low, high = settings[name]
            try:
                value = kind(arg)
                if not low <= value <= high:
                    raise ValueError
            except ValueError:
                return f"/{name} takes a {kind.__name__} from {low} to {high}"
            self.sampling = replace(self.sampling, **{field: value})
            return f"({field} = {value})"
        if name == "settings":
            s = self.sampling
            return f"temperature {s.temperature}  top_p {s.top_p}  max_tokens {s.max_tokens}  system {self.system!r}"
        if name == "help":
            return HELP
        return f"unknown command /{name}; /help lists them"


def repl(conversation: Conversation, model_name: str, stdin=sys.stdin, stdout=sys.stdout):
    interactive = stdin.isatty()
    if hasattr(stdin, "reconfigure"):  # a byte that is not UTF-8 arrives as a surrogate, and read_line says so
        stdin.reconfigure(errors="surrogateescape")
    print(f"chatforge chat with {model_name}: type a message, /help for commands, /quit to leave.", file=stdout)
    while True:
        if interactive:
            print("\nyou> ", end="", file=stdout, flush=True)
        line, problem = read_line(stdin)
        if problem:
            print(problem, file=stdout, flush=True)
            continue
        if line is None:
            break
        if not line.strip():
            continue
        if line.strip() in ("/quit", "/exit"):
            break
        if line.startswith("/"):
            print(conversation.command(line.strip()), file=stdout)
            continue
        print("assistant> ", end="", file=stdout, flush=True)
        forgotten = conversation.forgotten
        _, finish = conversation.say(line, on_delta=lambda d: print(d, end="", file=stdout, flush=True))
        note = {"length": "  [cut: max_tokens reached]", "content_filter": "  [blocked by moderation]"}.get(finish, "")
        if conversation.forgotten > forgotten:
            note += "  [the oldest turns no longer fit the model's context and were dropped]"
        print(note, file=stdout, flush=True)


def read_line(stdin) -> tuple[str | None, str | None]:
    """(the next line without its newline, None) or (None, None) at the end, or ("", why) for a line that
    is not UTF-8 text: it is skipped, the conversation goes on."""
    try:
        line = stdin.readline()
    except UnicodeDecodeError as e:  # a stream that could not be told to escape bad bytes
        return "", f"(that line is not UTF-8 text (byte {e.object[e.start]:#04x}); it was not sent)"
    if not line:
        return None, None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(line[e.start]) - 0xDC00 if 0xDC80 <= ord(line[e.start]) <= 0xDCFF else None
        what = f"byte {byte:#04x}" if byte is not None else f"character \\u{ord(line[e.start]):04x}"
        return "", f"(that line is not UTF-8 text ({what} at character {e.start + 1}); it was not sent)"
    return line.rstrip("\n"), None


def load(model_dir: str):
    """(model, tokenizer) of a local Hugging Face chat model, or a UserError that says what is missing."""
    from chatforge.model import load_causal_lm
    from chatforge.tokenizer import load_tokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such model directory")
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    if not tokenizer.chat_template:
        raise UserError(f"{path}: the tokenizer has no chat template (chat_template.jinja), so it cannot chat")
    return model.eval(), tokenizer


def moderator_of(args):
    """The moderator that `--moderation FILE`, `--no-moderation` and `--moderation-log FILE` ask for."""
    from chatforge.serve.moderation import Moderator

    if args.no_moderation:
        return None
    if args.moderation:
        return Moderator.from_file(args.moderation, log_path=args.moderation_log)
    return Moderator.default(log_path=args.moderation_log)


def main(args) -> None:
    check_chat_arguments(args)
    model, tokenizer = load(args.model)
    moderator = moderator_of(args)
    engine = Engine(model, tokenizer, max_batch=1)
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    conversation = Conversation(engine, moderator, sampling, args.system or "")
    try:
        repl(conversation, Path(args.model).name)
    finally:
        engine.close()
