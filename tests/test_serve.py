"""The chat engine, the terminal conversation and the OpenAI-compatible server, on a tiny random model.

Only the plumbing is under test here (history, streaming, batching, limits, errors, moderation
wiring); the answers of a random model are noise, but deterministic noise under greedy decoding.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import WordModerator, serve_in_thread
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chatforge.data.rankings import read_rankings
from chatforge.errors import UserError
from chatforge.generate import cache_keyword, left_pad
from chatforge.serve import app as serve_app
from chatforge.serve import arguments
from chatforge.serve import chat as serve_chat
from chatforge.serve.app import Limits, create_app
from chatforge.serve.chat import Conversation, load, repl
from chatforge.serve.engine import Engine, Request, Sampling, prompt_ids
from chatforge.serve.invariant import make_batch_invariant
from chatforge.serve.preferences import FeedbackLog, pair_thumbs, thumbs_path

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


def solo(engine, messages, max_tokens=12, temperature=0.0, seed=None):
    """The answer to one conversation, asked alone: greedy, or sampled with a seed (the same draws every time)."""
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
    return engine.complete(prompt_ids(engine.tokenizer, messages), sampling)[0]


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


MIXED = [  # conversations from a few tokens to most of the tiny model's 256-token context
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "中国的首都是哪里？"}],
    [{"role": "user", "content": "What is the capital of France? " * 3}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Tell me about Tokyo. " * 6}],
    [{"role": "user", "content": "The capital of Japan is Tokyo. " * 13}],
]


def ask_together(engine, prompts, sampling):
    """Submit every prompt at once, so that they share a batch: ([(text, final event)], rows of the batches run)."""
    results, done = [["", None] for _ in prompts], queue.Queue()

    def sink(i):
        def put(event):
            results[i][0] += event.delta
            if event.finish:
                results[i][1] = event
                done.put(i)
        return put

    before = len(engine.batch_sizes)
    for i, p in enumerate(prompts):
        engine.submit(p, sampling, sink(i))
    for _ in prompts:
        done.get(timeout=120)
    return [tuple(r) for r in results], list(engine.batch_sizes)[before:]


def test_greedy_answers_are_the_same_alone_and_in_a_batch_of_mixed_lengths(engine):
    context = engine.model.config.max_position_embeddings
    prompts = [prompt_ids(engine.tokenizer, m) for m in MIXED]
    sampling = Sampling(temperature=0.0, max_tokens=64)
    alone = [engine.complete(p, sampling) for p in prompts]
    together, batches = ask_together(engine, prompts, sampling)
    assert batches == [len(prompts)], "the prompts were not answered in one batch"
    for (text, final), (text_b, final_b) in zip(alone, together):
        assert (text_b, final_b.finish, final_b.completion_tokens) == (text, final.finish, final.completion_tokens)
    # What a shared limit got wrong: answers longer than the room the longest prompt leaves in the context.
    room = context - max(len(p) for p in prompts)
    assert sum(final.completion_tokens > room for _, final in alone) >= 2, "the prompts no longer test the limit"
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    assert len(prompts[longest]) + alone[longest][1].completion_tokens <= context


def forced_logits(model, prompts, tokens_BT):
    """The logits of each step [B, T, V] of greedy decoding with the given next tokens, as generate runs it."""
    from transformers import DynamicCache

    ids, mask = left_pad(prompts, 0, "cpu")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    kv = {cache_keyword(model): DynamicCache(config=model.config)}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kv, use_cache=True, logits_to_keep=1)
    position, logits = positions[:, -1:] + 1, []
    for t in range(tokens_BT.shape[1]):
        logits.append(out.logits[:, -1])
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=tokens_BT[:, t : t + 1], attention_mask=mask, position_ids=position, **kv, use_cache=True)
        position = position + 1
    return torch.stack(logits, 1)


@torch.no_grad()
def test_each_row_gets_the_bits_it_gets_alone(chat_model):
    """Not only the same argmax: the same logits, bit for bit, whatever the batch and its padding."""
    model, tokenizer = load(str(chat_model))
    assert make_batch_invariant(model)
    prompts = [prompt_ids(tokenizer, m) for m in MIXED]
    tokens = torch.randint(3, len(tokenizer), (len(prompts), 6), generator=torch.Generator().manual_seed(0))
    batch = forced_logits(model, prompts, tokens)
    for i, p in enumerate(prompts):
        assert torch.equal(forced_logits(model, [p], tokens[i : i + 1])[0], batch[i]), f"row {i} differs alone"
    pair = forced_logits(model, [prompts[0], prompts[-1]], tokens[[0, -1]])  # another batch, another padding
    assert torch.equal(pair[0], batch[0]) and torch.equal(pair[1], batch[-1])


def test_stop_text_ends_the_answer_before_it_and_no_part_of_it_is_streamed(engine):
    tok = engine.tokenizer
    text = "The capital of France is Paris. 中国的首都是北京。 Thanks!"
    cases = [(("Paris",), "The capital of France is ", "stop"), (("zzz", "北京"), text[: text.index("北京")], "stop"),
             (("Paris!",), text, "length"),  # held back after "Paris", released when "." shows it is not the stop
             (("France is Paris. 中国",), "The capital of ", "stop")]
    for stops, expected, finish in cases:
        events = []
        r = Request([1, 2, 3], Sampling(max_tokens=100, stop=stops), events.append)
        for t in tok.encode(text, add_special_tokens=False):
            r.feed(t, tok)
            if r.finished:
                break
        r.finish("length")  # the end of max_tokens, unless a stop text came first
        # Pieces are never taken back, so a partial stop text streamed would still be in their sum.
        assert "".join(e.delta for e in events) == expected, stops
        assert events[-1].finish == finish


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


def test_save_to_an_unwritable_path_is_said_and_the_conversation_goes_on(engine, tmp_path):
    conv = Conversation(engine, sampling=GREEDY)
    conv.say("Hello!")
    (tmp_path / "a-file").write_text("")
    for path in (tmp_path / "a-file" / "c.json", tmp_path / "nul\0byte.json", tmp_path):  # root ignores chmod
        message = conv.command(f"/save {path}")
        assert message.startswith("could not save to") and "still here" in message, message
    assert len(conv.history) == 2
    assert "saved 2 messages" in conv.command(f"/save {tmp_path / 'ok.json'}")


def test_a_line_that_is_not_utf8_is_refused_and_the_conversation_goes_on(engine):
    conv = Conversation(engine, sampling=GREEDY)
    stdin = io.TextIOWrapper(io.BytesIO(b"Hello!\ncaf\xe9 \xff\n/settings\n"), encoding="utf-8")
    out = io.StringIO()
    repl(conv, "tiny", stdin=stdin, stdout=out)
    printed = out.getvalue()
    assert "not UTF-8 text (byte 0xe9 at character 4); it was not sent" in printed
    assert "temperature 0.0" in printed, "the chat stopped at the bad line"
    assert [m["content"] for m in conv.history if m["role"] == "user"] == ["Hello!"]


def chat_args(*argv):
    parser = argparse.ArgumentParser()
    arguments.add_chat_arguments(parser)
    return parser.parse_args(["some-model", *argv])


def serve_args(*argv):
    parser = argparse.ArgumentParser()
    arguments.add_serve_arguments(parser)
    return parser.parse_args(["some-model", *argv])


@pytest.mark.parametrize("command,add", [("chat", arguments.add_chat_arguments), ("serve", arguments.add_serve_arguments)])
def test_the_command_line_defines_every_option_the_commands_read(command, add):
    """`chatforge chat|serve` parse to what each command's main reads, defaults included (a flag the CLI lacks was an
    AttributeError at start-up); a repeated --allow-origin and --feedback come through."""
    from chatforge.cli import build_parser

    own = argparse.ArgumentParser()
    add(own)
    assert vars(build_parser().parse_args([command, "some-model"])) == {"command": command,
                                                                         **vars(own.parse_args(["some-model"]))}
    if command == "serve":
        args = build_parser().parse_args(["serve", "m", "--allow-origin", "https://a.example", "--allow-origin", "*",
                                          "--feedback", "fb.jsonl", "--max-batch", "4", "--max-tokens-limit", "64"])
        assert (args.allow_origin, args.feedback, args.max_batch, args.max_tokens_limit) == (
            ["https://a.example", "*"], "fb.jsonl", 4, 64)


@pytest.mark.parametrize("argv,flag", [(["--temperature", "-5"], "--temperature"), (["--temperature", "nan"], "--temperature"),
                                       (["--top-p", "7"], "--top-p"), (["--top-p", "0"], "--top-p"),
                                       (["--max-tokens", "0"], "--max-tokens")])
def test_chat_refuses_settings_out_of_range_before_loading(argv, flag):
    with pytest.raises(UserError, match=f"^{flag} must be"):
        serve_chat.main(chat_args(*argv))  # "some-model" does not exist: the check comes first


@pytest.mark.parametrize("argv,flag", [(["--port", "99999"], "--port"), (["--port", "-1"], "--port"),
                                       (["--max-tokens-limit", "0"], "--max-tokens-limit"),
                                       (["--allow-origin", "example.org"], "--allow-origin"),
                                       (["--gather-ms", "inf"], "--gather-ms")])
def test_serve_refuses_bad_arguments_before_printing_or_loading(argv, flag, capsys):
    with pytest.raises(UserError, match=f"^{flag}"):
        serve_app.main(serve_args(*argv))
    assert capsys.readouterr().out == "", "nothing is printed before the arguments are checked"


def test_serve_says_a_taken_port_in_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(UserError, match=r"^cannot listen on 127.0.0.1:\d+: "):
            serve_app.main(serve_args("--port", str(taken.getsockname()[1])))
    assert capsys.readouterr().out == ""


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


def test_greedy_answers_over_http_are_the_same_alone_and_in_a_batch_of_mixed_lengths(server, engine):
    alone = [solo(engine, m, max_tokens=64) for m in MIXED]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def ask(i):
        body = {"model": "tiny", "messages": MIXED[i], "temperature": 0, "max_tokens": 64, "stream": i % 2 == 1}
        if not body["stream"]:
            return httpx.post(server + "/v1/chat/completions", json=body, headers=headers, timeout=60).json()[
                "choices"][0]["message"]["content"]
        with httpx.stream("POST", server + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
            chunks = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])

    before = len(engine.batch_sizes)
    with ThreadPoolExecutor(len(MIXED)) as pool:
        got = list(pool.map(ask, range(len(MIXED))))
    assert got == alone
    assert max(list(engine.batch_sizes)[before:]) > 1, "the requests were not batched"


def test_stop_over_http_plain_and_streaming(client, engine):
    # An answer with some text to stop in. Not a greedy one: the tiny random model's greedy answers are a newline over
    # and over (its tied embeddings make the prompt's last token, the "\n" after "assistant", the likeliest next one,
    # and so on), so nothing but whitespace to stop in. A seeded sample is as repeatable, and varied.
    messages, seed, full = next((m, seed, a) for seed in range(20) for m in MIXED
                                if len((a := solo(engine, m, max_tokens=24, temperature=1.0, seed=seed)).strip()) >= 8)
    # a stop text first found a few characters in, so that the answer before it is not empty
    stop = next(full[i : i + 3] for i in range(3, len(full) - 2)
                if full[i : i + 3].strip() and full.find(full[i : i + 3]) == i)
    expected = full[: full.index(stop)]
    sampled = {"temperature": 1.0, "seed": seed, "max_tokens": 24}
    r = client.chat.completions.create(model="tiny", messages=messages, stop=[stop, "never in this answer"], **sampled)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (expected, "stop")
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, stop=stop, stream=True, **sampled))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_a_token_limit_below_the_default_lowers_the_default(engine):
    srv, thread, url = serve_in_thread(create_app(engine, "tiny", limits=Limits(max_tokens=5)))
    try:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello!"}],
                                                            "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 5
        health = httpx.get(url + "/health").json()
        assert (health["max_tokens"], health["max_tokens_limit"], health["feedback"]) == (5, 5, False)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_parameters_that_change_nothing_are_accepted(client):
    r = client.chat.completions.create(model="tiny", messages=GOOD["messages"], max_tokens=4, temperature=0, n=1,
                                       logprobs=False, tools=[], tool_choice="none", presence_penalty=0,
                                       frequency_penalty=0.0, logit_bias={}, response_format={"type": "text"}, user="u1")
    assert r.choices[0].finish_reason in ("stop", "length")


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
    ("role tool", {**GOOD, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    ("role not a string", {**GOOD, "messages": [{"role": ["user"], "content": "x"}]}, 400, "messages[0].role"),
    ("top_p zero", {**GOOD, "top_p": 0}, 400, "top_p"),
    ("temperature NaN", b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', 400, "temperature"),
    ("max_tokens true", {**GOOD, "max_tokens": True}, 400, "max_tokens"),
    ("seed of 2**64", {**GOOD, "seed": 2**64}, 400, "seed"),
    ("seed below -2**63", {**GOOD, "seed": -(2**63) - 1}, 400, "seed"),
    ("seed a float", {**GOOD, "seed": 1.5}, 400, "seed"),
    ("lone surrogate in content", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400,
     "messages[0].content"),
    ("lone surrogate in a text part", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     400, "messages[0].content[0].text"),
    ("lone surrogate in stop", b'{"messages": [{"role": "user", "content": "hi"}], "stop": "\\ud83d"}', 400, "stop"),
    ("nested 5000 deep", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
    ("nested 500 deep in seed", b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"[" * 500 + b"]" * 500
     + b"}", 400, "seed"),
    ("an integer of 5000 digits", b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}", 400, None),
    ("not UTF-8", b'{"messages": "\xff"}', 400, None),
    ("logprobs", {**GOOD, "logprobs": True}, 400, "logprobs"),
    ("top_logprobs", {**GOOD, "logprobs": False, "top_logprobs": 2}, 400, "top_logprobs"),
    ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("tool_choice required", {**GOOD, "tool_choice": "required"}, 400, "tool_choice"),
    ("functions", {**GOOD, "functions": [{"name": "f"}]}, 400, "functions"),
    ("response_format json", {**GOOD, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ("presence_penalty", {**GOOD, "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("logit_bias", {**GOOD, "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("five stop strings", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("empty stop string", {**GOOD, "stop": ""}, 400, "stop"),
    ("stop not a string", {**GOOD, "stop": ["a", 1]}, 400, "stop[1]"),
    ("stop too long", {**GOOD, "stop": "x" * 201}, 400, "stop"),
    ("stop an object", {**GOOD, "stop": {"a": 1}}, 400, "stop"),
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


def test_harmful_bodies_leave_the_server_answering_correctly(server, engine):
    """After every bad request above, the same greedy question still gets the same answer."""
    expected = solo(engine, GOOD["messages"], max_tokens=4)
    r = httpx.post(server + "/v1/chat/completions", json=GOOD, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert r.json()["choices"][0]["message"]["content"] == expected


# ---- arbitrary JSON: a 2xx or a 4xx, never a 5xx ----------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
TEXT = st.text(max_size=30) | st.sampled_from(["\ud800", "a\udfffb", "<|im_end|>", "", " ", "\0"])
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", 3]),
                                 "content": TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                                                            max_size=2) | JSON})
PARAMETERS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stream", "stream_options",
              "stop", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "presence_penalty",
              "logit_bias", "user", "model"]
VALUE = JSON | TEXT | st.sampled_from([0, 1, 2, 3, -1, 0.5, 2**64, True, [], {}, "\ud800", ["a"] * 5])
BODY = (st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3)},
                              optional={p: VALUE for p in PARAMETERS})
        | st.dictionaries(st.sampled_from(PARAMETERS + ["messages"]), VALUE, max_size=6) | JSON)


@pytest.fixture(scope="module")
def fuzz_server(engine):
    """The server with answers of at most 3 tokens: thousands of valid bodies stay fast."""
    srv, thread, url = serve_in_thread(create_app(engine, "tiny", limits=Limits(max_tokens=3, default_max_tokens=2)))
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=BODY)
def test_arbitrary_json_bodies_get_a_2xx_or_a_4xx(fuzz_server, body):
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes, as a client sends them
    r = httpx.post(fuzz_server + "/v1/chat/completions", content=raw, timeout=60,
                   headers={"Content-Type": "application/json"})
    event(f"status {r.status_code}")  # pytest --hypothesis-show-statistics counts them
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
    elif isinstance(body, dict) and body.get("stream") is True:
        assert r.text.endswith("data: [DONE]\n\n")
    else:
        assert r.json()["object"] == "chat.completion"


# ---- origin, host, content type, headers --------------------------------------------------------------

def post_chat(url, headers, body=GOOD):
    return httpx.post(url + "/v1/chat/completions", content=json.dumps(body).encode(), timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}", **headers})


@pytest.mark.parametrize("headers,status,code", [
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),  # the cross-origin "simple" request
    ({}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "origin_not_allowed"),
    ({"Content-Type": "application/json", "Origin": "null"}, 403, "origin_not_allowed"),
    ({"Content-Type": "application/json", "Host": "evil.example:8000"}, 403, "host_not_allowed"),  # DNS rebinding
    ({"Content-Type": "application/json", "Host": "evil.example", "Origin": "http://evil.example"}, 403,
     "host_not_allowed"),
])
def test_requests_a_foreign_page_could_make_are_refused(server, headers, status, code):
    r = post_chat(server, headers)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert r.json()["error"]["message"]
    assert post_chat(server, {"Content-Type": "application/json"}).status_code == 200


def test_the_servers_own_page_and_plain_clients_are_let_in(server):
    host = server.removeprefix("http://")
    for headers in ({"Content-Type": "application/json; charset=utf-8"},
                    {"Content-Type": "application/json", "Origin": server},
                    {"Content-Type": "application/json", "Host": host.replace("127.0.0.1", "localhost")}):
        assert post_chat(server, headers).status_code == 200, headers


def test_allow_origin_lets_that_origin_in_with_cors(engine):
    app = create_app(engine, "tiny", allowed_origins=("http://app.example",))
    srv, thread, url = serve_in_thread(app)
    try:
        pre = httpx.options(url + "/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
        r = httpx.post(url + "/v1/chat/completions", json=GOOD, headers={"Origin": "http://app.example"}, timeout=30)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.post(url + "/v1/chat/completions", json=GOOD, headers={"Origin": "http://b.example"}, timeout=30)
        assert other.status_code == 403
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_the_page_is_sent_with_a_content_security_policy(server):
    page = httpx.get(server + "/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and csp.count("'sha256-") == 2  # the page's one script and one style
    for r in (page, httpx.get(server + "/health"), httpx.get(server + "/v1/nothing")):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


# ---- logs: one traceback for a real failure, one quiet line for a client that left ---------------------

class ExplodingModerator(WordModerator):
    def check_input(self, text):
        raise RuntimeError("the moderator broke")


def tracebacks(records):
    return [r for r in records if r.exc_info]


def test_a_failure_is_one_traceback_and_a_500(engine, caplog):
    srv, thread, url = serve_in_thread(create_app(engine, "tiny", moderator=ExplodingModerator()))
    try:
        with caplog.at_level(logging.DEBUG):
            r = httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=30)
            time.sleep(0.2)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "moderator" not in r.text, "the 500 tells the client nothing of the server's insides"
        assert len(tracebacks(caplog.records)) == 1, [r.getMessage() for r in caplog.records]
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_a_client_that_hangs_up_is_one_debug_line(server, engine, caplog):
    body = {**GOOD, "max_tokens": 64, "stream": True}
    with caplog.at_level(logging.DEBUG):
        with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1]))) as s:  # the body never comes
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"messages\"")
            time.sleep(0.2)
        with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            next(r.iter_lines())  # the first chunk, then away
        for _ in range(2):  # a non-streaming client that leaves before its answer
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server + "/v1/chat/completions", json={**GOOD, "max_tokens": 64}, timeout=0.05,
                           headers={"Authorization": f"Bearer {API_KEY}"})
        time.sleep(1.0)
    assert tracebacks(caplog.records) == [], [r.getMessage() for r in caplog.records]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("went away" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert post_chat(server, {"Content-Type": "application/json"}).status_code == 200


# ---- feedback -------------------------------------------------------------------------------------------

CONVERSATION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "中国的首都是哪里？"}]


@pytest.fixture
def feedback_server(engine, tmp_path):
    log = FeedbackLog(tmp_path / "fb" / "feedback.jsonl", "tiny")
    srv, thread, url = serve_in_thread(create_app(engine, "tiny", api_key=API_KEY, feedback=log))
    yield url, log
    srv.should_exit = True
    thread.join(timeout=10)


def post_feedback(url, body):
    return httpx.post(url + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)


def test_a_preference_is_a_pair_the_rankings_reader_takes(feedback_server):
    url, log = feedback_server
    body = {"messages": CONVERSATION, "answers": ["北京。", "上海。"], "chosen": 0, "user_id": "web-0123abcd"}
    assert post_feedback(url, body).json() == {"object": "feedback", "stored": "pair"}
    assert post_feedback(url, {**body, "answers": ["Tokyo.", "北京。"], "chosen": 1}).status_code == 200
    rankings, _ = read_rankings(log.path)
    assert [(r.answers, r.ranks) for r in rankings] == [(["北京。", "上海。"], [0, 1]), (["北京。", "Tokyo."], [0, 1])]
    assert rankings[0].messages == CONVERSATION and rankings[0].user_id == "web-0123abcd" and rankings[0].kind == "chat"
    assert not thumbs_path(log.path).exists()


def test_a_thumb_is_kept_beside_and_pairs_up_with_its_opposite(feedback_server):
    url, log = feedback_server
    for answer, rating in (("北京。", "up"), ("上海。", "down"), ("东京。", "down")):
        body = {"messages": CONVERSATION, "answer": answer, "rating": rating, "user_id": "web-1"}
        assert post_feedback(url, body).json()["stored"] == "thumb"
    thumbs = [json.loads(line) for line in thumbs_path(log.path).read_text(encoding="utf-8").splitlines()]
    assert [(t["answer"], t["rating"], t["model"]) for t in thumbs] == [("北京。", "up", "tiny"), ("上海。", "down", "tiny"),
                                                                        ("东京。", "down", "tiny")]
    assert not log.path.exists(), "a thumb is not a ranking"
    pairs = pair_thumbs(thumbs)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("北京。", "上海。"), ("北京。", "东京。")]
    (log.path.parent / "from-thumbs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    rankings, _ = read_rankings(log.path.parent)  # the folder: .ndjson thumbs are not mistaken for rankings
    assert len(rankings) == 2 and rankings[0].user_id == "web-1"


BAD_FEEDBACK = [
    ("no messages", {"answer": "x", "rating": "up"}, "messages"),
    ("last turn not the user's", {"messages": CONVERSATION + [{"role": "assistant", "content": "x"}], "answer": "y",
                                  "rating": "up"}, "messages[2].role"),
    ("empty answer", {"messages": CONVERSATION, "answer": " ", "rating": "up"}, "answer"),
    ("rating 5", {"messages": CONVERSATION, "answer": "x", "rating": 5}, "rating"),
    ("three answers", {"messages": CONVERSATION, "answers": ["a", "b", "c"], "chosen": 0}, "answers"),
    ("chosen 2", {"messages": CONVERSATION, "answers": ["a", "b"], "chosen": 2}, "chosen"),
    ("chosen true", {"messages": CONVERSATION, "answers": ["a", "b"], "chosen": True}, "chosen"),
    ("the same answer twice", {"messages": CONVERSATION, "answers": ["a", "a"], "chosen": 0}, "answers"),
    ("an empty answer of two", {"messages": CONVERSATION, "answers": ["a", ""], "chosen": 0}, "answers[1]"),
    ("lone surrogate", {"messages": CONVERSATION, "answer": "\ud800", "rating": "up"}, "answer"),
    ("a user id with spaces", {"messages": CONVERSATION, "answer": "x", "rating": "up", "user_id": "a b"}, "user_id"),
    ("an unknown field", {"messages": CONVERSATION, "answer": "x", "rating": "up", "score": 3}, "score"),
    ("both kinds", {"messages": CONVERSATION, "answer": "x", "answers": ["a", "b"], "chosen": 0}, "answer"),
]


@pytest.mark.parametrize("name,body,param", BAD_FEEDBACK, ids=[b[0] for b in BAD_FEEDBACK])
def test_bad_feedback_is_a_400_naming_the_field_and_stores_nothing(feedback_server, name, body, param):
    url, log = feedback_server
    r = httpx.post(url + "/v1/feedback", content=json.dumps(body).encode(), timeout=30,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert not log.path.exists() and not thumbs_path(log.path).exists()
    ok = {"messages": CONVERSATION, "answer": "北京。", "rating": "up"}
    assert post_feedback(url, ok).status_code == 200


def test_feedback_needs_the_key_and_is_404_when_off(feedback_server, server):
    url, _ = feedback_server
    body = {"messages": CONVERSATION, "answer": "北京。", "rating": "up"}
    assert httpx.post(url + "/v1/feedback", json=body).status_code == 401
    r = httpx.post(server + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_off"


def test_a_line_cut_by_a_crash_is_removed_at_start(tmp_path):
    path = tmp_path / "feedback.jsonl"
    good = json.dumps({"messages": CONVERSATION, "chosen": "a", "rejected": "b"}) + "\n"
    path.write_text(good + '{"messages": [{"role": "us', encoding="utf-8")
    log = FeedbackLog(path, "tiny")
    assert path.read_text(encoding="utf-8") == good
    log.add("pair", {"messages": CONVERSATION, "chosen": "c", "rejected": "d"})
    assert len(read_rankings(path)[0]) == 2
    with pytest.raises(UserError, match="must end in .jsonl"):
        FeedbackLog(tmp_path / "feedback.json", "tiny")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="cannot write there"):
        FeedbackLog(tmp_path / "a-file" / "feedback.jsonl", "tiny")


def test_concurrent_feedback_lines_never_interleave(tmp_path):
    log = FeedbackLog(tmp_path / "feedback.jsonl", "tiny")
    long = "答" * 5000
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.add("pair", {"messages": CONVERSATION, "chosen": f"{i} {long}", "rejected": "b"}),
                      range(64)))
    rankings, _ = read_rankings(log.path)
    assert sorted(int(r.answers[0].split()[0]) for r in rankings) == list(range(64))
