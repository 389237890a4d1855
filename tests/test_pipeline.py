"""`chatforge run` on the tiny recipe: the whole pipeline, killed in the middle and resumed, against an
uninterrupted run of the same seed; every stage's directory loads in `transformers`; a finished run
trains nothing and only re-renders the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPES, cli, kill_at_first_checkpoint

pytestmark = pytest.mark.slow
TRAINED = ("base", "sft", "reward", "ppo")


def _run(run: Path):
    return cli("run", "--run", str(run), "--recipe", str(RECIPES / "tiny.yaml"))


def _eval(run: Path, stage: str) -> dict:
    return json.loads((run / "eval" / f"{stage}.json").read_text())


def test_tiny_pipeline_resumes_after_a_kill_and_matches_an_uninterrupted_run(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    step = kill_at_first_checkpoint(killed / "sft", "run", "--run", str(killed), "--recipe", str(RECIPES / "tiny.yaml"))
    assert step >= 1 and (killed / "base" / "summary.json").exists() and not (killed / "ppo").exists()
    out = _run(killed)
    assert "pretrain: " in out.stdout and "complete, skipping" in out.stdout  # world, tokenizer, pretrain were done
    assert f"resuming from step {step}" in out.stdout + out.stderr
    _run(clean)

    for stage in ("base", "sft", "ppo"):
        assert type(AutoModelForCausalLM.from_pretrained(str(killed / stage))).__name__ == "LlamaForCausalLM"
    assert AutoModelForSequenceClassification.from_pretrained(str(killed / "reward")).config.num_labels == 1
    for stage in TRAINED:
        records = [json.loads(x) for x in (killed / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records]
        assert steps == sorted(set(steps)), f"{stage}: a resumed stage logs each step once"

    # The interrupted run ends where the uninterrupted one does: resumption restores data order and RNG.
    for stage in ("base", "sft", "ppo"):
        a, b = _eval(killed, stage)["qa"]["metrics"], _eval(clean, stage)["qa"]["metrics"]
        assert a["gold_reward"] == pytest.approx(b["gold_reward"], abs=0.1), stage
    a, b = _eval(killed, "reward"), _eval(clean, "reward")
    assert a["pairwise_accuracy"]["all"] == pytest.approx(b["pairwise_accuracy"]["all"], abs=0.1)

    page = (killed / "report.html").read_text(encoding="utf-8")
    assert all(f"<td>{stage}</td>" in page for stage in TRAINED)

    # A finished run trains nothing: every stage skips, no model file changes, the report is rendered again.
    models = {p: p.stat().st_mtime_ns for p in killed.glob("*/model.safetensors")}
    report_before = (killed / "report.html").stat().st_mtime_ns
    again = _run(killed)
    for stage in ("world", "tokenizer", "pretrain", "sft", "sample", "rank", "reward", "ppo"):
        assert f"{stage}: " in again.stdout and "complete, skipping" in again.stdout, stage
    assert again.stdout.count("complete, skipping") == 8, again.stdout
    assert {p: p.stat().st_mtime_ns for p in killed.glob("*/model.safetensors")} == models
    assert (killed / "report.html").stat().st_mtime_ns > report_before
