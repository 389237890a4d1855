"""A submitted label checked against its task: every mistake a LabelError (400) naming the field.

    {"task_id": "rank-00012",
     "order": [2, [0, 3], 1],                       best first; a list is a tie; every answer exactly once
     "ratings": [{"correctness": 6, ...}, {}, ...],  optional: one object per answer, scores 1 to 7
     "flags": [["hallucination"], [], ...],          optional: one list per answer, from ANSWER_FLAGS
     "not_rankable": false}                          optional: the task cannot be ranked (left out of exports)

Answers are named by their index in the task (the "index" the API gives each), whatever order the page
showed them in. The result is what the store keeps: ranks per answer, as in docs/rankings.md.
"""

from __future__ import annotations

import json

from chatforge.data.rankings import RATING_KEYS, RATING_MAX, RATING_MIN, BadOrder, ranks_of_order
from chatforge.label.errors import LabelError

# per answer: harmful content, made-up facts, someone's personal data, not in the asker's language
ANSWER_FLAGS = ("harmful", "hallucination", "personal_data", "wrong_language")
LABEL_KEYS = ("task_id", "order", "ratings", "flags", "not_rankable")


def bad(field: str, problem: str) -> LabelError:
    return LabelError(400, field, f"field '{field}': {problem}")


def require_keys(body: dict, allowed: tuple, required: tuple = ()):
    for key in body:
        if key not in allowed:
            raise bad(str(key)[:40], f"unknown field (expected {', '.join(allowed)})")
    for key in required:
        if key not in body:
            raise bad(key, "missing")


def task_id_of(body: dict) -> str:
    task_id = body.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise bad("task_id", f"must be a non-empty string, got {_show(task_id)}")
    return task_id


def parse_label(body: dict, k: int) -> dict:
    """{"ranks", "ratings", "flags", "not_rankable"} from a submit body for a task of k answers."""
    require_keys(body, LABEL_KEYS, ("task_id", "order"))
    not_rankable = body.get("not_rankable", False)
    if not isinstance(not_rankable, bool):
        raise bad("not_rankable", f"must be true or false, got {_show(not_rankable)}")
    return {"ranks": ranks_of(body["order"], k),
            "ratings": _per_answer(body, "ratings", k, _rating),
            "flags": _per_answer(body, "flags", k, _flags),
            "not_rankable": not_rankable}


def ranks_of(order, k: int) -> list[int]:
    """Per answer, the position of its group in `order` (0 = best): [2, [0, 3], 1] -> [1, 2, 0, 1]. Read as the
    rankings reader reads an order, so that a label the app takes is one the export can write."""
    try:
        return ranks_of_order(order, k)
    except BadOrder as e:
        raise LabelError(400, "order", str(e)) from None


def order_of(ranks: list[int]) -> list:
    """The inverse of ranks_of: ranks as an order, best first, ties as lists ([0, 2, 0, 1] -> [[0, 2], 3, 1])."""
    groups = [[i for i, r in enumerate(ranks) if r == level] for level in sorted(set(ranks))]
    return [g[0] if len(g) == 1 else g for g in groups]


def _per_answer(body: dict, key: str, k: int, check) -> list | None:
    values = body.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != k:
        raise bad(key, f"must be a list of {k} entries, one per answer in the task's order, got {_show(values)}")
    return [check(value, f"{key}[{i}]") for i, value in enumerate(values)]


def _rating(value, at: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(at, f"must be an object of scores ({', '.join(RATING_KEYS)}), got {_show(value)}")
    for name, score in value.items():
        if name not in RATING_KEYS:
            raise bad(f"{at}.{name}"[:80], f"unknown rating (expected one of {', '.join(RATING_KEYS)})")
        if not isinstance(score, int) or isinstance(score, bool) or not RATING_MIN <= score <= RATING_MAX:
            raise bad(f"{at}.{name}", f"must be an integer from {RATING_MIN} to {RATING_MAX}, got {_show(score)}")
    return dict(value)


def _flags(value, at: str) -> list[str]:
    if not isinstance(value, list):
        raise bad(at, f"must be a list of flags ({', '.join(ANSWER_FLAGS)}), got {_show(value)}")
    for flag in value:
        if flag not in ANSWER_FLAGS:
            raise bad(at, f"unknown flag {_show(flag)} (expected {', '.join(ANSWER_FLAGS)})")
    return sorted(set(value))


def _show(value) -> str:
    """A bad value as JSON, cut short: enough to recognise it, never a page of it."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
