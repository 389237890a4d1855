"""Labelling tasks from a samples file: one JSON object per line, one prompt and its K answers.

    {"prompt_id": "rank-00012", "user_id": "u0042", "messages": [...OpenAI messages, the last the user's],
     "answers": [K strings], "finished": [K bools], ...}

`chatforge sample` writes rankings/samples.jsonl in this shape (on the built-in world with "kind", "lang",
"gold" and maybe "source" too). Only "messages" (or "prompt") and "answers" are required; "prompt_id"
defaults to a hash of the messages and "user_id" to the prompt_id, as in docs/rankings.md. Other
fields (a rankings file's "order", say) are ignored. A bad line is a DataError naming file, line, field.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from chatforge.data.rankings import parse_prompt
from chatforge.errors import DataError
from chatforge.io import BadLine, jsonl_records

MAX_ANSWERS = 16
KEPT = ("kind", "lang", "gold", "source")  # what the built-in world adds, kept for the judge and the export


def read_tasks(path: Path) -> list[dict]:
    """Every line of a samples file as a task record (see parse_task); duplicate prompt ids are an error."""
    path = Path(path)
    tasks, first_line = [], {}
    for lineno, obj in jsonl_records(path):
        where = f"{path}:{lineno}"
        if isinstance(obj, BadLine):
            raise DataError(f"{where}: {obj}")
        task = parse_task(obj, where)
        if task["prompt_id"] in first_line:
            raise DataError(f"{where}: field 'prompt_id': {task['prompt_id']!r} appears twice "
                            f"(first on line {first_line[task['prompt_id']]}); each task needs its own id")
        first_line[task["prompt_id"]] = lineno
        tasks.append(task)
    if not tasks:
        raise DataError(f"{path}: no samples (an empty file)")
    return tasks


def parse_task(obj, where: str) -> dict:
    """{"prompt_id", "user_id", "messages", "answers", "finished"} and the world's fields of KEPT, validated."""
    messages, default_id = parse_prompt(obj, where)
    prompt_id = _id(obj, "prompt_id", where) or default_id
    task = {"prompt_id": prompt_id, "user_id": _id(obj, "user_id", where) or prompt_id, "messages": messages,
            "answers": _answers(obj, where)}
    task["finished"] = _finished(obj, len(task["answers"]), where)
    task.update({key: obj[key] for key in KEPT if key in obj})
    return task


def _id(obj: dict, key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str) or (key in obj and not value.strip()):
        raise DataError(f"{where}: field '{key}': must be a non-empty string, got {json.dumps(value)[:40]}")
    return value


def _answers(obj: dict, where: str) -> list[str]:
    answers = obj.get("answers")
    if not isinstance(answers, list) or not 2 <= len(answers) <= MAX_ANSWERS:
        got = f"{len(answers)} answers" if isinstance(answers, list) else type(answers).__name__
        raise DataError(f"{where}: field 'answers': must be a list of 2 to {MAX_ANSWERS} strings, got {got}")
    for i, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}: field 'answers[{i}]': must be a non-empty string, "
                            f"got {json.dumps(answer, ensure_ascii=False)[:40]}")
    return answers


def _finished(obj: dict, k: int, where: str) -> list[bool]:
    """Whether each answer ended by itself (False: cut at the token limit); all True when absent."""
    if "finished" not in obj:
        return [True] * k
    finished = obj["finished"]
    if not isinstance(finished, list) or len(finished) != k or not all(isinstance(f, bool) for f in finished):
        raise DataError(f"{where}: field 'finished': must be a list of {k} booleans, one per answer")
    return finished


def display_order(task_id: str, annotator: str, k: int, shuffle: bool) -> list[int]:
    """The order in which one annotator sees a task's answers: their own, the same on every visit, so that
    the first answer shown is not always the same one (people favour it)."""
    order = list(range(k))
    if shuffle:
        seed = hashlib.sha256(f"{task_id}\0{annotator}".encode()).digest()
        random.Random(int.from_bytes(seed[:8], "big")).shuffle(order)
    return order


def fingerprint(task: dict) -> str:
    """A short hash of what annotators see and rank: a changed samples file must not relabel old tasks."""
    text = json.dumps([task["messages"], task["answers"]], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
