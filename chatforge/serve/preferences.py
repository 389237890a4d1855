"""What people say about the answers on the web chat page: which of two answers is better, or a thumb.

    POST /v1/feedback  {"messages": [...], "answers": [A, B], "chosen": 0 | 1, "user_id": "..."}   a preference
                       {"messages": [...], "answer": "...", "rating": "up" | "down", "user_id": "..."}  a thumb

`messages` is the conversation the answer(s) reply to, ending with the user's turn; `user_id` (optional)
names the browser that sent it, so that all of one person's feedback falls on one side of the reward
model's held-out split. `chatforge serve --feedback FILE` stores them (off by default: the page then
shows no buttons and /v1/feedback answers 404):

    FILE                     a preference per line, as a pairwise ranking (docs/rankings.md):
                             {"messages", "chosen", "rejected", "user_id", "annotator_id", "kind": "chat"}
                             `chatforge reward --rankings FILE` trains on it as it is.
    FILE's stem.thumbs.ndjson  a thumb per line: {"messages", "answer", "rating", "user_id", "model", "time"}.

A thumb is one answer with nothing to compare it to, so it is not a ranking, and it lives in a file
the rankings reader does not pick up from a folder (`.ndjson`, JSON lines by another name). The reward
stage does not read it; `pair_thumbs` turns the comparisons people made implicitly (one answer up,
another down, to the same conversation by the same person) into pairs it can read.

Each line is appended with one write on a file opened O_APPEND, under a lock, and synced: it is in
the file whole or not at all, and lines never interleave. A line cut short by a crash is removed
when the server starts again, so the file always reads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path

from chatforge.data.rankings import parse_prompt
from chatforge.errors import DataError, UserError
from chatforge.serve.protocol import ApiError, Limits, parse_messages, short, text

log = logging.getLogger("chatforge.serve")
PAIR_KEYS = ("messages", "answers", "chosen", "user_id")
THUMB_KEYS = ("messages", "answer", "rating", "user_id")
RATINGS = ("up", "down")
USER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def thumbs_path(path: Path) -> Path:
    """Where the thumbs go beside the preferences file: feedback.jsonl -> feedback.thumbs.ndjson."""
    return path.with_name(path.stem + ".thumbs.ndjson")


class FeedbackLog:
    """The two append-only files of one server: preferences (rankings format) and thumbs."""

    def __init__(self, path: Path, model: str):
        self.path, self.thumbs, self.model = Path(path), thumbs_path(Path(path)), model
        if self.path.suffix != ".jsonl":
            raise UserError(f"--feedback {self.path}: the file must end in .jsonl (the rankings reader takes those)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for p in (self.path, self.thumbs):
                drop_partial_line(p)
            if not os.access(self.path.parent, os.W_OK):
                raise PermissionError("permission denied")
        except OSError as e:
            raise UserError(f"--feedback {self.path}: cannot write there ({e.strerror or e})") from None
        self._lock = threading.Lock()

    def add(self, kind: str, record: dict):
        """Append one validated record ("pair" or "thumb", from parse_feedback) to its file."""
        if kind == "thumb":
            record = {**record, "model": self.model, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self._lock:
            append_line(self.path if kind == "pair" else self.thumbs, record)


def parse_feedback(body: dict, limits: Limits) -> tuple[str, dict]:
    """("pair", a pairwise ranking line) or ("thumb", a thumb line) from a /v1/feedback body, or a 400."""
    pair = "answers" in body or "chosen" in body
    allowed = PAIR_KEYS if pair else THUMB_KEYS
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"Unknown field '{key}': a preference has {', '.join(PAIR_KEYS)}; a thumb has "
                                f"{', '.join(THUMB_KEYS)}.", param=key)
    messages = parse_messages(body.get("messages"), limits)
    try:  # the rankings reader's rules for a prompt (the user's turn last, no empty turn), so the file always reads
        parse_prompt({"messages": messages}, "feedback")
    except DataError as e:
        field = re.search(r"field '([^']+)'", str(e))
        raise ApiError(400, str(e).removeprefix("feedback: "), param=field.group(1) if field else "messages") from None
    user = _user_id(body.get("user_id"))
    if pair:
        return "pair", _pair(messages, body.get("answers"), body.get("chosen"), user)
    return "thumb", {"messages": messages, "answer": _answer(body.get("answer"), "answer"),
                     "rating": _rating(body.get("rating")), "user_id": user}


def _pair(messages: list, answers, chosen, user: str | None) -> dict:
    if not (isinstance(answers, list) and len(answers) == 2):
        raise ApiError(400, "'answers' must be an array of the two answers shown.", param="answers")
    answers = [_answer(a, f"answers[{i}]") for i, a in enumerate(answers)]
    if chosen not in (0, 1) or isinstance(chosen, bool):
        raise ApiError(400, f"'chosen' must be 0 or 1 (the index of the better answer); got {short(chosen)}.", param="chosen")
    if answers[0] == answers[1]:
        raise ApiError(400, "The two answers are the same: there is nothing to prefer.", param="answers")
    record = {"messages": messages, "chosen": answers[chosen], "rejected": answers[1 - chosen]}
    if user is not None:
        record["user_id"] = user
    return {**record, "annotator_id": user or "web", "kind": "chat"}


def _answer(answer, param: str) -> str:
    if not (isinstance(answer, str) and answer.strip()):
        raise ApiError(400, f"'{param}' must be the answer's text, not empty.", param=param)
    return text(answer, param)


def _rating(rating) -> str:
    if rating not in RATINGS:
        raise ApiError(400, f"'rating' must be \"up\" or \"down\"; got {short(rating)}.", param="rating")
    return rating


def _user_id(user) -> str | None:
    if user is None:
        return None
    if not (isinstance(user, str) and USER_ID.fullmatch(user)):
        raise ApiError(400, "'user_id' must be 1 to 64 letters, digits, '.', '_' or '-'.", param="user_id")
    return user


def pair_thumbs(thumbs: list[dict]) -> list[dict]:
    """Pairwise ranking lines from thumbs: for each person and conversation, every answer rated up against
    every different answer rated down. Thumbs with no opposite number make no pair."""
    groups: dict[str, dict[str, list[str]]] = {}
    for t in thumbs:
        key = json.dumps([t.get("user_id"), t["messages"]], ensure_ascii=False, sort_keys=True)
        group = groups.setdefault(key, {"up": [], "down": [], "messages": t["messages"], "user": t.get("user_id")})
        if t["answer"] not in group[t["rating"]]:
            group[t["rating"]].append(t["answer"])
    pairs = []
    for g in groups.values():
        for up in g["up"]:
            for down in g["down"]:
                if up != down:
                    line = {"messages": g["messages"], "chosen": up, "rejected": down, "kind": "chat-thumbs"}
                    pairs.append({**line, "user_id": g["user"]} if g["user"] else line)
    return pairs


def append_line(path: Path, record: dict):
    """One JSON line at the end of `path`, written whole or not at all."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if os.write(fd, data) != len(data):  # a full disk: take the piece back rather than leave half a line
            os.ftruncate(fd, size)
            raise OSError(f"{path}: short write (is the disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_partial_line(path: Path):
    """Cut a last line that has no newline (a crash mid-write) so that the next line starts clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    log.warning("%s: removed a partial last line (%d bytes) left by an interrupted write", path, len(data) - keep)
