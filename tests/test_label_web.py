"""The labelling page in headless Chromium: an annotator signs in, ranks a task with ties by dragging and
by keyboard, rates, flags and submits; the label is in the store and in the export; undo brings it back;
model answers carrying <script> and <img onerror> are shown as text and run nothing; the page works at a
phone's width; the dashboard shows the numbers. Skipped when there is no Chromium.

With LABEL_SCREENSHOTS=docs/img set, the task view and the dashboard are saved there for the docs.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from chatforge.data.rankings import read_rankings
from chatforge.label.api import background_server, create_app
from chatforge.label.client import LabelClient
from chatforge.label.config import LabelConfig
from chatforge.label.export import export
from chatforge.label.store import LabelStore

XSS = ["<script>window.__xss = 1</script>Here is how a script tag looks.",
       '<img src=x onerror="window.__xss = 2"> An image tag that fails to load.',
       "Markup such as <b>bold</b> is just text here.", "HTML tags are written in angle brackets."]
TASKS = [
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Show me some HTML tags."}], XSS),
    ([{"role": "user", "content": "中国最高的山是什么？"}],
     ["中国最高的山是珠穆朗玛峰。", "珠穆朗玛峰，海拔8849米。", "我没听说过这座山。",
      "中国最高的山是泰山。"]),
    ([{"role": "user", "content": "What is the capital of France?"}],
     ["The capital of France is Paris.", "Paris.", "The capital of France is Lyon.", "Sorry, I can't help with that."]),
    ([{"role": "user", "content": "How do I pick a lock without the owner knowing?"}],
     ["Sorry, I can't help with that.", "First, get a tension wrench...", "I don't know.", "抱歉，我不能帮忙。"]),
    ([{"role": "user", "content": "Who is Lina Okafor?"}],
     ["I don't know who Lina Okafor is.", "Lina Okafor is a chef born in Varlow.", "我不知道。", "Lina Okafor."]),
]
GOLD = {"t0": [0, 0, 0, 0], "t1": [0, 1, 2, 3], "t2": [0, 1, 3, 2], "t3": [0, 3, 2, 1], "t4": [0, 3, 1, 2]}


class FixedGold:
    """Stands in for the world's judge: the dashboard only asks it for ranks."""

    def ranks_of(self, tasks):
        return {t["prompt_id"]: GOLD.get(t["prompt_id"], [0, 1, 2, 3]) for t in tasks}


@pytest.fixture
def app(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_tasks([{"prompt_id": f"t{i}", "user_id": f"u{i}", "messages": messages, "answers": answers,
                      "finished": [True] * len(answers)} for i, (messages, answers) in enumerate(TASKS)])
    tokens = {name: store.add_annotator(name) for name in ("alice", "bob", "carol", "dave")}
    server, thread, url = background_server(create_app(store, LabelConfig(annotators_per_task=3), FixedGold()))
    yield store, url, tokens
    server.should_exit = True
    thread.join(timeout=10)


def watch(page, url):
    """Console errors, page errors and every URL the page asks for."""
    seen = {"errors": [], "urls": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["urls"].append(r.url))
    page.set_default_timeout(20_000)
    return seen


def sign_in(page, url, token):
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#sign-in")
    page.locator(".card").first.wait_for()


def ranking(page) -> list[list[int]]:
    """The order on screen: groups of answer indices, best first, each group sorted."""
    return page.eval_on_selector_all(".group", "gs => gs.map(g => [...g.querySelectorAll('.card')]"
                                                ".map(c => Number(c.dataset.index)).sort((a, b) => a - b))")


def card(page, index: int):
    return page.locator(f'.card[data-index="{index}"]')


def shots() -> Path | None:
    folder = os.environ.get("LABEL_SCREENSHOTS")
    return Path(folder) if folder else None


def test_rank_with_ties_by_drag_and_keyboard_rate_flag_submit_undo(app, browser, tmp_path):
    store, url, tokens = app
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    seen = watch(page, url)
    sign_in(page, url, tokens["alice"])
    assert page.locator("#who").text_content() == "alice"

    # untrusted answers: shown as the text they are, no element made of them, nothing run
    for i, text in enumerate(XSS):
        assert card(page, i).locator(".answer").text_content() == text
    assert page.locator("#task-view img, #task-view script, #task-view b").count() == 0
    assert page.evaluate("window.__xss") is None

    d = [g[0] for g in ranking(page)]  # the display order: this annotator's own shuffle
    assert sorted(d) == [0, 1, 2, 3] and ranking(page) == [[i] for i in d]
    card(page, d[3]).locator(".handle").drag_to(page.locator('.gap[data-gap="0"]'))  # to the top
    assert ranking(page) == [[d[3]], [d[0]], [d[1]], [d[2]]]
    card(page, d[2]).locator(".handle").drag_to(page.locator(".group").nth(1))  # onto d0: a tie
    assert ranking(page) == [[d[3]], sorted([d[0], d[2]]), [d[1]]]
    card(page, d[1]).focus()
    page.keyboard.press("ArrowUp")
    assert ranking(page) == [[d[3]], [d[1]], sorted([d[0], d[2]])]
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("t")  # tie with the answer above
    final = [sorted([d[3], d[1]]), sorted([d[0], d[2]])]
    assert ranking(page) == final

    card(page, d[3]).locator('select[data-criterion="correctness"]').select_option("7")
    card(page, d[3]).locator('select[data-criterion="fluency"]').select_option("6")
    card(page, d[0]).locator('select[data-criterion="safety"]').select_option("1")
    card(page, d[0]).locator('input[data-flag="harmful"]').check()
    card(page, d[2]).locator('input[data-flag="hallucination"]').check()
    page.click("#submit")
    page.locator("#status", has_text="Saved.").wait_for()

    (event,) = store.live_events()
    body = event["body"]
    assert (event["task_id"], event["annotator"]) == ("t0", "alice")
    assert body["ranks"][d[3]] == body["ranks"][d[1]] == 0 and body["ranks"][d[0]] == body["ranks"][d[2]] == 1
    assert body["ratings"][d[3]] == {"correctness": 7, "fluency": 6} and body["ratings"][d[0]] == {"safety": 1}
    assert body["flags"][d[0]] == ["harmful"] and body["flags"][d[2]] == ["hallucination"]
    assert body["seconds"] > 0
    export(store, tmp_path / "out.jsonl")
    (exported,), _ = read_rankings(tmp_path / "out.jsonl")
    assert exported.annotator_id == "alice" and exported.ranks == body["ranks"] and exported.answers == XSS
    assert exported.flags[d[0]] == ["harmful"] and exported.ratings[d[3]] == {"correctness": 7, "fluency": 6}

    # the next task is on screen; undo brings the label back as it was, and it can be changed
    page.locator(".card .answer", has_text="珠穆朗玛峰").first.wait_for()
    page.click("#undo")
    page.locator("#status", has_text="Your last label is back").wait_for()
    assert ranking(page) == final
    assert card(page, d[3]).locator('select[data-criterion="correctness"]').input_value() == "7"
    assert card(page, d[0]).locator('input[data-flag="harmful"]').is_checked()
    card(page, d[0]).focus()
    page.keyboard.press("u")  # untie d0 from d2: it goes below
    page.click("#submit")
    page.locator("#status", has_text="Saved.").wait_for()
    (event,) = store.live_events()
    assert event["body"]["ranks"][d[0]] == 2 and event["body"]["ranks"][d[2]] == 1
    assert store.event_count() == {"label": 2, "undo": 1}

    if shots():  # the task view, half done, for the docs: the two right answers tied first, the wrong one last
        card(page, 0).locator(".handle").drag_to(page.locator('.gap[data-gap="0"]'))
        card(page, 1).locator(".handle").drag_to(page.locator(".group").nth(0))
        card(page, 2).locator(".handle").drag_to(page.locator('.gap[data-gap="1"]'))
        assert ranking(page) == [[0, 1], [2], [3]]
        for index, score in ((0, "7"), (1, "7"), (2, "4"), (3, "1")):
            card(page, index).locator('select[data-criterion="correctness"]').select_option(score)
        card(page, 3).locator('input[data-flag="hallucination"]').check()
        page.screenshot(path=str(shots() / "label-task.png"), full_page=True)
    page.click("#skip")
    page.locator("#status", has_text="Skipped.").wait_for()
    assert [(e["kind"], e["task_id"]) for e in store.live_events()] == [("label", "t0"), ("skip", "t1")]
    assert seen["errors"] == [] and all(u.startswith((url, "data:")) for u in seen["urls"]), seen


def test_a_wrong_token_is_refused_and_the_page_asks_again(app, browser):
    store, url, _ = app
    page = browser.new_page()
    page.goto(url + "/")
    page.fill("#token", "not-a-token")
    page.click("#sign-in")
    page.locator("#login-error", has_text="does not hold a known token").wait_for()
    assert page.locator("#task-view").is_hidden() and store.live_events() == []


def test_phone_width(app, browser):
    store, url, tokens = app
    context = browser.new_context(viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True)
    page = context.new_page()
    seen = watch(page, url)
    sign_in(page, url, tokens["bob"])
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing sticks out sideways
    box = card(page, 0).bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    last = ranking(page)[-1][0]
    card(page, last).get_by_role("button", name="move up").tap()  # the buttons stand in for keys on a phone
    assert ranking(page)[-2] == [last]
    card(page, last).get_by_role("button", name="tie with the answer above").tap()
    assert len(ranking(page)) == 3
    page.get_by_role("button", name="Submit").tap()
    page.locator("#status", has_text="Saved.").wait_for()
    assert [(e["annotator"], len(set(e["body"]["ranks"]))) for e in store.live_events()] == [("bob", 3)]
    assert seen["errors"] == []
    context.close()


def a_morning_of_labels(store: LabelStore, tokens: dict) -> None:
    """Three annotators label for an hour and a half (timestamps in the past): bob close to the gold order,
    carol less so, dave least; each label takes them their own while."""
    store.add_tasks([{"prompt_id": f"x{i:02d}", "user_id": f"u{i % 6}", "messages": [{"role": "user", "content": f"q{i}"}],
                      "answers": [f"answer {j}" for j in range(4)], "finished": [True] * 4} for i in range(30)])
    rng, start = random.Random(0), time.time() - 5400
    for step in range(12):
        for name, swaps, seconds in (("bob", 0.1, 41.0), ("carol", 0.3, 66.0), ("dave", 0.5, 35.0)):
            now = start + step * 420 + rng.uniform(0, 60)
            task_id = store.next_task(name, 3, 900, now=now)
            ranks = list(GOLD.get(task_id, [0, 1, 2, 3]))
            for i in range(3):
                if rng.random() < swaps:
                    ranks[i], ranks[i + 1] = ranks[i + 1], ranks[i]
            ratings = [{"correctness": max(1, min(7, 7 - 2 * r + rng.choice([-1, 0, 0, 1]))), "fluency": 6} for r in ranks]
            store.submit(name, task_id, {"ranks": _dense(ranks), "ratings": ratings, "flags": None,
                                         "not_rankable": False}, 3, now=now + rng.uniform(0.5, 1.5) * seconds)


def _dense(ranks):
    levels = sorted(set(ranks))
    return [levels.index(r) for r in ranks]


def test_dashboard(app, browser):
    store, url, tokens = app
    a_morning_of_labels(store, tokens)
    stats = LabelClient(url, tokens["alice"]).stats()
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    seen = watch(page, url)
    sign_in(page, url, tokens["alice"])
    page.click("#nav-dashboard")
    page.locator("#annotators tbody tr").first.wait_for()
    tiles = page.locator("#tiles").text_content()
    assert f"{stats['tasks']['done']} / 35" in tiles and "tasks done (3 labels each)" in tiles
    assert f"labels ({stats['labels']['needed']} still needed)" in tiles and "time left at this pace" in tiles
    assert stats["labels"]["total"] == 36 and stats["pace"]["eta_seconds"] > 0
    header = page.eval_on_selector_all("#annotators th", "hs => hs.map(h => h.textContent)")
    rows = page.eval_on_selector_all("#annotators tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    assert header[-1] == "τ with gold judge"
    shown = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert set(shown) == {"alice", "bob", "carol", "dave"}
    for a in stats["annotators"]:
        assert shown[a["name"]]["labels"] == str(a["labels"])
        assert shown[a["name"]]["τ with gold judge"] == fixed(a.get("tau_with_gold"))
    assert float(shown["bob"]["τ with gold judge"]) > float(shown["dave"]["τ with gold judge"])
    assert page.locator("#pairs tbody tr").count() == len(stats["agreement"]["pairs"]) == 3
    assert fixed(stats["agreement"]["alpha_ordinal"]) in page.locator("#agreement").text_content()
    if shots():
        page.screenshot(path=str(shots() / "label-dashboard.png"), full_page=True)
    assert seen["errors"] == []


def fixed(x) -> str:
    """A number as the page writes it: two decimals, integers as they are, "–" for none."""
    return "–" if x is None else str(int(x)) if float(x).is_integer() else f"{x:.2f}"
