"""Dialogues for SFT, read from the formats people bring, normalised to OpenAI messages.

Formats, detected per record from its keys (or forced with `fmt`):
  messages   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  sharegpt   {"conversations": [{"from": "system"|"human"|"gpt"|..., "value": "..."}, ...]}
  alpaca     {"instruction": "...", "input": "..." (optional), "output": "..."}
A path is a .jsonl file, a .json file (a JSON array of records, or JSON lines as Hugging Face
writes them), or a folder of such files. Every bad record is a DataError that starts with its
location, `file:line: ` (or `file[record N]: ` inside a JSON array), and names the field; with
`skip_invalid` it is counted under a short reason key and reading goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from chatforge.errors import DataError
from chatforge.io import BadLine, jsonl_records

FORMATS = ("messages", "sharegpt", "alpaca")
FORMAT_KEYS = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction"}  # checked in this order
ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SPEAKERS = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "chatgpt": "assistant"}
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
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown dialogue format {fmt!r} (expected auto, {', '.join(FORMATS)})")
    report = LoadReport(path=path, fmt=fmt)
    dialogues, found = [], set()
    for file in _data_files(path):
        num_before = report.num_read
        for where, item in _file_records(file):
            report.num_read += 1
            try:
                if isinstance(item, BadLine):
                    raise item
                record_fmt, dialogue = _convert(item, fmt)
            except BadLine as e:
                _skip_or_raise(report, f"{where}: {e}", e.reason, skip_invalid)
                continue
            found.add(record_fmt)
            dialogues.append(dialogue)
        if report.num_read == num_before:  # almost always a failed export, not a wish to train on nothing
            raise DataError(f"{file}: empty file (no records)")
    report.num_kept = len(dialogues)
    report.fmt = "+".join(sorted(found)) or fmt
    if not dialogues:
        raise DataError(f"no valid dialogues in {path}: {_summary(report)}; first error: {report.first_errors[0]}")
    return dialogues, report


def format_report(report: LoadReport) -> str:
    """One line for the log, and a second with the first skipped record when there was one."""
    line = f"read {report.num_kept} dialogues from {report.path} ({report.fmt})"
    if not report.skipped:
        return line
    return f"{line}; {_summary(report)}\n  first skipped: {report.first_errors[0]}"


def _summary(report: LoadReport) -> str:
    counts = sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"skipped {sum(report.skipped.values())}: " + ", ".join(f"{n} {reason}" for reason, n in counts)


def _skip_or_raise(report: LoadReport, message: str, reason: str, skip_invalid: bool):
    if not skip_invalid:
        raise DataError(message)
    report.skipped[reason] = report.skipped.get(reason, 0) + 1
    if len(report.first_errors) < MAX_FIRST_ERRORS:
        report.first_errors.append(message)


# ---- files and records ----


def _data_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix in (".jsonl", ".json") and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no .jsonl or .json files in this folder")
        return files
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: expected a .jsonl or .json file, or a folder of them")
    return [path]


def _file_records(path: Path) -> Iterator[tuple[str, object]]:
    """(location, parsed record) for each record of one file; an unparsable line comes as an BadLine."""
    if path.suffix == ".json" and _starts_with_array(path):
        return _json_array_records(path)
    return _jsonl_records(path)


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    return ((f"{path}:{lineno}", item) for lineno, item in jsonl_records(path))


def _json_array_records(path: Path) -> Iterator[tuple[str, object]]:
    # One document: a broken array cannot be resumed past its fault, so this is an error even when skipping.
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {data[e.start]:#x})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: broken JSON ({e.msg} at column {e.colno})") from None
    for i, record in enumerate(records, 1):
        yield f"{path}[record {i}]", record


# ---- one record -> messages ----


def _convert(record: object, fmt: str) -> tuple[str, list[dict]]:
    if not isinstance(record, dict):
        raise BadLine("not_object", f"expected a JSON object (one dialogue), got {_kind(record)}")
    if fmt == "auto":
        fmt = next((f for f, key in FORMAT_KEYS.items() if key in record), None)
        if fmt is None:
            keys = ", ".join(sorted(record)[:8]) or "none"
            raise BadLine("unknown_format", "unknown format: expected a 'messages', 'conversations' or "
                                             f"'instruction' field, got fields: {keys}")
    if fmt == "messages":
        return fmt, _turns(record, "messages", "role", "content", ROLES, "role")
    if fmt == "sharegpt":
        return fmt, _turns(record, "conversations", "from", "value", SPEAKERS, "speaker")
    return fmt, _alpaca(record)


def _turns(record: dict, key: str, role_key: str, content_key: str, names: dict, word: str) -> list[dict]:
    """Validated turns of record[key]; `names` maps the format's speaker names to our roles."""
    if key not in record:
        raise BadLine(f"missing_{key}", f"{key}: missing")
    turns = record[key]
    if not isinstance(turns, list):
        raise BadLine("bad_dialogue", f"{key}: must be a non-empty list of turns, got {_kind(turns)}")
    if not turns:
        raise BadLine("empty_dialogue", f"{key}: must be a non-empty list of turns, got an empty list")
    messages = []
    for i, turn in enumerate(turns):
        at = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise BadLine("bad_turn", f"{at}: must be an object with {role_key!r} and {content_key!r}, "
                                       f"got {_kind(turn)}")
        if role_key not in turn:
            raise BadLine("missing_role", f"{at}.{role_key}: missing")
        speaker = turn[role_key]
        role = names.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise BadLine("unknown_role", f"{at}.{role_key}: unknown {word} {speaker!r} "
                                           f"(expected one of {', '.join(names)})")
        messages.append({"role": role, "content": _text(turn, content_key, f"{at}.{content_key}", "content")})
    _check_order([m["role"] for m in messages], key, role_key)
    return messages


def _check_order(roles: list[str], key: str, role_key: str):
    """The shape SFT trains on: [system], user, assistant, user, assistant, ..., ending with an answer."""
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            raise BadLine("misplaced_system", f"{key}[{i}].{role_key}: a system turn may only come first")
        if i > 0 and role == roles[i - 1]:
            raise BadLine("repeated_role", f"{key}[{i}].{role_key}: two {role} turns in a row")
    if "assistant" not in roles:
        raise BadLine("no_assistant", f"{key}: no assistant turn to learn from")
    first = 1 if roles[0] == "system" else 0
    if roles[first] != "user":
        after = " after the system prompt" if first else ""
        raise BadLine("first_not_user", f"{key}[{first}].{role_key}: the first turn{after} must be the user's, "
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


def _text(obj: dict, key: str, field_name: str, kind: str) -> str:
    """obj[key] as a non-blank string; failures are counted as missing_/bad_/empty_{kind}."""
    if key not in obj:
        raise BadLine(f"missing_{kind}", f"{field_name}: missing")
    value = obj[key]
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


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
