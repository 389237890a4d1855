"""`chatforge run` on the tiny recipe: the whole pipeline, stopped once in every stage (SIGINT and kill -9
by turns) and run again each time, against an uninterrupted run of the same seed; every stage's directory
loads in `transformers`; a finished run trains nothing and only re-renders the report."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import RECIPES, cli, same_model_file

from chatforge.stages import STAGES as REGISTRY

STAGES = [s.name for s in REGISTRY]

pytestmark = pytest.mark.slow
TRAINED = ("base", "sft", "reward", "ppo", "ppo-judge", "ppo-noptx")
# A training stage is stopped once its first checkpoint is on disk, so that the next run resumes it mid-way.
CHECKPOINTED = {"pretrain": "base", "sft": "sft", "reward": "reward", "ppo": "ppo"}


def _run(run: Path):
    return cli("run", "--run", str(run), "--recipe", str(RECIPES / "tiny.yaml"))


def _stop_in(run: Path, stage: str, sig: signal.Signals) -> tuple[int, str]:
    """Start `chatforge run`, send `sig` as soon as `stage` has begun (a training stage: once it has saved a
    checkpoint); return the exit code and the output."""
    # Ctrl-C in a terminal: SIGINT as the default, which a test runner started in the background would
    # otherwise pass down as ignored (and Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen([sys.executable, "-u", "-m", "chatforge.cli", "run", "--run", str(run), "--recipe",
                             str(RECIPES / "tiny.yaml")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, begun = [], threading.Event()

    def read():  # drain the pipe all along, or a chatty stage would block on it
        for line in proc.stdout:
            lines.append(line)
            if re.match(rf"== \[\d+/\d+\] {stage} \(", line):
                begun.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not begun.is_set() and proc.poll() is None:
        time.sleep(0.01)
    if stage in CHECKPOINTED:
        latest = run / CHECKPOINTED[stage] / "checkpoints" / "LATEST"
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and not latest.exists():
            time.sleep(0.01)
    proc.send_signal(sig)  # a no-op if the run has already ended
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return proc.returncode, "".join(lines)


def _eval(run: Path, stage: str) -> dict:
    return json.loads((run / "eval" / f"{stage}.json").read_text())


def test_tiny_pipeline_stopped_in_every_stage_matches_an_uninterrupted_run(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    outputs = []
    for i, stage in enumerate(STAGES):
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
        code, out = _stop_in(killed, stage, sig)
        outputs.append(out)
        headers = re.findall(r"== \[\d+/\d+\] ([\w-]+) \(", out)
        assert headers and headers[-1] == stage, f"{stage}: not stopped in this stage:\n{out[-3000:]}"
        if sig == signal.SIGINT and code != 0:  # 0: the stage had ended before the signal came
            assert code == 130 and "interrupted; run the same command again to resume" in out, (stage, code, out[-3000:])
        if sig == signal.SIGKILL:
            assert code in (0, -signal.SIGKILL), (stage, code)
        if stage in CHECKPOINTED:  # stopped mid-way: the next run resumes it from its checkpoint
            assert code != 0 and not (killed / CHECKPOINTED[stage] / "summary.json").exists(), stage
    # Each training stage, stopped after its first checkpoint, was resumed from it by the next run.
    resumed = "".join(outputs) + _run(killed).stdout
    for stage in CHECKPOINTED:
        assert re.search(rf"{stage}: resuming from (step|iteration) [1-9]", resumed), stage
    _run(clean)

    for stage in ("base", "sft", "ppo"):
        assert type(AutoModelForCausalLM.from_pretrained(str(killed / stage))).__name__ == "LlamaForCausalLM"
    assert AutoModelForSequenceClassification.from_pretrained(str(killed / "reward")).config.num_labels == 1
    for stage in TRAINED:
        records = [json.loads(x) for x in (killed / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records]
        assert steps == sorted(set(steps)), f"{stage}: a resumed stage logs each step once"

    # The interrupted run ends where the uninterrupted one does, bit for bit: resumption restores the data
    # order, the optimizers and the RNG, and the kernels are deterministic (dist.init).
    for stage in TRAINED:
        assert same_model_file(killed / stage, clean / stage), f"{stage}: the resumed model differs from the uninterrupted one"
    for stage in ("base", "sft", "ppo"):
        assert _eval(killed, stage)["qa"]["metrics"] == _eval(clean, stage)["qa"]["metrics"], stage
    assert _eval(killed, "reward")["pairwise_accuracy"] == _eval(clean, "reward")["pairwise_accuracy"]

    page = (killed / "report.html").read_text(encoding="utf-8")
    assert all(f"<td>{stage}</td>" in page for stage in TRAINED)

    # A finished run trains nothing: every stage skips, no model file changes, the report is rendered again.
    models = {p: p.stat().st_mtime_ns for p in killed.glob("*/model.safetensors")}
    report_before = (killed / "report.html").stat().st_mtime_ns
    again = _run(killed)
    for stage in ("world", "tokenizer", "pretrain", "sft", "sample", "rank", "reward", "ppo"):
        assert f"{stage}: " in again.stdout and "complete, skipping" in again.stdout, stage
    assert again.stdout.count("complete, skipping") == sum(not s.rerun for s in REGISTRY), again.stdout
    assert {p: p.stat().st_mtime_ns for p in killed.glob("*/model.safetensors")} == models
    assert (killed / "report.html").stat().st_mtime_ns > report_before


def _snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_failing_command_changes_nothing_in_the_run_folder(tmp_path):
    """Its recipe included: a rejected value is not saved, so the next plain command does not trip on it again; a
    command on a run that does not exist yet leaves no folder behind."""
    run = tmp_path / "run"
    cli("world", "--run", str(run), "--recipe", str(RECIPES / "tiny.yaml"))
    before = _snapshot(run)
    for args in (["sft", "--data", str(tmp_path / "missing.jsonl")], ["reward", "--preferences", str(tmp_path)],
                 ["ppo", "--prompts", str(tmp_path / "none.jsonl")], ["pretrain", "--set", "pretrain.steps=-3"]):
        out = cli(*args[:1], "--run", str(run), *args[1:], check=False)
        assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert _snapshot(run) == before, args
    fresh = tmp_path / "fresh"
    out = cli("sft", "--run", str(fresh), "--data", str(tmp_path / "missing.jsonl"), check=False)
    assert out.returncode == 2 and not fresh.exists()


def test_a_setting_that_would_change_a_finished_stage_is_refused(tmp_path):
    run = tmp_path / "run"
    cli("world", "--run", str(run), "--recipe", str(RECIPES / "tiny.yaml"))
    recipe = (run / "recipe.yaml").read_bytes()
    out = cli("run", "--run", str(run), "--set", "world.seed=5", "--set", "pretrain.steps=10", check=False)
    assert out.returncode == 2 and "world (world.seed)" in out.stderr and "pretrain" not in out.stderr.split("complete:")[1]
    assert (run / "recipe.yaml").read_bytes() == recipe
