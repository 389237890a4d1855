"""The label store: one SQLite file in the run folder (runs/NAME/labels/labels.sqlite), in WAL mode.

    annotators  name, SHA-256 of their token (the token itself is shown once and never stored)
    tasks       the prompt and its K answers, copied from the samples file when first seen
    leases      which annotator holds which task, until when (the only table whose rows change)
    events      the append-only log: 'label', 'skip', and 'undo' (which names the event it takes back)

Nothing in `events` is ever updated or deleted (triggers refuse it), so a label, once its transaction
has committed, survives a crash, a kill -9, a bad undo. What counts is the `live` view: labels and skips
that no undo names. `tasks.labels` counts each task's live labels, kept by triggers in the transaction
that appends the event, so that picking a task need not count the whole log.

Assignment keeps every task at exactly N labels with N different annotators: handing out a task and
taking a label both run inside BEGIN IMMEDIATE (SQLite's write lock), and a task is handed out only while
its live labels plus the other annotators' unexpired leases are fewer than N. Each thread has its own
connection, so the store is safe to use from many threads and processes at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from chatforge.errors import DataError, UserError
from chatforge.label.errors import LabelError
from chatforge.label.tasks import fingerprint

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
BUSY_MS = 30_000  # a writer waits this long for the write lock before giving up

SCHEMA = """
CREATE TABLE annotators (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE tasks (seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, fingerprint TEXT NOT NULL,
                    record TEXT NOT NULL, added REAL NOT NULL, labels INTEGER NOT NULL DEFAULT 0);
CREATE TABLE leases (task_id TEXT NOT NULL, annotator TEXT NOT NULL, leased REAL NOT NULL, expires REAL NOT NULL,
                     PRIMARY KEY (task_id, annotator));
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,
                     kind TEXT NOT NULL CHECK (kind IN ('label', 'skip', 'undo')),
                     task_id TEXT NOT NULL REFERENCES tasks (task_id),
                     annotator TEXT NOT NULL REFERENCES annotators (name),
                     created REAL NOT NULL, body TEXT NOT NULL,
                     undoes INTEGER REFERENCES events (id) CHECK ((kind = 'undo') = (undoes IS NOT NULL)));
CREATE UNIQUE INDEX events_undone ON events (undoes) WHERE undoes IS NOT NULL;
CREATE INDEX events_task ON events (task_id, annotator);
CREATE INDEX events_annotator ON events (annotator, id);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER count_label AFTER INSERT ON events WHEN NEW.kind = 'label'
    BEGIN UPDATE tasks SET labels = labels + 1 WHERE task_id = NEW.task_id; END;
CREATE TRIGGER count_undo AFTER INSERT ON events WHEN NEW.kind = 'undo'
    AND (SELECT kind FROM events WHERE id = NEW.undoes) = 'label'
    BEGIN UPDATE tasks SET labels = labels - 1 WHERE task_id = NEW.task_id; END;
CREATE VIEW live AS SELECT * FROM events AS e
    WHERE e.kind IN ('label', 'skip') AND NOT EXISTS (SELECT 1 FROM events AS u WHERE u.undoes = e.id);
"""

# The annotator's own unexpired lease on a task they have not labelled or skipped: a reload gets it back.
HELD_SQL = """
SELECT s.task_id FROM leases AS s WHERE s.annotator = :me AND s.expires > :now
  AND NOT EXISTS (SELECT 1 FROM live AS l WHERE l.task_id = s.task_id AND l.annotator = :me)
ORDER BY s.leased DESC LIMIT 1
"""
# A task with a free slot that this annotator has not labelled or skipped; the fullest first, so that
# tasks get finished (and exportable) rather than all started, then in the samples file's order.
PICK_SQL = """
WITH held AS (SELECT task_id, COUNT(*) AS n FROM leases WHERE expires > :now AND annotator <> :me GROUP BY task_id)
SELECT t.task_id, t.labels + COALESCE(h.n, 0) AS taken FROM tasks AS t LEFT JOIN held AS h ON h.task_id = t.task_id
WHERE taken < :n AND NOT EXISTS (SELECT 1 FROM live AS l WHERE l.task_id = t.task_id AND l.annotator = :me)
ORDER BY taken DESC, t.seq LIMIT 1
"""
TAKEN_SQL = """
SELECT (SELECT labels FROM tasks WHERE task_id = :task)
     + (SELECT COUNT(*) FROM leases WHERE task_id = :task AND expires > :now AND annotator <> :me)
"""


def store_path(run_dir: Path) -> Path:
    return Path(run_dir) / "labels" / "labels.sqlite"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LabelStore:
    """The store at `path`; create=True makes it (and its folder) when missing."""

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        self._local = threading.local()
        if not self.path.exists():
            if not create:
                raise UserError(f"{self.path}: no label store (nothing labelled yet: start `chatforge label` first)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            version = self._create()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a label store ({e})") from None
        if version != SCHEMA_VERSION:
            raise UserError(f"{self.path}: label store version {version}, this chatforge reads {SCHEMA_VERSION}")

    def _create(self) -> int:
        """Make the tables if the file has none yet (two processes may race here: the write lock decides);
        the schema version found."""
        con = self._connect()
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:
            con.execute("PRAGMA journal_mode = WAL")  # persistent: readers never wait for the writer
            with self._transaction(con):
                if con.execute("PRAGMA user_version").fetchone()[0] == 0:
                    for statement in SCHEMA.strip().split(";\n"):
                        con.execute(statement)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return con.execute("PRAGMA user_version").fetchone()[0]

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection. Kept open, not one per call: closing the last connection to a WAL
        database checkpoints and deletes the log, which costs more than the query."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            con.execute("PRAGMA synchronous = FULL")  # a committed label is on disk, not only in the OS's buffers
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
        return con

    @contextmanager
    def _write(self):
        """This thread's connection, in one write transaction (see _transaction)."""
        con = self._connect()
        with self._transaction(con):
            yield con

    @staticmethod
    @contextmanager
    def _transaction(con):
        """BEGIN IMMEDIATE takes the write lock first, so what the transaction reads stays true until it
        commits: two annotators never both see the last free slot of a task."""
        con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # ---- annotators and tasks ----

    def add_annotator(self, name: str, new_token: bool = False) -> str:
        """A fresh token for `name` (printed once; only its hash is kept). new_token replaces an existing one."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise UserError(f"annotator name {name!r}: use 1 to 40 letters, digits, '_', '.' or '-', "
                            f"starting with a letter or digit")
        token = "cfl-" + secrets.token_urlsafe(24)
        with self._write() as con:
            exists = con.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone()
            if exists and not new_token:
                raise UserError(f"annotator {name!r} already exists (--new-token gives them a new token)")
            con.execute("INSERT INTO annotators VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                        "SET token_sha256 = excluded.token_sha256", (name, token_hash(token), time.time()))
        return token

    def annotator_of(self, token: str) -> str | None:
        con = self._connect()
        row = con.execute("SELECT name FROM annotators WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
        return row[0] if row else None

    def annotators(self) -> list[str]:
        con = self._connect()
        return [r[0] for r in con.execute("SELECT name FROM annotators ORDER BY name")]

    def add_tasks(self, tasks: list[dict], source: str = "samples") -> int:
        """Copy new tasks in (by prompt_id); the ones already here must be unchanged. Returns how many were new."""
        added = 0
        with self._write() as con:
            known = dict(con.execute("SELECT task_id, fingerprint FROM tasks"))
            for task in tasks:
                tid, fp = task["prompt_id"], fingerprint(task)
                if tid in known and known[tid] != fp:
                    raise DataError(f"{source}: task {tid!r} is not the one labelled before (same prompt_id, other "
                                    f"messages or answers); give it a new prompt_id, or label into a new run")
                if tid not in known:
                    con.execute("INSERT INTO tasks (task_id, fingerprint, record, added) VALUES (?, ?, ?, ?)",
                                (tid, fp, json.dumps(task, ensure_ascii=False), time.time()))
                    known[tid] = fp
                    added += 1
        return added

    def task(self, task_id: str) -> dict | None:
        con = self._connect()
        row = con.execute("SELECT record FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def tasks(self) -> list[dict]:
        con = self._connect()
        return [json.loads(r[0]) for r in con.execute("SELECT record FROM tasks ORDER BY seq")]

    # ---- the annotator's actions ----

    def next_task(self, annotator: str, n: int, lease_seconds: float, now: float | None = None) -> str | None:
        """The id of the task to show `annotator` now, leased to them; None when none is left for them."""
        now = time.time() if now is None else now
        with self._write() as con:
            con.execute("DELETE FROM leases WHERE expires <= ?", (now,))
            args = {"me": annotator, "now": now, "n": n}
            row = con.execute(HELD_SQL, args).fetchone() or con.execute(PICK_SQL, args).fetchone()
            if row is None:
                return None
            _lease(con, row[0], annotator, now, lease_seconds)
            return row[0]

    def submit(self, annotator: str, task_id: str, body: dict, n: int, now: float | None = None) -> int:
        """Append one label (body: see validate.parse_label); its event id. LabelError when not allowed."""
        now = time.time() if now is None else now
        with self._write() as con:
            _require_free_hand(con, annotator, task_id)
            # the annotator's own lease is not counted: while it holds, there is room by construction
            if _taken(con, task_id, annotator, now) >= n:
                raise LabelError(409, "task_id", f"task {task_id!r} already has its {n} labels, or its last slots are "
                                                 f"held by others (your lease on it ran out); ask for the next task")
            lease = con.execute("SELECT leased FROM leases WHERE task_id = ? AND annotator = ?",
                                (task_id, annotator)).fetchone()
            body = {**body, "seconds": round(now - lease[0], 3) if lease else None}
            event = _append(con, "label", task_id, annotator, now, body)
            con.execute("DELETE FROM leases WHERE task_id = ? AND annotator = ?", (task_id, annotator))
            return event

    def skip(self, annotator: str, task_id: str, now: float | None = None) -> int:
        """Append a skip: the task is not offered to this annotator again (unless the skip is undone)."""
        now = time.time() if now is None else now
        with self._write() as con:
            _require_free_hand(con, annotator, task_id)
            event = _append(con, "skip", task_id, annotator, now, {})
            con.execute("DELETE FROM leases WHERE task_id = ? AND annotator = ?", (task_id, annotator))
            return event

    def undo(self, annotator: str, n: int, lease_seconds: float, now: float | None = None) -> dict:
        """Take back the annotator's last label or skip (an appended 'undo' event) and lease its task to them
        again while it has room: {"kind", "task_id", "body" (the label's), "leased"}."""
        now = time.time() if now is None else now
        with self._write() as con:
            last = con.execute("SELECT id, kind, task_id, body FROM live WHERE annotator = ? ORDER BY id DESC LIMIT 1",
                               (annotator,)).fetchone()
            if last is None:
                raise LabelError(409, "undo", "nothing to undo: you have no label or skip left to take back")
            con.execute("INSERT INTO events (kind, task_id, annotator, created, body, undoes) "
                        "VALUES ('undo', ?, ?, ?, '{}', ?)", (last[2], annotator, now, last[0]))
            leased = _taken(con, last[2], annotator, now) < n
            if leased:
                _lease(con, last[2], annotator, now, lease_seconds)
            return {"kind": last[1], "task_id": last[2], "body": json.loads(last[3]), "leased": leased}

    # ---- reading it all back ----

    def live_events(self) -> list[dict]:
        """Every label and skip not undone, oldest first: {"id", "kind", "task_id", "annotator", "created", "body"}."""
        con = self._connect()
        rows = con.execute("SELECT id, kind, task_id, annotator, created, body FROM live ORDER BY id").fetchall()
        return [{"id": i, "kind": k, "task_id": t, "annotator": a, "created": c, "body": json.loads(b)}
                for i, k, t, a, c, b in rows]

    def progress(self, annotator: str, n: int) -> dict:
        """What the page shows: tasks, tasks with their N labels, this annotator's live labels."""
        con = self._connect()
        total = con.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        done = con.execute("SELECT COUNT(*) FROM tasks WHERE labels >= ?", (n,)).fetchone()[0]
        mine = con.execute("SELECT COUNT(*) FROM live WHERE kind = 'label' AND annotator = ?",
                           (annotator,)).fetchone()[0]
        return {"tasks": total, "tasks_done": done, "mine": mine}

    def event_count(self) -> dict:
        con = self._connect()
        return dict(con.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind"))

    def active_leases(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        con = self._connect()
        return con.execute("SELECT COUNT(*) FROM leases WHERE expires > ?", (now,)).fetchone()[0]


def _lease(con, task_id: str, annotator: str, now: float, seconds: float):
    # a renewed lease keeps its start, so the seconds a label took count from when the task was first shown
    con.execute("INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (task_id, annotator) DO UPDATE "
                "SET expires = excluded.expires", (task_id, annotator, now, now + seconds))


def _taken(con, task_id: str, annotator: str, now: float) -> int:
    """Slots of a task in use by others: live labels plus other annotators' unexpired leases."""
    return con.execute(TAKEN_SQL, {"task": task_id, "now": now, "me": annotator}).fetchone()[0]


def _require_free_hand(con, annotator: str, task_id: str):
    """The task exists and this annotator has neither labelled nor skipped it (undone ones aside)."""
    if con.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone() is None:
        raise LabelError(404, "task_id", f"no task {task_id!r} in this store")
    mine = con.execute("SELECT kind FROM live WHERE task_id = ? AND annotator = ?", (task_id, annotator)).fetchone()
    if mine:
        done = "labelled" if mine[0] == "label" else "skipped"
        raise LabelError(409, "task_id", f"you have already {done} task {task_id!r}; undo it to change that")


def _append(con, kind: str, task_id: str, annotator: str, now: float, body: dict) -> int:
    cur = con.execute("INSERT INTO events (kind, task_id, annotator, created, body) VALUES (?, ?, ?, ?, ?)",
                      (kind, task_id, annotator, now, json.dumps(body, ensure_ascii=False)))
    return cur.lastrowid
