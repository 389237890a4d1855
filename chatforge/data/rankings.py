"""Rankings for the reward model: for one prompt, K >= 2 answers ranked by one annotator (docs/rankings.md).

One JSON object per line, one line per (prompt, annotator):
  K-way     {"messages" | "prompt", "answers": [K strings], "order": [best, ..., worst], ...}
            an element of "order" is an answer index or a list of indices that tie
  pairwise  {"messages" | "prompt", "chosen": "...", "rejected": "..."}  (read as K = 2, order [0, 1])
Every bad line is a DataError "FILE:LINE: field 'x': problem"; unknown fields are errors too, so a
typo is never silently ignored. The world's judge, annotators' exports and users' files all go through
`parse_ranking`, so the reward stage sees one validated shape.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from chatforge.errors import DataError
from chatforge.io import BadLine, atomic_write_text, jsonl_records

ROLES = ("system", "user", "assistant")
RATING_KEYS = ("correctness", "appropriateness", "safety", "completeness", "fluency")
RATING_MIN, RATING_MAX = 1, 7
OPTIONAL_KEYS = ("prompt_id", "user_id", "annotator_id", "kind", "ratings", "flags")
KWAY_KEYS = ("messages", "prompt", "answers", "order") + OPTIONAL_KEYS
PAIRWISE_KEYS = ("messages", "prompt", "chosen", "rejected") + OPTIONAL_KEYS
MAX_FIRST_ERRORS = 5


@dataclass(frozen=True)
class Ranking:
    prompt_id: str
    user_id: str
    annotator_id: str
    messages: list  # [{"role", "content"}], the last one the user's
    answers: list  # K >= 2 strings
    ranks: list  # per answer, 0 = best; tied answers share their group's position in "order"
    kind: str = ""
    ratings: list | None = None  # K dicts of RATING_KEYS -> 1..7
    flags: list | None = None  # K lists of strings

    def __post_init__(self):
        # Our own invariant (parse_ranking guarantees it): ranks are group positions 0..G-1, so that
        # record() -> parse_ranking gives back equal ranks.
        assert len(self.answers) >= 2 and len(self.ranks) == len(self.answers), (self.answers, self.ranks)
        assert sorted(set(self.ranks)) == list(range(max(self.ranks) + 1)), self.ranks

    def record(self) -> dict:
        """The JSON-lines form; "order" is rebuilt from ranks, tied answers as one group."""
        groups = [[i for i, r in enumerate(self.ranks) if r == rank] for rank in range(max(self.ranks) + 1)]
        record = {"prompt_id": self.prompt_id, "user_id": self.user_id, "annotator_id": self.annotator_id,
                  "messages": self.messages, "answers": self.answers,
                  "order": [g[0] if len(g) == 1 else g for g in groups]}
        if self.ratings is not None:
            record["ratings"] = self.ratings
        if self.flags is not None:
            record["flags"] = self.flags
        record["kind"] = self.kind
        return record


class _Bad(Exception):
    """One bad field: parse_ranking puts the location in front."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}': {problem}")


# ---- one line ----


def parse_ranking(obj, where: str) -> Ranking:
    """A validated Ranking from one parsed JSON line; `where` ("FILE:LINE") starts every error message."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object (one ranking), got {_type(obj)}")
    try:
        return _parse(obj)
    except _Bad as e:
        raise DataError(f"{where}: {e}") from None


def parse_prompt(obj, where: str) -> tuple[list[dict], str]:
    """(messages, stable id) of a prompt line: "messages" (ending with the user's turn) or a "prompt" string;
    the same rules, and errors, as the prompt part of a ranking. Other keys are the caller's business."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object (one prompt), got {_type(obj)}")
    try:
        messages = _messages(obj)
    except _Bad as e:
        raise DataError(f"{where}: {e}") from None
    return messages, _hash_id(messages)


def _parse(obj: dict) -> Ranking:
    pairwise = "chosen" in obj or "rejected" in obj
    allowed = PAIRWISE_KEYS if pairwise else KWAY_KEYS
    for key in obj:
        if key not in allowed:
            raise _Bad(key, _unknown_key(key, pairwise, allowed))
    messages = _messages(obj)
    if pairwise:
        answers = [_text(obj, "chosen"), _text(obj, "rejected")]
        ranks = [0, 1]
    else:
        answers = _answers(obj)
        ranks = _ranks(obj, len(answers))
    ratings = _per_answer(obj, "ratings", len(answers), _rating)
    flags = _per_answer(obj, "flags", len(answers), _flag_list)
    prompt_id = _id(obj, "prompt_id") or _hash_id(messages)
    user_id = _id(obj, "user_id") or prompt_id  # a prompt without a user is its own user for the split
    annotator_id = _optional_str(obj, "annotator_id")
    kind = _optional_str(obj, "kind")
    return Ranking(prompt_id, user_id, annotator_id, messages, answers, ranks, kind, ratings, flags)


def _unknown_key(key: str, pairwise: bool, allowed: tuple) -> str:
    if pairwise and key in ("answers", "order"):
        return "a line has either 'chosen' and 'rejected' (pairwise) or 'answers' and 'order', not both"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(allowed)}"
    return f"unknown field ({hint})"


def _messages(obj: dict) -> list[dict]:
    if "prompt" in obj and "messages" in obj:
        raise _Bad("prompt", "give either 'prompt' or 'messages', not both")
    if "prompt" in obj:
        return [{"role": "user", "content": _text(obj, "prompt")}]
    if "messages" not in obj:
        raise _Bad("messages", "missing (give 'messages', or 'prompt' for a single user message)")
    turns = obj["messages"]
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if turns == [] else _type(turns)
        raise _Bad("messages", f"must be a non-empty list of {{'role', 'content'}} objects, got {got}")
    messages = []
    for i, turn in enumerate(turns):
        at = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(at, f"must be an object with 'role' and 'content', got {_type(turn)}")
        if "role" not in turn:
            raise _Bad(f"{at}.role", "missing")
        role = turn["role"]
        if role not in ROLES:
            raise _Bad(f"{at}.role", f"must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        if role == "system" and i > 0:
            raise _Bad(f"{at}.role", "a system message may only come first")
        messages.append({"role": role, "content": _text(turn, "content", f"{at}.content")})
    if messages[-1]["role"] != "user":
        # The answers continue the conversation, so the prompt must end with what they answer.
        raise _Bad(f"messages[{len(messages) - 1}].role", f"the last message must be the user's, "
                                                          f"got {messages[-1]['role']}")
    return messages


def _answers(obj: dict) -> list[str]:
    if "answers" not in obj:
        raise _Bad("answers", "missing (or give 'chosen' and 'rejected' for a pair)")
    answers = obj["answers"]
    if not isinstance(answers, list):
        raise _Bad("answers", f"must be a list of strings, got {_type(answers)}")
    if len(answers) < 2:
        raise _Bad("answers", f"K = {len(answers)}: a ranking needs at least two answers")
    # Identical answers are allowed: annotators may be shown the same sample twice; they are tied or ordered.
    return [_string(a, f"answers[{i}]") for i, a in enumerate(answers)]


def _ranks(obj: dict, k: int) -> list[int]:
    """Per answer, the position of its group in "order"; every index 0..k-1 exactly once."""
    if "order" not in obj:
        raise _Bad("order", "missing (best first: answer indices, tied ones in a list)")
    order = obj["order"]
    if not isinstance(order, list) or not order:
        got = "an empty list" if order == [] else _type(order)
        raise _Bad("order", f"must be a non-empty list of answer indices and tie groups, got {got}")
    ranks = [None] * k
    for position, element in enumerate(order):
        if isinstance(element, list):
            # A group of one is the same as its index; exporters that always write groups stay readable.
            if not element:
                raise _Bad("order", f"element {position} is an empty tie group")
            group = element
        else:
            group = [element]
        for index in group:
            if not _is_int(index):
                raise _Bad("order", f"element {position}: an answer index must be an integer, got {_type(index)}"
                           if isinstance(element, list) else
                           f"element {position} must be an answer index or a list of tied indices, "
                           f"got {_type(index)}")
            if not 0 <= index < k:
                raise _Bad("order", f"index {index} is out of range for {k} answers")
            if ranks[index] is not None:
                raise _Bad("order", f"index {index} appears twice")
            ranks[index] = position
    missing = [i for i, r in enumerate(ranks) if r is None]
    if missing:
        raise _Bad("order", f"index {missing[0]} is missing (every answer must be ranked)")
    return ranks


def _per_answer(obj: dict, key: str, k: int, check) -> list | None:
    if key not in obj:
        return None
    values = obj[key]
    if not isinstance(values, list):
        raise _Bad(key, f"must be a list with one entry per answer, got {_type(values)}")
    if len(values) != k:
        entries = "1 entry" if len(values) == 1 else f"{len(values)} entries"
        raise _Bad(key, f"mismatched lengths: {entries} for {k} answers")
    return [check(v, f"{key}[{i}]") for i, v in enumerate(values)]


def _rating(value, at: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(at, f"must be an object of scores ({', '.join(RATING_KEYS)}), got {_type(value)}")
    for name, score in value.items():
        if name not in RATING_KEYS:
            raise _Bad(f"{at}.{name}", f"unknown rating (expected one of {', '.join(RATING_KEYS)})")
        if not _is_int(score) or not RATING_MIN <= score <= RATING_MAX:
            raise _Bad(f"{at}.{name}", f"must be an integer from {RATING_MIN} to {RATING_MAX}, "
                                       f"got {json.dumps(score)}")
    return dict(value)


def _flag_list(value, at: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise _Bad(at, f"must be a list of strings, got {json.dumps(value, ensure_ascii=False)[:60]}")
    return list(value)


def _id(obj: dict, key: str) -> str:
    """A non-empty string, or "" when absent (the caller picks the default)."""
    if key not in obj:
        return ""
    return _string(obj[key], key)


def _optional_str(obj: dict, key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise _Bad(key, f"must be a string, got {_type(value)}")
    return value


def _text(obj: dict, key: str, field: str | None = None) -> str:
    field = field or key
    if key not in obj:
        raise _Bad(field, "missing")
    return _string(obj[key], field)


def _string(value, field: str) -> str:
    if not isinstance(value, str):
        raise _Bad(field, f"must be a non-empty string, got {_type(value)}")
    if not value.strip():
        raise _Bad(field, "must be a non-empty string, got " + ("an empty string" if not value else "only whitespace"))
    try:
        value.encode("utf-8")  # a lone surrogate ("\ud800") parses, then breaks the tokenizer and the writer
    except UnicodeEncodeError as e:
        raise _Bad(field, f"invalid unicode escape {value[e.start]!r} at character {e.start}") from None
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not answer 1


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def _hash_id(messages: list[dict]) -> str:
    # Stable across runs and machines (never Python's hash()), and the same for "prompt" and its messages form.
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- files ----


def read_rankings(path, skip_invalid: bool = False) -> tuple[list[Ranking], dict]:
    """Every valid ranking in a .jsonl file or a folder of them (in name order), and a report:
    {"files", "read": lines seen (skipped ones included), "skipped", "first_errors": up to 5 messages}.
    Without skip_invalid the first bad line raises; an empty file, or nothing valid at all, always does."""
    path = Path(path)
    report = {"files": 0, "read": 0, "skipped": 0, "first_errors": []}
    rankings = []
    for file in _rankings_files(path):
        report["files"] += 1
        read_before = report["read"]
        for lineno, item in jsonl_records(file):
            where = f"{file}:{lineno}"
            report["read"] += 1
            try:
                if isinstance(item, BadLine):  # a broken JSON line or non-UTF-8 bytes
                    raise DataError(f"{where}: {item}")
                rankings.append(parse_ranking(item, where))
            except DataError as e:
                if not skip_invalid:
                    raise
                report["skipped"] += 1
                if len(report["first_errors"]) < MAX_FIRST_ERRORS:
                    report["first_errors"].append(str(e))
        if report["read"] == read_before:  # almost always a failed export, not a wish to train on nothing
            raise DataError(f"{file}: empty file (no rankings)")
    if not rankings:
        raise DataError(f"{path}: no valid rankings (skipped {report['skipped']}); "
                        f"first error: {report['first_errors'][0]}")
    return rankings, report


def _rankings_files(path: Path) -> list[Path]:
    if path.is_dir():
        # Names starting with "." are skipped: atomic_write_text's temporary files look like that.
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".jsonl"
                       and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no .jsonl files in this folder")
        return files
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: expected a .jsonl file or a folder of them")
    return [path]


def write_rankings(path, rankings: list[Ranking]):
    """One JSON line per ranking, UTF-8 and readable (not \\u-escaped), written atomically."""
    path = Path(path)
    lines = []
    for i, ranking in enumerate(rankings):
        record = ranking.record()
        # Validate what we write (an empty sampled answer, say) now, rather than when a later stage reads it.
        parse_ranking(record, f"{path}: ranking {i}")
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


# ---- splitting and pairs ----


def split_by_user(rankings: list[Ranking], heldout_fraction: float, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    """(train, heldout), each in input order. A user's rankings all go to one side, so a held-out score
    measures generalisation to new people, as in InstructGPT. Users who share a prompt_id (two people
    asking the same default-hashed question) move together, so no prompt is on both sides either.
    A group's side depends only on (seed, its smallest user_id), so adding users leaves the others where
    they were. With >= 2 such groups and 0 < heldout_fraction, each side gets at least one."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    # Union-find over users linked by a shared prompt_id; the root is the smallest user_id.
    parent = {r.user_id: r.user_id for r in rankings}

    def root(u):
        while parent[u] != u:
            u = parent[u]
        return u

    first_user = {}
    for r in rankings:
        a, b = root(r.user_id), root(first_user.setdefault(r.prompt_id, r.user_id))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups = sorted({root(u) for u in parent}, key=lambda g: _unit_hash(seed, g))
    heldout = {g for g in groups if _unit_hash(seed, g) < heldout_fraction}
    if heldout_fraction > 0 and len(groups) >= 2:
        if not heldout:  # the lowest hashes are the ones a slightly larger fraction would take first
            heldout = {groups[0]}
        elif len(heldout) == len(groups):
            heldout.discard(groups[-1])
    train = [r for r in rankings if root(r.user_id) not in heldout]
    held = [r for r in rankings if root(r.user_id) in heldout]
    return train, held


def _unit_hash(seed: int, user_id: str) -> float:
    """A number in [0, 1) from sha256: the same on every machine and run (Python's hash() is salted)."""
    digest = hashlib.sha256(f"{seed}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """All (better, worse) answer-index pairs, ties skipped: [0, 1, 1] -> [(0, 1), (0, 2)]."""
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
