"""The pairwise LLM judge and its client, against a stub endpoint on 127.0.0.1 and against chatforge's own server.

The stub plays a judge whose preference is known (an answer that says "Paris" is right) and whose position
bias is known (when it cannot tell, it picks whatever is shown first), and counts and times every request.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import serve_in_thread

from chatforge.errors import ConfigError, DataError, UserError
from chatforge.llm import cache_key
from chatforge.eval.llm_judge import LLMJudge, LLMJudgeConfig, Verdict, combine, parse_verdict, summarize

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GOOD, BAD, WORSE = "The capital of France is Paris.", "The capital of France is Lyon.", "I like trains."
SHOWN = re.compile(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich", re.DOTALL)


def completion(text: str) -> dict:
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def knowing_judge(body: dict) -> str:
    """Prefers the answer that says Paris; when both or neither do, picks the one shown first."""
    shown_a, shown_b = SHOWN.search(body["messages"][-1]["content"]).groups()
    letter = "B" if "Paris" in shown_b and "Paris" not in shown_a else "A"
    return f"Answer {letter} is accurate.\nBetter: {letter}"


class Stub:
    """A chat-completions endpoint in a thread: `respond(n, body) -> (status, payload, headers)` for the n-th
    request (from 0); records (monotonic time, headers, body) of every request, and the most ever in flight."""

    def __init__(self, respond, delay_s: float = 0.0):
        self.respond, self.delay_s = respond, delay_s
        self.requests, self.in_flight, self.max_in_flight = [], 0, 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    n = len(stub.requests)
                    stub.requests.append((time.monotonic(), dict(self.headers), body))
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                answered = False

                def done():  # before the reply leaves: once it has, the client may already send its next request
                    nonlocal answered
                    if not answered:
                        answered = True
                        with stub.lock:
                            stub.in_flight -= 1

                try:
                    time.sleep(stub.delay_s)
                    status, payload, headers = stub.respond(n, body, dict(self.headers))
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    done()
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on this request (a timeout test)
                finally:
                    done()

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def judge_by(reply):
    """A `respond` that answers every request with 200 and `reply(body)`."""
    return lambda n, body, headers: (200, completion(reply(body)), {})


@pytest.fixture
def stub():
    made = []

    def make(respond=None, delay_s: float = 0.0) -> Stub:
        made.append(Stub(respond or judge_by(knowing_judge), delay_s))
        return made[-1]

    yield make
    for s in made:
        s.close()


def judge_at(url: str, cache_dir=None, **overrides) -> LLMJudge:
    config = LLMJudgeConfig(**{"endpoint": url, "model": "stub-judge", "requests_per_second": 0.0, **overrides})
    return LLMJudge(config, cache_dir, backoff_s=0.01)


def one_line_error(call) -> str:
    with pytest.raises(UserError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- the verdict: parsing and combining the two orders ------------------------------------------------

@pytest.mark.parametrize("reply, letter", [
    ("A is right.\nBetter: A", "A"), ("Better: B\n", "B"), ("It is a draw.\n\n  Better: tie  \n", "tie"),
    ("Better: A\nActually no.", None), ("Better: a", None), ("**Better: A**", None), ("Better: C", None),
    ("Better: A or B", None), ("", None), ("Better:A", None),
])
def test_parse_verdict_reads_only_the_documented_last_line(reply, letter):
    assert parse_verdict(reply) == letter


@pytest.mark.parametrize("a_first, b_first, winner", [
    ("a", "a", "a"), ("b", "b", "b"), ("a", "b", "tie"), ("b", "a", "tie"), ("a", "tie", "tie"),
    ("tie", "tie", "tie"), (None, "a", "tie"), ("b", None, "tie"), (None, None, "tie"),
])
def test_a_win_needs_both_orders(a_first, b_first, winner):
    assert combine(a_first, b_first) == winner


def test_summarize_counts_and_interval_by_hand():
    verdicts = [Verdict("a", "a", "a", ("", ""))] * 3 + [Verdict("b", "b", "b", ("", "")),
                                                         Verdict("tie", None, "b", ("", ""))]
    # scores 1, 1, 1, 0, 0.5: mean 0.7, sample variance 0.8 / 4 = 0.2, standard error sqrt(0.2 / 5) = 0.2
    out = summarize(verdicts)
    assert (out["n"], out["wins"], out["ties"], out["losses"], out["unparsable"]) == (5, 3, 1, 1, 1)
    assert out["win_rate"] == 0.7 and out["ci95"] == (0.308, 1.092)
    # decisive replies: a_first a,a,a,b (first shown: 3 of 4), b_first a,a,a,b,b (first shown: 2 of 5)
    assert out["first_position"] == round(5 / 9, 4)


# ---- the judge against the stub ------------------------------------------------------------------------

def test_both_orders_are_asked(stub):
    s = stub()
    verdict = judge_at(s.url, max_tokens=77).compare(QUESTION, GOOD, BAD)
    assert [SHOWN.search(b["messages"][-1]["content"]).groups() for _, _, b in s.requests] == [(GOOD, BAD), (BAD, GOOD)]
    for _, _, body in s.requests:
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("stub-judge", 0.0, 77)
        assert body["messages"][0]["role"] == "system" and "Better: tie" in body["messages"][0]["content"]
        assert "user: What is the capital of France?" in body["messages"][1]["content"]
    assert verdict == Verdict("a", "a", "a", ("Answer A is accurate.\nBetter: A", "Answer B is accurate.\nBetter: B"))
    assert judge_at(s.url).compare(QUESTION, BAD, GOOD).winner == "b"


def test_a_position_biased_judge_gives_ties_not_wins(stub):
    s = stub(judge_by(lambda body: "The first one.\nBetter: A"))
    out = judge_at(s.url).win_rate([(QUESTION, GOOD, BAD), (QUESTION, BAD, GOOD), (QUESTION, GOOD, WORSE)])
    assert (out["wins"], out["ties"], out["losses"], out["win_rate"]) == (0, 3, 0, 0.5)
    assert out["first_position"] == 1.0 and out["unparsable"] == 0


def test_win_rate_in_item_order_under_concurrency(stub):
    s = stub(delay_s=0.02)
    items = [(QUESTION, GOOD, BAD)] * 3 + [(QUESTION, BAD, GOOD), (QUESTION, BAD, WORSE)]
    out = judge_at(s.url, max_concurrency=4).win_rate(items)
    assert (out["wins"], out["ties"], out["losses"], out["win_rate"], out["ci95"]) == (3, 1, 1, 0.7, (0.308, 1.092))
    assert out["first_position"] == 0.6  # 4 decisive pairs split 1:1, the undecided item picks position A twice
    assert len(s.requests) == 10


def test_concurrency_is_bounded(stub):
    s = stub(delay_s=0.1)
    judge_at(s.url, max_concurrency=3).win_rate([(QUESTION, GOOD, BAD)] * 6)
    assert 2 <= s.max_in_flight <= 3


def test_garbage_replies_count_as_unparsable_ties(stub):
    s = stub(judge_by(lambda body: "Both answers have their charm."))
    out = judge_at(s.url).win_rate([(QUESTION, GOOD, BAD), (QUESTION, BAD, GOOD)])
    assert (out["ties"], out["unparsable"], out["win_rate"], out["first_position"]) == (2, 2, 0.5, None)


def test_rate_limit_spaces_requests_over_all_threads(stub):
    s = stub()
    rate = 20.0
    judge_at(s.url, max_concurrency=6, requests_per_second=rate).win_rate([(QUESTION, GOOD, BAD)] * 6)
    times = sorted(t for t, _, _ in s.requests)
    assert len(times) == 12
    assert times[-1] - times[0] >= 0.8 * (len(times) - 1) / rate  # loosely: 11 intervals of 50 ms


# ---- the cache -----------------------------------------------------------------------------------------

def test_cache_key_covers_what_changes_the_answer():
    base = cache_key("m", QUESTION, 0.0, 512)
    assert base == cache_key("m", [dict(QUESTION[0])], 0.0, 512)
    others = [cache_key("m2", QUESTION, 0.0, 512), cache_key("m", [{"role": "user", "content": "Hi"}], 0.0, 512),
              cache_key("m", QUESTION, 0.7, 512), cache_key("m", QUESTION, 0.0, 256)]
    assert len({base, *others}) == 5


def test_a_second_run_asks_nothing(stub, tmp_path):
    s = stub()
    items = [(QUESTION, GOOD, BAD), (QUESTION, WORSE, GOOD), (QUESTION, BAD, WORSE)]  # six distinct requests
    first = judge_at(s.url, tmp_path).win_rate(items)
    assert len(s.requests) == 6
    assert judge_at(s.url, tmp_path).win_rate(items) == first
    assert len(s.requests) == 6
    judge_at(s.url, tmp_path, max_tokens=100).compare(*items[0])  # another request, asked anew
    assert len(s.requests) == 8


def test_a_torn_last_line_is_dropped_and_asked_again(stub, tmp_path):
    s = stub()
    items = [(QUESTION, GOOD, BAD), (QUESTION, BAD, WORSE)]
    first = judge_at(s.url, tmp_path, max_concurrency=1).win_rate(items)
    cache = tmp_path / "llm_judge.jsonl"
    data = cache.read_bytes()
    cache.write_bytes(data[:-20])  # killed while writing the last entry
    assert judge_at(s.url, tmp_path).win_rate(items) == first
    assert len(s.requests) == 5
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["reply"] for line in lines)


def test_a_broken_line_inside_the_cache_names_file_and_line(stub, tmp_path):
    s = stub()
    (tmp_path / "llm_judge.jsonl").write_text('{"key": "k", "model": "m", "reply": "Better: A"}\nnot json\n{}\n')
    with pytest.raises(DataError, match=r"llm_judge\.jsonl:2: not a cache entry"):
        judge_at(s.url, tmp_path)


# ---- retries and errors --------------------------------------------------------------------------------

def test_429_then_200_is_retried(stub):
    def respond(n, body, headers):
        if n == 0:
            return 429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "0"}
        return 200, completion(knowing_judge(body)), {}

    s = stub(respond)
    assert judge_at(s.url).compare(QUESTION, GOOD, BAD).winner == "a"
    assert len(s.requests) == 3


def test_5xx_is_retried_then_given_up_in_one_line(stub):
    s = stub(lambda n, body, headers: (503, {"error": {"message": "overloaded"}}, {}))
    judge = LLMJudge(LLMJudgeConfig(endpoint=s.url, model="m", requests_per_second=0), None, retries=2, backoff_s=0.01)
    message = one_line_error(lambda: judge.compare(QUESTION, GOOD, BAD))
    assert s.url in message and "HTTP 503: overloaded" in message and "3 attempts" in message
    assert len(s.requests) == 3


def test_a_timeout_is_retried(stub):
    def respond(n, body, headers):
        if n == 0:
            time.sleep(1.0)  # past the client's timeout: it asks again
        return 200, completion(knowing_judge(body)), {}

    s = stub(respond)
    assert judge_at(s.url, timeout_s=0.3).compare(QUESTION, GOOD, BAD).winner == "a"
    assert len(s.requests) == 3


def test_401_is_one_line_naming_endpoint_and_variable_not_key(stub, monkeypatch):
    def respond(n, body, headers):
        if headers.get("Authorization") != "Bearer right-key":
            return 401, {"error": {"message": "Incorrect API key provided"}}, {}
        return 200, completion(knowing_judge(body)), {}

    s = stub(respond)
    monkeypatch.setenv("JUDGE_TEST_KEY", "wrong-key")
    message = one_line_error(lambda: judge_at(s.url, api_key_env="JUDGE_TEST_KEY").compare(QUESTION, GOOD, BAD))
    assert s.url in message and "401" in message and "JUDGE_TEST_KEY" in message and "wrong-key" not in message
    assert len(s.requests) == 1  # not retried
    monkeypatch.setenv("JUDGE_TEST_KEY", "right-key")
    assert judge_at(s.url, api_key_env="JUDGE_TEST_KEY").compare(QUESTION, GOOD, BAD).winner == "a"


def test_a_first_error_cancels_the_items_not_started(stub):
    s = stub(lambda n, body, headers: (401, {"error": {"message": "no"}}, {}))
    with pytest.raises(UserError):
        judge_at(s.url, max_concurrency=2).win_rate([(QUESTION, GOOD, BAD)] * 40)
    assert len(s.requests) < 20


def test_an_unset_key_variable_is_one_line(monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    message = one_line_error(lambda: judge_at("http://127.0.0.1:9/v1", api_key_env="JUDGE_TEST_KEY"))
    assert "JUDGE_TEST_KEY" in message and "not set" in message


def test_an_unreachable_port_is_one_line():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    message = one_line_error(lambda: judge_at(url).compare(QUESTION, GOOD, BAD))
    assert message.startswith(f"{url}/chat/completions: cannot reach the endpoint")


def test_unknown_model_and_non_json_replies_are_one_line(stub):
    s = stub(lambda n, body, headers: (404, {"error": {"message": f"The model `{body['model']}` does not exist."}}, {}))
    message = one_line_error(lambda: judge_at(s.url, model="nope").compare(QUESTION, GOOD, BAD))
    assert s.url in message and "404" in message and "The model `nope` does not exist." in message
    s = stub(lambda n, body, headers: (200, b"<html><body>Welcome</body></html>", {"Content-Type": "text/html"}))
    message = one_line_error(lambda: judge_at(s.url).compare(QUESTION, GOOD, BAD))
    assert s.url in message and "not JSON" in message
    s = stub(lambda n, body, headers: (200, {"object": "list", "data": []}, {}))
    message = one_line_error(lambda: judge_at(s.url).compare(QUESTION, GOOD, BAD))
    assert "not a chat completion" in message


# ---- the config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, words", [
    ("endpoint", "localhost:8000/v1", "judge.endpoint must start with http"),
    ("model", "", "judge.model must name"),
    ("api_key_env", "sk-proj-abc123", "judge.api_key_env must be the NAME"),
    ("max_concurrency", 0, "judge.max_concurrency must be at least 1"),
    ("max_tokens", 0, "judge.max_tokens must be at least 1"),
    ("requests_per_second", -1.0, "judge.requests_per_second must be >= 0"),
    ("timeout_s", 0.0, "judge.timeout_s must be positive"),
    ("cache", "eval/cache.jsonl", "judge.cache must be a file name"),
])
def test_config_errors_name_the_field(field, value, words):
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        LLMJudgeConfig(**{"endpoint": "http://127.0.0.1:8000/v1", "model": "m", field: value})
    assert "sk-proj-abc123" not in str(e.value)


def test_the_judge_is_unused_unless_configured():
    assert not LLMJudgeConfig().enabled
    with pytest.raises(ConfigError, match="judge.endpoint is empty"):
        LLMJudge(LLMJudgeConfig(), None)


# ---- against chatforge's own server ----------------------------------------------------------------------

def serve_model(model_dir, api_key: str | None = None):
    from chatforge.serve.app import create_app
    from chatforge.serve.chat import load
    from chatforge.serve.engine import Engine

    model, tokenizer = load(str(model_dir))
    engine = Engine(model, tokenizer, max_batch=8, gather_ms=20)
    server, thread, url = serve_in_thread(create_app(engine, "tiny-judge", api_key=api_key))
    return engine, server, thread, url + "/v1"


@pytest.fixture(scope="module")
def long_chat_model(chat_model, tmp_path_factory):
    """The tiny chat model's tokenizer under a random model with room for a judge's prompt (the fixture's 256
    tokens are too few for the rubric and two answers in its 300-token vocabulary)."""
    from chatforge.config import ModelConfig
    from chatforge.model import build_model, save_pretrained
    from chatforge.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(chat_model)
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=2048),
                        tokenizer, seed=0)
    out = tmp_path_factory.mktemp("judge") / "model"
    save_pretrained(model, tokenizer, out)
    return out


def test_chatforge_serve_accepts_the_judges_requests(long_chat_model, tmp_path, monkeypatch):
    engine, server, thread, url = serve_model(long_chat_model, api_key="serve-key")
    monkeypatch.setenv("CHATFORGE_JUDGE_KEY", "serve-key")
    try:
        judge = judge_at(url, tmp_path, model="tiny-judge", api_key_env="CHATFORGE_JUDGE_KEY", max_tokens=8)
        out = judge.win_rate([(QUESTION, GOOD, BAD), (QUESTION, BAD, WORSE)])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
    # A random model's answers are noise: what is tested is that every request was accepted and answered.
    assert out["n"] == 2 and out["wins"] + out["ties"] + out["losses"] == 2
    lines = [json.loads(line) for line in (tmp_path / "llm_judge.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(entry["model"] == "tiny-judge" and entry["reply"] for entry in lines)


def test_a_prompt_too_long_for_the_served_model_is_one_line(chat_model):
    engine, server, thread, url = serve_model(chat_model)
    try:
        message = one_line_error(lambda: judge_at(url, model="tiny", max_tokens=8).compare(QUESTION, GOOD, BAD))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
    assert message.startswith(f"{url}/chat/completions: HTTP 400") and "tokens after the chat template" in message
