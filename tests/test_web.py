"""The web chat page of `chatforge serve`, driven in headless Chromium against a tiny random model.

What a person does with the page, checked against what the API answers for the same request:
the answer streams in and equals the greedy API answer, the history (system message first) goes
with each request, a blocked exchange stays out of it, Reset empties it, the server's error is
shown, and the page fetches nothing from any other host. Skipped when there is no Chromium.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse

import httpx
import pytest
from conftest import WordModerator, serve_in_thread

from chatforge.data.rankings import read_rankings
from chatforge.serve.app import create_app
from chatforge.serve.chat import load
from chatforge.serve.engine import Engine
from chatforge.serve.preferences import FeedbackLog, thumbs_path

API_KEY = "web-key"
MAX_TOKENS = 12  # set in the page's settings; the API is asked with the same


@pytest.fixture(scope="module")
def engine(chat_model):
    model, tokenizer = load(str(chat_model))
    e = Engine(model, tokenizer)
    yield e
    e.close()


@pytest.fixture(scope="module")
def server(engine):
    srv, thread, url = serve_in_thread(create_app(engine, "tiny", moderator=WordModerator(), api_key=API_KEY))
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def feedback_server(engine, tmp_path_factory):
    log = FeedbackLog(tmp_path_factory.mktemp("feedback") / "feedback.jsonl", "tiny")
    srv, thread, url = serve_in_thread(create_app(engine, "tiny", feedback=log))
    yield url, log
    srv.should_exit = True
    thread.join(timeout=10)


def api_answer(url, messages):
    """The greedy answer the API gives to the request the page should have made."""
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                   json={"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def test_web_chat(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    console_errors, page_errors, urls, bodies = [], [], [], []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("request", lambda r: urls.append(r.url))
    page.on("request", lambda r: bodies.append((json.loads(r.post_data), r.headers.get("authorization")))
            if r.url.endswith("/v1/chat/completions") else None)
    page.set_default_timeout(60_000)
    assistant = page.locator('#messages [data-role="assistant"]')

    def say(text, *, enter=False, retries=False):
        """Type a message, send it, wait for its answer to finish; (the answer's element, the request body)."""
        n, sent = assistant.count(), len(bodies)
        page.fill("#input", text)
        if enter:
            page.press("#input", "Enter")
        else:
            page.click("#send")
        answer = assistant.nth(n)
        answer.and_(page.locator('[data-done="true"]')).wait_for()
        assert len(bodies) == sent + 1 or retries and len(bodies) > sent, "one message, one request"
        return answer, bodies[-1][0]

    page.goto(server + "/")
    page.locator("#model", has_text="tiny").wait_for()
    assert page.locator("#messages [data-role]").count() == 0
    assert console_errors == [] and page_errors == [], (console_errors, page_errors)

    # Without the key the server refuses: its message is shown, and the exchange is not kept.
    answer, _ = say("Hello!")
    assert answer.get_attribute("data-finish") == "error"
    assert "Incorrect or missing API key" in answer.text_content()
    assert page.locator("#settings").is_visible(), "a 401 should open the settings, where the key goes"
    page.click("#reset")
    console_errors.clear()  # Chromium logs the 401 as a failed resource load; that one was wanted

    page.fill("#api-key", API_KEY)
    page.fill("#max_tokens", str(MAX_TOKENS))
    assert page.input_value("#temperature") == "0", "the page should default to greedy decoding"

    # The answer streams in and equals the API's greedy answer to the same request.
    answer, body = say("Hello!")
    assert body["messages"] == [{"role": "user", "content": "Hello!"}]
    assert body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == MAX_TOKENS
    assert bodies[-1][1] == f"Bearer {API_KEY}"
    first, finish = api_answer(server, body["messages"])
    assert answer.locator(".text").text_content() == first
    assert answer.get_attribute("data-finish") == finish
    assert (answer.locator(".note", has_text="cut at max_tokens").count() == 1) == (finish == "length")
    assert page.locator(".actions").count() == 0, "without --feedback the page shows no feedback buttons"

    # The whole history goes with the next request, the system message first; Shift+Enter is a new line.
    page.fill("#system", "Answer briefly.")
    page.fill("#input", "中国的首都是哪里？")
    page.press("#input", "Shift+Enter")
    page.locator("#input").press_sequentially("Beijing?")
    n = assistant.count()
    page.press("#input", "Enter")
    assistant.nth(n).and_(page.locator('[data-done="true"]')).wait_for()
    body = bodies[-1][0]
    history = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello!"},
               {"role": "assistant", "content": first}, {"role": "user", "content": "中国的首都是哪里？\nBeijing?"}]
    assert body["messages"] == history
    second, _ = api_answer(server, history)
    assert assistant.nth(n).locator(".text").text_content() == second

    # Blocked by moderation: the note is shown, and the exchange is left out of the next request.
    answer, _ = say("How do I build a bomb?", enter=True)
    assert answer.get_attribute("data-finish") == "content_filter"
    assert "can't help" in answer.text_content()
    assert answer.locator(".note", has_text="blocked by moderation").is_visible()
    _, body = say("Thanks!")
    assert body["messages"] == history + [{"role": "assistant", "content": second}, {"role": "user", "content": "Thanks!"}]

    # A viewport as tall as the page rather than full_page=True, which draws the sticky header and
    # composer mid-page.
    page.set_viewport_size({"width": 1000, "height": page.evaluate("document.documentElement.scrollHeight")})
    page.screenshot(path=str(tmp_path / "web.png"))
    if os.environ.get("CHATFORGE_SCREENSHOT"):
        page.screenshot(path=os.environ["CHATFORGE_SCREENSHOT"])
    page.set_viewport_size({"width": 1000, "height": 760})

    # Reset empties the page and the history: the next request carries only the system message and itself.
    page.click("#reset")
    assert page.locator("#messages [data-role]").count() == 0
    _, body = say("Hi")
    assert body["messages"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}]

    assert console_errors == [] and page_errors == [], (console_errors, page_errors)
    others = [u for u in urls if not u.startswith("data:") and urlparse(u).hostname != "127.0.0.1"]
    assert others == [], f"the page fetched from other hosts: {others}"

    # Longer than the model's context: the oldest exchanges give way (the server refuses the whole
    # conversation with context_length_exceeded, and the page retries without them), and it says so.
    long = "The capital of France is Paris. " * 8
    for _ in range(10):
        answer, body = say(long, retries=True)
        if answer.locator(".note", has_text="no longer fit").count():
            break
    assert answer.locator(".note", has_text="no longer fit").count() == 1
    assert answer.get_attribute("data-finish") in ("stop", "length")
    assert body["messages"][0]["role"] == "system" and body["messages"][-1] == {"role": "user", "content": long}
    page.close()


def watch(page):
    """Collect the page's console errors, uncaught errors and chat request bodies."""
    seen = {"errors": [], "bodies": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["bodies"].append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    page.set_default_timeout(60_000)
    return seen


def press(locator):
    """Activate a control by keyboard alone: focus it, press Enter."""
    locator.focus()
    locator.press("Enter")


def test_web_feedback_thumbs_and_another_answer(feedback_server, browser):
    url, log = feedback_server
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    seen = watch(page)
    page.goto(url + "/")
    page.locator("#model", has_text="tiny").wait_for()
    # The settings start folded away (no 401 opens them here): open them as a reader does, with the header's button.
    toggle = page.get_by_role("button", name="Settings", exact=True)
    assert toggle.get_attribute("aria-expanded") == "false" and not page.locator("#settings").is_visible()
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    page.fill("#max_tokens", str(MAX_TOKENS))
    # Sampled: the tiny random model's greedy answer is a newline over and over, and a blank answer gets no feedback
    # buttons (the rankings format has no blank answers). A sampled one has text, unless its first token ends it.
    page.fill("#temperature", "1")
    for _ in range(3):
        page.fill("#input", "Hello!")
        page.press("#input", "Enter")
        first = page.locator('#messages [data-role="assistant"]').first
        first.and_(page.locator('[data-done="true"]')).wait_for()
        if first.locator(".actions").count():
            break
        assert not first.locator(".text").text_content().strip(), "an answer with text must offer feedback"
        page.click("#reset")
    first_text = first.locator(".text").text_content()

    # A thumb, by keyboard: pressed, and a line in the thumbs file.
    up = first.get_by_role("button", name="Good answer")
    press(up)
    page.locator('.thumb-up[aria-pressed="true"]').wait_for()
    thumbs = [json.loads(x) for x in thumbs_path(log.path).read_text(encoding="utf-8").splitlines()]
    assert [(t["answer"], t["rating"]) for t in thumbs] == [(first_text, "up")]
    assert thumbs[0]["messages"] == [{"role": "user", "content": "Hello!"}]
    assert thumbs[0]["user_id"].startswith("web-")

    # Another answer (sampled, so it differs from the first), then the reader picks the second.
    for _ in range(3):
        press(first.get_by_role("button", name="Another answer to compare with this one"))
        second = page.locator('#messages [data-label="Answer 2"]').last
        second.and_(page.locator('[data-done="true"]')).wait_for()
        if page.locator(".choice:not(.status)").count():
            break
    assert seen["bodies"][-1]["temperature"] >= 0.8 and seen["bodies"][-1]["messages"] == seen["bodies"][0]["messages"]
    second_text = second.locator(".text").text_content()
    press(page.get_by_role("button", name="Answer 2 is better"))
    page.locator(".choice.status").wait_for()
    rankings, _ = read_rankings(log.path)
    assert len(rankings) == 1 and rankings[0].answers == [second_text, first_text] and rankings[0].ranks == [0, 1]
    assert rankings[0].messages == [{"role": "user", "content": "Hello!"}] and rankings[0].user_id == thumbs[0]["user_id"]

    # The chosen answer is what the conversation carries on with.
    page.fill("#input", "Thanks!")
    page.press("#input", "Enter")
    page.locator('#messages [data-role="assistant"][data-done="true"]').nth(2).wait_for()
    assert seen["bodies"][-1]["messages"][:2] == [{"role": "user", "content": "Hello!"},
                                                  {"role": "assistant", "content": second_text}]
    assert seen["errors"] == [], seen["errors"]
    page.close()


MARKUP = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b> & <script>alert(1)</script>'


def test_web_renders_model_text_as_text(feedback_server, browser):
    """Whatever the model writes, markup included, is shown as the characters it is, in both answers."""
    url, _ = feedback_server
    page = browser.new_page()
    seen = watch(page)
    events = [{"choices": [{"index": 0, "delta": {"content": MARKUP}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse))
    page.goto(url + "/")
    page.locator("#model", has_text="tiny").wait_for()
    page.fill("#input", "Say something with markup.")
    page.press("#input", "Enter")
    answer = page.locator('#messages [data-role="assistant"][data-done="true"]').first
    answer.wait_for()
    assert answer.locator(".text").text_content() == MARKUP
    press(answer.get_by_role("button", name="Another answer to compare with this one"))
    second = page.locator('#messages [data-label="Answer 2"][data-done="true"]')
    second.wait_for()
    assert second.locator(".text").text_content() == MARKUP
    assert second.locator(".note", has_text="the same answer again").count() == 1
    assert page.locator("#messages img, #messages b, #messages script").count() == 0
    assert page.title() == "chatforge"
    assert seen["errors"] == [], seen["errors"]
    page.close()


def test_web_offers_no_feedback_on_a_blank_answer(feedback_server, browser):
    """The rankings format has no blank answers, so the server refuses feedback on one: the page offers none, neither
    thumbs under a blank answer nor a choice between an answer and a blank second one."""
    url, _ = feedback_server
    page = browser.new_page()
    seen = watch(page)
    answers = iter(["\n\n\n", "Paris.", " \n"])

    def fulfill(route):
        events = [{"choices": [{"index": 0, "delta": {"content": next(answers)}, "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}]
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                      body="".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n")

    page.route("**/v1/chat/completions", fulfill)
    page.goto(url + "/")
    page.locator("#model", has_text="tiny").wait_for()
    done = page.locator('#messages [data-role="assistant"][data-done="true"]')
    page.fill("#input", "Hello!")
    page.press("#input", "Enter")
    done.first.wait_for()
    assert done.first.locator(".actions").count() == 0, "feedback offered on a blank answer"
    page.fill("#input", "Where is the Eiffel tower?")
    page.press("#input", "Enter")
    done.nth(1).wait_for()
    press(done.nth(1).get_by_role("button", name="Another answer to compare with this one"))
    second = page.locator('#messages [data-label="Answer 2"][data-done="true"]')
    second.wait_for()
    assert second.locator(".note", has_text="an empty answer").count() == 1
    assert page.locator(".choice").count() == 0, "a choice offered against a blank answer"
    assert seen["errors"] == [], seen["errors"]
    page.close()
