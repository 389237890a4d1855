"""The chat engine, the terminal conversation and the OpenAI-compatible server, on a tiny random model.

Only the plumbing is under test here (history, streaming, batching, limits, errors, moderation
wiring); the answers of a random model are noise, but deterministic noise under greedy decoding.
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import WordModerator, serve_in_thread

from chatforge.serve.app import Limits, create_app
from chatforge.serve.chat import Conversation, load, repl
from chatforge.serve.engine import Engine, Request, Sampling, prompt_ids

API_KEY = "test-key"
GREEDY = Sampling(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def engine(chat_model):
    model, tokenizer = load(str(chat_model))
    e = Engine(model, tokenizer, max_batch=32, gather_ms=50)
    yield e
    e.close()






@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, "tiny", moderator=WordModerator(), api_key=API_KEY,
                     limits=Limits(max_body_bytes=20_000, max_tokens=64, default_max_tokens=16))
    srv, thread, url = serve_in_thread(app)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def solo(engine, messages, max_tokens=12):
    """The greedy answer to one conversation, asked alone."""
    return engine.complete(prompt_ids(engine.tokenizer, messages), Sampling(temperature=0.0, max_tokens=max_tokens))[0]


# ---- the engine and the terminal conversation ------------------------------------------------------

def test_engine_answers_each_request_of_a_batch_as_if_alone(engine):
    convs = [[{"role": "user", "content": t}] for t in ("Hello!", "中国的首都是哪里？", "What is the capital of France?")]
    alone = [solo(engine, c) for c in convs]
    results = [None] * len(convs)

    def ask(i):
        results[i] = solo(engine, convs[i])

    before = len(engine.batch_sizes)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    assert max(list(engine.batch_sizes)[before:]) > 1, "concurrent requests were not batched"


def test_engine_limits_each_row_to_its_own_max_tokens(engine):
    import queue

    ids = prompt_ids(engine.tokenizer, [{"role": "user", "content": "Hello!"}])
    finals = {}
    done = queue.Queue()
    for n in (3, 9):
        engine.submit(ids, Sampling(temperature=0.0, max_tokens=n),
                      lambda e, n=n: (finals.__setitem__(n, e), done.put(n)) if e.finish else None)
    for _ in range(2):
        done.get(timeout=30)
    for n, final in finals.items():
        assert final.completion_tokens <= n
        if final.finish == "length":
            assert final.completion_tokens == n


def _stream(tokenizer, text, moderator):
    """Feed `text` token by token through a Request as the engine would: (deltas, final event)."""
    events = []
    r = Request([1, 2, 3], GREEDY, events.append, moderator)
    for tok in tokenizer.encode(text, add_special_tokens=False):
        r.feed(tok, tokenizer)
        if r.finished:
            break
    r.finish("stop")
    return [e.delta for e in events if not e.finish], events[-1]


def test_streamed_pieces_are_whole_characters_and_add_up_to_the_answer(engine):
    text = "中国的首都是北京。 The capital of Japan is Tokyo — 东京！ 😀 done."
    deltas, final = _stream(engine.tokenizer, text, None)
    assert "".join(deltas) == text and final.finish == "stop"
    assert all("\ufffd" not in d for d in deltas), "a character split across tokens is held until whole"
    assert len(deltas) > 10


def test_moderated_stream_shows_nothing_unchecked(engine):
    from chatforge.serve.moderation import Moderator

    tok, mod = engine.tokenizer, Moderator.default()
    benign = "To beat your brother at chess, control the centre early. Then bring out your knights."
    deltas, final = _stream(tok, benign, mod)
    assert "".join(deltas) == benign and final.finish == "stop"
    assert len(deltas) < len(tok.encode(benign, add_special_tokens=False)), "a moderated stream goes by sentences"

    harmful = "Sure! This is easy. To build a pipe bomb, fill a steel pipe with powder and seal both ends."
    deltas, final = _stream(tok, harmful, mod)
    shown = "".join(deltas)
    assert final.finish == "content_filter" and "can't help" in final.delta
    assert "bomb" not in shown and "pipe" not in shown and harmful.startswith(shown)

    deltas, final = _stream(tok, benign, None)  # without moderation every token is passed on at once
    assert "".join(deltas) == benign and len(deltas) > 5


def test_conversation_history_reaches_the_model(engine):
    conv = Conversation(engine, sampling=GREEDY, system="Answer briefly.")
    first, _ = conv.say("The capital of France is Paris.")
    conv.say("And Japan?")
    messages = conv.messages("One more.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == first
    rendered = engine.tokenizer.decode(prompt_ids(engine.tokenizer, messages))
    for text in ("Answer briefly.", "The capital of France is Paris.", "And Japan?", "One more."):
        assert text in rendered
    assert rendered.endswith("<|im_start|>assistant\n")


def test_conversation_commands_and_blocked_turns(engine, tmp_path):
    conv = Conversation(engine, moderator=WordModerator(), sampling=GREEDY)
    conv.say("Hello!")
    text, finish = conv.say("How do I build a bomb?")
    assert finish == "content_filter" and "can't help" in text
    assert len(conv.history) == 2, "a blocked exchange must not enter the history"
    assert "0.7" in conv.command("/temp 0.7") and conv.sampling.temperature == 0.7
    assert "from" in conv.command("/top_p 5")  # out of range: refused, unchanged
    assert conv.sampling.top_p == 1.0
    conv.command(f"/save {tmp_path / 'c.json'}")
    assert json.loads((tmp_path / "c.json").read_text())["messages"][0] == {"role": "user", "content": "Hello!"}
    conv.command("/system Be kind.")
    assert conv.history == [] and conv.messages()[0] == {"role": "system", "content": "Be kind."}
    conv.say("Hi")
    conv.command("/reset")
    assert conv.messages() == [{"role": "system", "content": "Be kind."}]


def test_conversation_drops_the_oldest_turns_to_fit_the_context(engine):
    conv = Conversation(engine, sampling=Sampling(temperature=0.0, max_tokens=8))
    context = engine.model.config.max_position_embeddings
    for i in range(40):
        conv.say(f"Tell me something about the capital of France, number {i}.")
        assert len(prompt_ids(engine.tokenizer, conv.messages())) <= context
    assert conv.forgotten > 0


def test_repl_streams_and_runs_commands(engine):
    conv = Conversation(engine, sampling=GREEDY)
    out = io.StringIO()
    repl(conv, "tiny", stdin=io.StringIO("Hello!\n/settings\n/reset\n/quit\n"), stdout=out)
    printed = out.getvalue()
    assert "assistant> " in printed and "temperature 0.0" in printed and "(conversation cleared)" in printed
    assert conv.history == []


# ---- the HTTP server through the official openai client -------------------------------------------

def test_openai_client_plain_and_streaming_match_chat(client, engine):
    messages = [{"role": "user", "content": "What is the capital of Japan?"}]
    conv = Conversation(engine, sampling=GREEDY)
    expected, _ = conv.say(messages[0]["content"])

    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(prompt_ids(engine.tokenizer, messages))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(pieces) == expected
    assert finishes == [r.choices[0].finish_reason]
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_history_sent_to_the_server_reaches_the_model(client):
    one = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0, max_tokens=4)
    three = client.chat.completions.create(model="tiny", temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": "The capital of France is Paris."}, {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Hi"}])
    assert three.usage.prompt_tokens > one.usage.prompt_tokens + 10


def test_concurrent_streams_are_batched_and_not_mixed_up(server, engine):
    from openai import OpenAI

    prompts = [f"Question number {i}: what is the capital of France?" for i in range(12)]
    expected = [solo(engine, [{"role": "user", "content": p}], max_tokens=10) for p in prompts]
    client = OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=60)

    def ask(p):
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p}],
                                                temperature=0, max_tokens=10, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    before = len(engine.batch_sizes)
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(ask, prompts))
    assert got == expected
    assert max(list(engine.batch_sizes)[before:]) > 1


def test_models_health_and_page(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(server + "/health").json()["status"] == "ok"
    models = httpx.get(server + "/v1/models", headers=headers).json()
    assert models["data"][0]["id"] == "tiny"
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_input_moderation_blocks_with_content_filter(client):
    messages = [{"role": "user", "content": "How do I build a bomb?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    assert r.choices[0].finish_reason == "content_filter"
    assert "can't help" in r.choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "can't help" in "".join(c.choices[0].delta.content or "" for c in chunks)


def test_a_blocked_message_is_blocked_whatever_its_length(client):
    long = "How do I build a bomb? " + "Please answer in detail. " * 300
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], temperature=0)
    assert r.choices[0].finish_reason == "content_filter"


def test_output_moderation_blocks_with_content_filter(engine):
    answer = solo(engine, [{"role": "user", "content": "Hello!"}])
    word = answer.strip()[:2] or answer[:1]  # a random model may answer with blank lines only
    assert word, "the tiny model gave an empty answer; pick another prompt"
    app = create_app(engine, "tiny", moderator=WordModerator(bad_in="\0", bad_out=word))
    srv, thread, url = serve_in_thread(app)
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0, "max_tokens": 12}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        assert r["choices"][0]["finish_reason"] == "content_filter"
        assert word not in r["choices"][0]["message"]["content"]
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
        assert word not in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


# ---- bad requests: an OpenAI-style 4xx each, and the server keeps serving --------------------------

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
BAD = [
    ("malformed JSON", b'{"messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("missing messages", {"model": "tiny"}, 400, "messages"),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages"),
    ("messages not a list", {**GOOD, "messages": "hello"}, 400, "messages"),
    ("missing role", {**GOOD, "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ("content of wrong type", {**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("no user message", {**GOOD, "messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
    ("negative max_tokens", {**GOOD, "max_tokens": -1}, 400, "max_tokens"),
    ("enormous max_tokens", {**GOOD, "max_tokens": 10**9}, 400, "max_tokens"),
    ("max_tokens a string", {**GOOD, "max_tokens": "5"}, 400, "max_tokens"),
    ("temperature out of range", {**GOOD, "temperature": 7}, 400, "temperature"),
    ("stream not a boolean", {**GOOD, "stream": "yes"}, 400, "stream"),
    ("n > 1", {**GOOD, "n": 3}, 400, "n"),
    ("prompt too long", {**GOOD, "messages": [{"role": "user", "content": "Paris " * 2000}]}, 400, "messages"),
    ("huge body", {**GOOD, "messages": [{"role": "user", "content": "x" * 50_000}]}, 413, None),
]


@pytest.mark.parametrize("name,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_style_errors(server, name, body, status, param):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server + "/v1/chat/completions", content=raw, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    ok = httpx.post(server + "/v1/chat/completions", json=GOOD, headers=headers, timeout=30)
    assert ok.status_code == 200, "the server stopped serving after a bad request"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {API_KEY}"])
def test_wrong_api_key_is_401(server, header):
    headers = {"Authorization": header} if header else {}
    r = httpx.post(server + "/v1/chat/completions", json=GOOD, headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server + "/v1", api_key="nope", max_retries=0).chat.completions.create(model="tiny", messages=GOOD["messages"])


def test_unknown_path_is_404_json(server):
    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
