"""report.html: rendered from a tiny run with every stage, self-contained, and shown by headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import cli, top_level

pytestmark = pytest.mark.slow
STAGES = ("base", "sft", "reward", "ppo")


@pytest.fixture(scope="module")
def report(tiny_rm, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_rm, run, ignore=top_level(tiny_rm, "ppo", "eval"))
    cli("ppo", "--run", str(run))
    for stage in STAGES:
        cli("eval", "--run", str(run), "--stage", stage)
    out = cli("report", "--run", str(run))
    assert "report.html" in out.stdout
    return run / "report.html"


def test_report_names_every_stage_and_needs_nothing_else(report):
    page = report.read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"<td>{stage}</td>" in page, stage  # the stage table
    for heading in ("Evaluation of each model", "PPO against SFT", "Reward model", "Training curves",
                    "answered by each model", "Recipe"):
        assert heading in page, heading
    assert "Held-out requests on the wrong side (refused / asked): <b>base</b>:" in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) >= 5  # loss curves, RM bars, PPO plots
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page), "the page fetches nothing"
    assert page.count("<tr>") > 20  # metrics rows and the held-out prompts side by side


def test_report_renders_in_chromium(report, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri())
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.getBoundingClientRect().height])")
    height = page.evaluate("document.body.scrollHeight")
    page.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert images and all(w > 100 and h > 50 for w, h in images), images  # every plot decoded and shown
    assert height > 2000 and shot.read_bytes()[:4] == b"\x89PNG"
