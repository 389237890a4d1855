"""The label store: assignment (N annotators per task, never twice to one, leases), the append-only log
(undo appends, UPDATE and DELETE are refused), tokens, and task imports."""

from __future__ import annotations

import json
import sqlite3

import pytest

from chatforge.errors import DataError, UserError
from chatforge.label.errors import LabelError
from chatforge.label.store import LabelStore

LEASE = 100.0


def make_tasks(count: int, k: int = 3) -> list[dict]:
    return [{"prompt_id": f"t{i}", "user_id": f"u{i % 3}", "messages": [{"role": "user", "content": f"question {i}"}],
             "answers": [f"answer {i}.{j}" for j in range(k)], "finished": [True] * k} for i in range(count)]


def label(ranks=(0, 1, 2)) -> dict:
    return {"ranks": list(ranks), "ratings": None, "flags": None, "not_rankable": False}


@pytest.fixture
def store(tmp_path):
    s = LabelStore(tmp_path / "labels" / "labels.sqlite")
    s.add_tasks(make_tasks(3))
    for name in ("a", "b", "c", "d"):
        s.add_annotator(name)
    return s


def test_wal_mode_and_tokens(tmp_path):
    s = LabelStore(tmp_path / "l.sqlite")
    token = s.add_annotator("alice")
    assert s.annotator_of(token) == "alice" and s.annotator_of(token + "x") is None
    assert token not in (tmp_path / "l.sqlite").read_bytes().decode("latin-1")  # only its hash is kept
    with pytest.raises(UserError, match="'alice' already exists"):
        s.add_annotator("alice")
    new = s.add_annotator("alice", new_token=True)
    assert s.annotator_of(new) == "alice" and s.annotator_of(token) is None
    with pytest.raises(UserError, match="annotator name"):
        s.add_annotator("bad name!")
    con = sqlite3.connect(tmp_path / "l.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_each_task_goes_to_n_annotators_never_twice_to_one(store):
    n = 2
    seen = {}
    for name in ("a", "b", "c", "d"):
        while (task := store.next_task(name, n, LEASE, now=0.0)) is not None:
            assert task not in seen.get(name, set()), "a task came back to the same annotator"
            seen.setdefault(name, set()).add(task)
            store.submit(name, task, label(), n, now=1.0)
    counts = {}
    for e in store.live_events():
        counts[e["task_id"]] = counts.get(e["task_id"], 0) + 1
    assert counts == {"t0": 2, "t1": 2, "t2": 2}
    assert store.progress("a", n) == {"tasks": 3, "tasks_done": 3, "mine": 3}


def test_a_lease_holds_the_last_slot_until_it_expires(store):
    n = 1
    assert store.next_task("a", n, LEASE, now=0.0) == "t0"
    assert store.next_task("a", n, LEASE, now=1.0) == "t0"  # a reload gives back the task held
    assert store.next_task("b", n, LEASE, now=1.0) == "t1"  # t0's only slot is leased to a
    with pytest.raises(LabelError, match="already has its 1 labels") as e:
        store.submit("c", "t0", label(), n, now=2.0)
    assert e.value.status == 409 and e.value.field == "task_id"
    assert store.next_task("c", n, LEASE, now=LEASE + 1) == "t0"  # a's lease ran out: the slot is free again
    store.submit("c", "t0", label(), n, now=LEASE + 2)
    with pytest.raises(LabelError, match="already has its 1 labels"):
        store.submit("a", "t0", label(), n, now=LEASE + 3)  # too late: the lease went, and the slot with it
    assert [(e["task_id"], e["annotator"]) for e in store.live_events()] == [("t0", "c")]


def test_a_label_submitted_without_asking_takes_a_free_slot(store):
    store.submit("a", "t2", label(), 1, now=0.0)
    assert store.live_events()[0]["body"]["seconds"] is None  # never shown by the app: no time to measure
    with pytest.raises(LabelError, match="you have already labelled task 't2'") as e:
        store.submit("a", "t2", label(), 3, now=1.0)
    assert e.value.status == 409
    with pytest.raises(LabelError, match="no task 'nope'") as e:
        store.submit("a", "nope", label(), 3)
    assert e.value.status == 404


def test_skip_and_undo_append_and_never_delete(store):
    n = 1
    assert store.next_task("a", n, LEASE, now=0.0) == "t0"
    store.submit("a", "t0", label([2, 1, 0]), n, now=5.0)
    assert store.next_task("a", n, LEASE, now=6.0) == "t1"
    store.skip("a", "t1", now=7.0)
    assert store.next_task("a", n, LEASE, now=8.0) == "t2"  # t1 skipped, t0 labelled
    undone = store.undo("a", n, LEASE, now=9.0)  # the skip first: the last thing done
    assert undone == {"kind": "skip", "task_id": "t1", "body": {}, "leased": True}
    undone = store.undo("a", n, LEASE, now=10.0)
    assert undone["kind"] == "label" and undone["task_id"] == "t0" and undone["body"]["ranks"] == [2, 1, 0]
    assert undone["body"]["seconds"] == 5.0
    assert store.next_task("a", n, LEASE, now=11.0) == "t0"  # the undone task comes back to its annotator
    assert store.next_task("b", n, LEASE, now=11.0) is None  # t0, t1, t2 all held by a
    with pytest.raises(LabelError, match="nothing to undo"):
        store.undo("a", n, LEASE, now=12.0)
    store.submit("a", "t0", label([0, 1, 2]), n, now=13.0)
    assert store.event_count() == {"label": 2, "skip": 1, "undo": 2}  # everything kept
    live = store.live_events()
    assert [(e["kind"], e["task_id"], e["body"]["ranks"]) for e in live] == [("label", "t0", [0, 1, 2])]


def test_the_log_refuses_updates_and_deletes(store):
    store.submit("a", "t0", label(), 3)
    con = sqlite3.connect(store.path)
    for statement in ("UPDATE events SET body = '{}'", "DELETE FROM events"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(statement)
    assert len(store.live_events()) == 1


def test_label_counts_follow_the_log(store):
    """tasks.labels (kept by triggers) always equals the live labels counted from the log."""
    store.submit("a", "t0", label(), 3)
    store.submit("b", "t0", label(), 3)
    store.skip("c", "t0")
    store.undo("b", 3, LEASE)
    store.undo("c", 3, LEASE)
    store.submit("b", "t1", label(), 3)
    con = sqlite3.connect(store.path)
    counted = dict(con.execute("SELECT task_id, COUNT(*) FROM live WHERE kind = 'label' GROUP BY task_id"))
    kept = {t: c for t, c in con.execute("SELECT task_id, labels FROM tasks") if c}
    assert kept == counted == {"t0": 1, "t1": 1}


def test_tasks_are_imported_once_and_must_not_change(store, tmp_path):
    assert store.add_tasks(make_tasks(5)) == 2  # t3, t4 are new
    changed = make_tasks(1)
    changed[0]["answers"][0] = "another answer"
    with pytest.raises(DataError, match="task 't0' is not the one labelled before"):
        store.add_tasks(changed, "samples.jsonl")
    assert store.task("t0")["answers"][0] == "answer 0.0" and len(store.tasks()) == 5


def test_reopening_keeps_everything(store):
    store.submit("a", "t0", label([1, 0, 2]), 3)
    again = LabelStore(store.path, create=False)
    assert json.dumps(again.live_events()) == json.dumps(store.live_events())
    with pytest.raises(UserError, match="no label store"):
        LabelStore(store.path.with_name("other.sqlite"), create=False)
    store.path.with_name("junk.sqlite").write_text("not a database " * 100)
    with pytest.raises(UserError, match="not a label store"):
        LabelStore(store.path.with_name("junk.sqlite"))
