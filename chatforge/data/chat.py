"""Dialogues for SFT, read from the shapes people bring, normalised to OpenAI messages (docs/data-formats.md).

Shapes, detected per record from its keys (or forced with `fmt`):
  messages           {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  sharegpt           {"conversations": [{"from": "system"|"human"|"gpt"|..., "value": "..."}, ...]}
                     (or the same turns as {"role", "content"})
  alpaca             {"instruction": "...", "input": "..." (optional), "output": "..."}
  prompt_completion  {"prompt": "...", "completion": "..."}, or both as message lists (TRL's conversational form)
A content may be a list of text parts, [{"type": "text", "text": "..."}, ...], joined with nothing between
them as chat templates do. Files and folders are those of `chatforge.data.containers`. Every bad record is a
DataError that starts with its location and names the field; with `skip_invalid` it is counted under a short
reason key and reading goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatforge.data.containers import records
from chatforge.errors import DataError
from chatforge.io import BadLine

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
FORMAT_KEYS = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction",
               "prompt_completion": "prompt"}  # checked in this order; "completion" alone also means the last
ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SPEAKERS = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "chatgpt": "assistant"}
TEXT_PART_TYPES = ("text", "input_text", "output_text")  # OpenAI's chat and responses APIs name text parts so
MAX_FIRST_ERRORS = 5


@dataclass
class LoadReport:
    path: Path  # what was asked for: a file or a folder
    fmt: str  # the format(s) found, e.g. "messages" or "alpaca+sharegpt"; the forced one when fmt was given
    num_read: int = 0  # records seen, broken lines included
    num_kept: int = 0  # valid dialogues returned
    skipped: dict[str, int] = field(default_factory=dict)  # reason key -> count
    first_errors: list[str] = field(default_factory=list)  # the first few full messages, for the log


def read_dialogues(path: Path, fmt: str = "auto", skip_invalid: bool = False) -> tuple[list[list[dict]], LoadReport]:
    """Every valid dialogue under `path` as a list of {"role", "content"} turns, and what was read and skipped."""
    path = Path(path)
    _check_fmt(fmt)
    report = LoadReport(path=path, fmt=fmt)
    dialogues, found = [], set()
    for where, item in records(path):
        report.num_read += 1
        try:
            record_fmt, dialogue = _convert(item, fmt)
        except BadLine as e:
            _skip_or_raise(report, f"{where}: {e}", e.reason, skip_invalid)
            continue
        found.add(record_fmt)
        dialogues.append(dialogue)
    report.num_kept = len(dialogues)
    report.fmt = "+".join(sorted(found)) or fmt
    if not dialogues:
        raise DataError(f"{path}: no valid dialogues ({_summary(report)}); first error: {report.first_errors[0]}")
    return dialogues, report


def parse_dialogue(record: object, where: str, fmt: str = "auto") -> list[dict]:
    """One record as {"role", "content"} turns; a bad record is a DataError starting with `where`."""
    _check_fmt(fmt)
    try:
        return _convert(record, fmt)[1]
    except BadLine as e:
        raise DataError(f"{where}: {e}") from None


def format_report(report: LoadReport) -> str:
    """One line for the log, and a second with the first skipped record when there was one."""
    line = f"read {report.num_kept} dialogues from {report.path} ({report.fmt})"
    if not report.skipped:
        return line
    return f"{line}; {_summary(report)}\n  first skipped: {report.first_errors[0]}"


def _check_fmt(fmt: str):
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown dialogue format {fmt!r} (expected auto, {', '.join(FORMATS)})")


def _summary(report: LoadReport) -> str:
    counts = sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"skipped {sum(report.skipped.values())}: " + ", ".join(f"{n} {reason}" for reason, n in counts)


def _skip_or_raise(report: LoadReport, message: str, reason: str, skip_invalid: bool):
    if not skip_invalid:
        raise DataError(message)
    report.skipped[reason] = report.skipped.get(reason, 0) + 1
    if len(report.first_errors) < MAX_FIRST_ERRORS:
        report.first_errors.append(message)


# ---- one record -> messages ----


def _convert(record: object, fmt: str) -> tuple[str, list[dict]]:
    if isinstance(record, BadLine):  # a line that did not parse: its own reason and message
        raise record
    if not isinstance(record, dict):
        raise BadLine("not_object", f"expected a JSON object (one dialogue), got {_kind(record)}")
    if fmt == "auto":
        fmt = _detect(record)
    if fmt == "messages":
        turns, labels = _turns(record, "messages", ROLES, "role")
        _check_order(turns, labels, "messages")
        return fmt, turns
    if fmt == "sharegpt":
        turns, labels = _turns(record, "conversations", SPEAKERS, "speaker")
        _check_order(turns, labels, "conversations")
        return fmt, turns
    if fmt == "alpaca":
        return fmt, _alpaca(record)
    return fmt, _prompt_completion(record)


def _detect(record: dict) -> str:
    found = next((f for f, key in FORMAT_KEYS.items() if key in record), None)
    if found is None and "completion" in record:
        found = "prompt_completion"
    if found is None:
        keys = ", ".join(sorted(repr(k)[1:-1] for k in record)[:8]) or "none"  # escaped: one line, whatever the key
        raise BadLine("unknown_format", "unknown format: expected 'messages' (OpenAI), 'conversations' (ShareGPT), "
                                        "'instruction' and 'output' (Alpaca), or 'prompt' and 'completion'; "
                                        f"got fields: {keys}")
    return found


def _turns(record: dict, key: str, names: dict, word: str) -> tuple[list[dict], list[str]]:
    """The validated turns of record[key] and each one's role field ("messages[1].role"), for order errors.
    `names` maps the shape's speaker names to our roles; ShareGPT turns may use "from"/"value" or "role"/"content"."""
    if key not in record:
        raise BadLine(f"missing_{key}", f"{key}: missing")
    turns = record[key]
    if not isinstance(turns, list):
        raise BadLine("bad_dialogue", f"{key}: must be a non-empty list of turns, got {_kind(turns)}")
    if not turns:
        raise BadLine("empty_dialogue", f"{key}: must be a non-empty list of turns, got an empty list")
    role_key, content_key = "role", "content"
    if key == "conversations" and not _uses_role(turns[0]):
        role_key, content_key = "from", "value"
    messages, labels = [], []
    for i, turn in enumerate(turns):
        at = f"{key}[{i}]"
        messages.append(_turn(turn, at, role_key, content_key, names, word))
        labels.append(f"{at}.{role_key}")
    return messages, labels


def _uses_role(turn: object) -> bool:
    return isinstance(turn, dict) and ("role" in turn or "content" in turn) and "from" not in turn


def _turn(turn: object, at: str, role_key: str, content_key: str, names: dict, word: str) -> dict:
    if not isinstance(turn, dict):
        raise BadLine("bad_turn", f"{at}: must be an object with {role_key!r} and {content_key!r}, got {_kind(turn)}")
    if role_key not in turn:
        raise BadLine("missing_role", f"{at}.{role_key}: missing")
    speaker = turn[role_key]
    role = names.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise BadLine("unknown_role", f"{at}.{role_key}: unknown {word} {_repr(speaker)} "
                                      f"(expected one of {', '.join(names)})")
    return {"role": role, "content": _text(turn, content_key, f"{at}.{content_key}", "content")}


def _check_order(turns: list[dict], labels: list[str], key: str):
    """The shape SFT trains on: [system], user, assistant, user, assistant, ..., ending with an answer."""
    roles = [t["role"] for t in turns]
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            raise BadLine("misplaced_system", f"{labels[i]}: a system turn may only come first")
        if i > 0 and role == roles[i - 1]:
            raise BadLine("repeated_role", f"{labels[i]}: two {role} turns in a row")
    if "assistant" not in roles:
        raise BadLine("no_assistant", f"{key}: no assistant turn to learn from")
    first = 1 if roles[0] == "system" else 0
    if roles[first] != "user":
        after = " after the system prompt" if first else ""
        raise BadLine("first_not_user", f"{labels[first]}: the first turn{after} must be the user's, "
                                        f"got {roles[first]}")
    if roles[-1] != "assistant":
        raise BadLine("user_turn_last", f"{key}: the last turn must be the assistant's, got {roles[-1]}")


def _alpaca(record: dict) -> list[dict]:
    instruction = _text(record, "instruction", "instruction", "instruction")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise BadLine("bad_input", f"input: must be a string, got {_kind(extra)}")
    output = _text(record, "output", "output", "output")
    if extra and extra.strip():  # the Alpaca template puts the input after the instruction, a blank line between
        instruction = f"{instruction}\n\n{extra}"
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]


def _prompt_completion(record: dict) -> list[dict]:
    """A prompt (a string: the user's turn) and its completion (a string: the answer), or both as message
    lists (TRL's conversational form), joined into one dialogue. Every assistant turn is trained, those in the
    prompt too, as in any other multi-turn dialogue."""
    prompt, prompt_labels = _side(record, "prompt", "user")
    completion, completion_labels = _side(record, "completion", "assistant")
    _check_order(prompt + completion, prompt_labels + completion_labels, "completion")
    return prompt + completion


def _side(record: dict, key: str, role: str) -> tuple[list[dict], list[str]]:
    if key not in record:
        raise BadLine(f"missing_{key}", f"{key}: missing")
    if isinstance(record[key], list):
        return _turns(record, key, ROLES, "role")
    return [{"role": role, "content": _text(record, key, key, key)}], [key]


def _text(obj: dict, key: str, field_name: str, kind: str) -> str:
    """obj[key] as a non-blank string (a content may also be a list of text parts); failures are counted as
    missing_/bad_/empty_{kind}."""
    if key not in obj:
        raise BadLine(f"missing_{kind}", f"{field_name}: missing")
    value = obj[key]
    if kind == "content" and isinstance(value, list):
        value = _joined_parts(value, field_name)
    if not isinstance(value, str):
        raise BadLine(f"bad_{kind}", f"{field_name}: must be a non-empty string, got {_kind(value)}")
    if not value.strip():
        got = "an empty string" if not value else "only whitespace"
        raise BadLine(f"empty_{kind}", f"{field_name}: must be a non-empty string, got {got}")
    try:
        value.encode("utf-8")  # a lone surrogate ("\ud800" in the JSON) parses, then breaks the tokenizer
    except UnicodeEncodeError as e:
        raise BadLine(f"bad_{kind}", f"{field_name}: invalid unicode escape {value[e.start]!r} "
                                     f"at character {e.start}") from None
    return value


def _joined_parts(parts: list, field_name: str) -> str:
    try:
        return join_text_parts(parts)
    except PartError as e:
        raise BadLine("bad_content", f"{field_name}{e.at}: {e}") from None


class PartError(ValueError):
    """A content part that is not text: `at` is its place after the content's field ("[1].type")."""

    def __init__(self, at: str, problem: str):
        super().__init__(problem)
        self.at = at


def join_text_parts(parts: list) -> str:
    """The text of a content given as parts, [{"type": "text", "text": "..."}, ...], joined with nothing between
    them, as chat templates render such a content; a part that is not text is a PartError."""
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise PartError(f"[{i}]", f"a content part must be an object {{'type': 'text', 'text': ...}}, "
                                      f"got {_kind(part)}")
        kind = part.get("type", "text")
        if kind not in TEXT_PART_TYPES:
            raise PartError(f"[{i}].type", f"only text parts can be trained on, got {_repr(kind)}")
        text = part.get("text")
        if not isinstance(text, str):
            raise PartError(f"[{i}].text", f"must be a string, got {_kind(text)}")
        texts.append(text)
    return "".join(texts)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _repr(value: object) -> str:
    """repr() cut to 60 characters; a value nested too deeply to print is named by its type."""
    try:
        text = repr(value)
    except RecursionError:
        return _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."
