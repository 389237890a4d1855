"""The whole loop on the tiny world: sample -> label (the gold judge as three annotators with 10% error,
through the API) -> export -> reward model -> PPO, and the annotators' agreement with the judge."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import cli, top_level

from chatforge.data.rankings import read_rankings
from chatforge.label.gold import GoldJudge
from chatforge.label.stats import dashboard
from chatforge.label.store import LabelStore, store_path
from chatforge.label.tasks import read_tasks


def label_cli(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "chatforge.cli", "label", *map(str, args)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_sample_label_export_reward_ppo(tiny_rm, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_rm, run, ignore=top_level(tiny_rm, "reward", "eval", "ppo"))
    (run / "rankings" / "rankings.jsonl").unlink()  # the judge's own rankings: people's replace them
    tasks = read_tasks(run / "rankings" / "samples.jsonl")

    out = label_cli("simulate", "--run", run, "--error", "0.1", "--seed", "3")
    assert f"{3 * len(tasks)} labels by 3 simulated annotators" in out
    store = LabelStore(store_path(run), create=False)
    gold = GoldJudge.of_run(run)
    events = store.live_events()
    stats = dashboard(store.tasks(), events, 3, now=events[-1]["created"], window=3600.0,
                      gold=gold.ranks_of(store.tasks()))
    assert stats["tasks"]["done"] == len(tasks) and stats["labels"]["needed"] == 0
    differ = sum(e["body"]["ranks"] != _dense(gold.ranks(store.task(e["task_id"]))) for e in events) / len(events)
    assert 0.0 < differ <= 0.2  # about 10% random labels (a few of which happen to equal the judge's order)
    taus = [row["tau_with_gold"] for row in stats["annotators"]]
    assert all(0.5 < tau <= 1.0 for tau in taus) and min(taus) < 1.0 and len(taus) == 3

    labels = run / "rankings" / "labels.jsonl"
    label_cli("export", "--run", run, "--out", labels)
    rankings, _ = read_rankings(labels)
    assert [r.prompt_id for r in rankings] == [t["prompt_id"] for t in tasks]
    assert {r.annotator_id for r in rankings} == {"sim-00,sim-01,sim-02"}

    cli("reward", "--run", str(run), "--rankings", str(labels))
    assert json.loads((run / "reward" / "stage_config.json").read_text())["rankings"] == str(labels)
    cli("eval", "--run", str(run), "--stage", "reward")
    result = json.loads((run / "eval" / "reward.json").read_text())
    assert result["against"] == "gold judge" and 0.0 <= result["pairwise_accuracy"]["all"] <= 1.0
    cli("ppo", "--run", str(run))
    assert (run / "ppo" / "summary.json").exists()


def _dense(ranks: list[int]) -> list[int]:
    levels = sorted(set(ranks))
    return [levels.index(r) for r in ranks]
