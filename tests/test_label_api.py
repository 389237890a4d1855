"""The label API over HTTP: bad input gets a 4xx naming the field and leaves the store intact; 20 annotators
at once end with exactly N labels per task; a server killed with kill -9 and restarted loses no
acknowledged label; the command line (add-annotator, export, errors); the AI annotator against a fake
OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request  # at module level: FastAPI resolves the string annotations here

from chatforge.data.rankings import read_rankings
from chatforge.label.api import background_server, create_app
from chatforge.label.client import ApiRefused, LabelClient
from chatforge.label.config import LabelConfig
from chatforge.label.store import LabelStore, store_path
from chatforge.label.tasks import display_order, read_tasks


def write_samples(path: Path, count: int, k: int = 3) -> Path:
    lines = [{"prompt_id": f"t{i:03d}", "user_id": f"u{i % 7}", "messages": [{"role": "user", "content": f"问题 {i}?"}],
              "answers": [f"answer {j} to {i}" for j in range(k)], "finished": [True] * k} for i in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def label_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "chatforge.cli", "label", *args],
                          capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"label {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def token_of(output: str) -> str:
    return output.split("token ")[1].split()[0]


@pytest.fixture
def served(tmp_path):
    """A store of 4 tasks (K = 3) and annotators a, b, c, served in this process: (store, url, tokens)."""
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_tasks(read_tasks(write_samples(tmp_path / "samples.jsonl", 4)))
    tokens = {name: store.add_annotator(name) for name in ("a", "b", "c")}
    server, thread, url = background_server(create_app(store, LabelConfig(annotators_per_task=2)))
    yield store, url, tokens
    server.should_exit = True
    thread.join(timeout=10)


def test_bad_input_is_a_4xx_naming_the_field_and_the_store_stays_intact(served):
    store, url, tokens = served
    auth = {"Authorization": f"Bearer {tokens['a']}"}
    ok = httpx.post(url + "/api/submit", headers=auth, json={"task_id": "t000", "order": [0, [1, 2]]})
    assert ok.status_code == 200, ok.text
    before = store.event_count()

    def post(path, body=None, *, raw=None, headers=auth, content_type="application/json"):
        data = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(url + path, content=data, headers={**headers, "Content-Type": content_type})

    cases = [
        (post("/api/submit", raw=b'{"task_id": "t001", "order": [0, 1'), 400, "body", "not valid JSON"),
        (post("/api/submit", raw=b"\xff\xfe{}"), 400, "body", "not valid JSON"),
        (post("/api/submit", raw=b'{"task_id": ' + b"1" * 5000 + b"}"), 400, "body", "not valid JSON"),  # int too long
        (post("/api/submit", [1, 2]), 400, "body", "must be a JSON object"),
        (post("/api/submit", raw=b"[" * 5000 + b"]" * 5000), 400, "body", "nested deeper than 6"),
        (post("/api/submit", raw=b'{"x": "' + b"a" * 70000 + b'"}'), 413, "body", "over the limit"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 2]}, content_type="text/plain"), 415, "Content-Type",
         "must be application/json"),
        (post("/api/submit", {"task_id": "t999", "order": [0, 1, 2]}), 404, "task_id", "no task 't999'"),
        (post("/api/submit", {"order": [0, 1, 2]}), 400, "task_id", "field 'task_id'"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 2]}, headers={}), 401, "Authorization", "is missing"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 2]}, headers={"Authorization": "Bearer nope"}), 401,
         "Authorization", "does not hold a known token"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1]}), 400, "order", "index 2 is missing"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 1, 2]}), 400, "order", "index 1 appears twice"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 5]}), 400, "order", "out of range for 3 answers"),
        (post("/api/submit", {"task_id": "t001", "order": {"0": 1}}), 400, "order", "field 'order'"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 2], "ratings": [{"safety": 9}, {}, {}]}), 400,
         "ratings[0].safety", "from 1 to 7, got 9"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 2], "ratings": [{}, {}, {"fluency": 0}]}), 400,
         "ratings[2].fluency", "from 1 to 7, got 0"),
        (post("/api/submit", {"task_id": "t001", "order": [0, 1, 2], "flags": [[], ["spam"], []]}), 400, "flags[1]",
         "unknown flag"),
        (post("/api/submit", {"task_id": "t001", "oder": [0, 1, 2]}), 400, "oder", "unknown field"),
        (post("/api/submit", {"task_id": "t000", "order": [2, 1, 0]}), 409, "task_id", "already labelled"),
        (post("/api/skip", {"task_id": "t000"}), 409, "task_id", "already labelled"),
        (post("/api/skip", {}), 400, "task_id", "missing"),
        (post("/api/next", {"please": 1}), 400, "please", "unknown field"),
        (post("/api/nothing", {}), 404, "path", "Not Found"),
        (httpx.get(url + "/api/submit", headers=auth), 405, "path", "Method Not Allowed"),
    ]
    for response, status, field, words in cases:
        error = response.json()["error"]
        assert (response.status_code, error["field"]) == (status, field), (response.status_code, error)
        assert words in error["message"], error
        if status == 400 and field not in ("body", "path"):
            assert f"'{field}'" in error["message"], error  # the message itself names the field
    assert store.event_count() == before
    assert sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [(e["task_id"], e["body"]["ranks"]) for e in store.live_events()] == [("t000", [0, 1, 1])]


def labeller(url: str, token: str, acknowledged: list, stop_after: float = 120.0):
    """Label until no task is left, riding out a server that goes away: a refused connection is retried,
    and a 409 on a repeated submit means the first one got in (before the crash) but was never answered."""
    client = LabelClient(url, token, timeout=30)
    deadline = time.time() + stop_after
    while time.time() < deadline:
        try:
            task = client.next()["task"]
            if task is None:
                return
            order = [a["index"] for a in sorted(task["answers"], key=lambda a: a["index"])]
            client.submit(task["task_id"], order)
            acknowledged.append((task["task_id"], client.headers["Authorization"]))
        except ApiRefused as e:
            assert e.status == 409, e
        except (ConnectionError, OSError):
            client.close()
            time.sleep(0.05)
    raise AssertionError("the labeller did not finish in time")


def check_exactly_n(store: LabelStore, tasks: int, n: int):
    events = [e for e in store.live_events() if e["kind"] == "label"]
    pairs = [(e["task_id"], e["annotator"]) for e in events]
    assert len(pairs) == len(set(pairs)), "an annotator labelled a task twice"
    per_task = {}
    for task_id, _ in pairs:
        per_task[task_id] = per_task.get(task_id, 0) + 1
    assert len(per_task) == tasks and set(per_task.values()) == {n}, per_task
    return events


def test_twenty_annotators_at_once_end_with_exactly_n_labels_per_task(tmp_path):
    n, count = 3, 40
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_tasks(read_tasks(write_samples(tmp_path / "samples.jsonl", count)))
    tokens = [store.add_annotator(f"p{i:02d}") for i in range(20)]
    server, thread, url = background_server(create_app(store, LabelConfig(annotators_per_task=n)))
    acknowledged = []
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            for future in [pool.submit(labeller, url, token, acknowledged) for token in tokens]:
                future.result(timeout=300)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    events = check_exactly_n(store, count, n)
    assert len(acknowledged) == len(events) == n * count
    assert len({e["annotator"] for e in events}) > 3  # the work was shared, not done by the first three


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "label", "--run", str(run), "--port", str(port),
                             "--set", "label.annotators_per_task=3"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
    raise AssertionError("the label server did not start")


def test_kill_9_in_the_middle_loses_no_acknowledged_label(tmp_path):
    run, n, count = tmp_path / "run", 3, 30
    write_samples(run / "rankings" / "samples.jsonl", count)
    tokens = [token_of(label_cli("add-annotator", f"k{i}", "--run", str(run)).stdout) for i in range(6)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(run, port)
    acknowledged = []
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(labeller, url, token, acknowledged) for token in tokens]
        while len(acknowledged) < 25:
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)  # in the middle: some submits are in flight
        server.wait()
        before_restart = list(acknowledged)
        server = start_server(run, port)
        try:
            for future in futures:
                future.result(timeout=300)
        finally:
            server.kill()
            server.wait()
    store = LabelStore(store_path(run), create=False)
    assert len(before_restart) < n * count, "the run finished before the kill"
    events = check_exactly_n(store, count, n)
    token_names = {f"Bearer {t}": f"k{i}" for i, t in enumerate(tokens)}
    stored = {(e["task_id"], e["annotator"]) for e in events}
    assert {(task, token_names[auth]) for task, auth in acknowledged} <= stored


def test_cli_add_annotator_export_and_errors(tmp_path):
    run = tmp_path / "run"
    write_samples(run / "rankings" / "samples.jsonl", 3)
    missing = label_cli("export", "--run", str(run), check=False)
    assert missing.returncode == 2 and "no label store" in missing.stderr and len(missing.stderr.splitlines()) == 1
    token = token_of(label_cli("add-annotator", "ann", "--run", str(run)).stdout)
    again = label_cli("--run", str(run), "add-annotator", "ann", check=False)  # --run before the subcommand works too
    assert again.returncode == 2 and "'ann' already exists" in again.stderr
    other = token_of(label_cli("add-annotator", "bob", "--run", str(run)).stdout)
    store = LabelStore(store_path(run))
    store.add_tasks(read_tasks(run / "rankings" / "samples.jsonl"))
    server, thread, url = background_server(create_app(store, LabelConfig()))
    try:
        LabelClient(url, token).submit("t001", [2, [0, 1]], ratings=[{"fluency": 6}, {}, {}], flags=[[], ["harmful"], []])
        LabelClient(url, other).submit("t001", [[0, 2], 1])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    out = tmp_path / "people.jsonl"
    proc = label_cli("export", "--run", str(run), "--out", str(out))
    assert "1 rankings of 1 tasks" in proc.stdout
    (merged,), _ = read_rankings(out)
    # Borda: answer 0 gets 0 + 1.5, answer 1 gets 0.5 + 0, answer 2 gets 2 + 1.5 -> [1, 2, 0]
    assert merged.annotator_id == "ann,bob" and merged.ranks == [1, 2, 0] and merged.user_id == "u1"
    assert merged.flags == [[], ["harmful"], []] and merged.ratings == [{"fluency": 6}, {}, {}]
    label_cli("export", "--run", str(run), "--no-merge")
    each, _ = read_rankings(run / "rankings" / "labels.jsonl")
    assert [(r.annotator_id, r.ranks) for r in each] == [("ann", [1, 1, 0]), ("bob", [0, 1, 0])]
    bad_samples = label_cli("--run", str(run), "--samples", str(tmp_path / "none.jsonl"), "--port", "1", check=False)
    assert bad_samples.returncode == 2 and "none.jsonl: no samples to label" in bad_samples.stderr


class FakeModel:
    """An OpenAI-compatible endpoint that ranks the answers it is shown in reverse (C, B, A), and answers
    nonsense for a conversation that mentions "nonsense"."""

    def __init__(self):
        self.app, self.requests = FastAPI(), []

        @self.app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            text = body["messages"][-1]["content"]
            reply = "I cannot rank this." if "nonsense" in text else 'Here: {"order": ["C", "B", "A"]}'
            return {"choices": [{"message": {"role": "assistant", "content": reply}}]}


def test_ai_annotator_labels_through_the_api(tmp_path):
    run = tmp_path / "run"
    samples = write_samples(run / "rankings" / "samples.jsonl", 3)
    lines = samples.read_text(encoding="utf-8").splitlines()
    odd = json.loads(lines[2])
    odd["messages"][0]["content"] = "nonsense"
    samples.write_text("\n".join(lines[:2] + [json.dumps(odd)]) + "\n", encoding="utf-8")
    fake = FakeModel()
    server, thread, url = background_server(fake.app)
    try:
        proc = label_cli("ai", "--run", str(run), "--endpoint", url + "/v1", "--model", "fake/model-1")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert "ai-fake-model-1 labelled 2 tasks, skipped 1" in proc.stdout
    assert fake.requests[0]["model"] == "fake/model-1" and "Answer C:" in fake.requests[0]["messages"][1]["content"]
    store = LabelStore(store_path(run), create=False)
    events = store.live_events()
    assert [(e["kind"], e["annotator"]) for e in events] == [("label", "ai-fake-model-1")] * 2 + [("skip", "ai-fake-model-1")]
    for e in events[:2]:
        shown = display_order(e["task_id"], "ai-fake-model-1", 3, True)
        # C, B, A in the order shown: the last answer shown is best
        assert [e["body"]["ranks"][i] for i in shown] == [2, 1, 0]
