"""FSDP2 (compute.parallel=fsdp) with two processes on the CPU (gloo), against one process.

Each process holds half of every weight, gradient and optimizer state; the global batch is the same, so the loss
curve must be the one-process curve up to the order of floating-point sums (one process adds its micro-batch
gradients, two add their halves and average them). The stage directories must be plain Hugging Face directories,
and a run killed after its first checkpoint must resume into the model of a run that was not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatforge import dist
from chatforge.generate import generate
from conftest import same_model_file, top_level

FSDP = ("--set", "compute.parallel=fsdp")
# Relative difference allowed between a one-process and a two-process loss at the same step. Both runs compute the
# same sums in another order, so they drift apart by rounding only: measured at most 4e-6 over SFT's 40 steps
# and 1e-6 over the reward model's (the record itself is rounded to 1e-6). A real difference in the batch, a
# scale of 2 in the gradients or a missed reduction moves the loss by 1e-2 or more within a few steps.
LOSS_RTOL = 1e-4


def torchrun(port: int, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_torchrun_cmd(port, *args), capture_output=True, text=True, env=_env(), timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _torchrun_cmd(port: int, *args: str) -> list[str]:
    # "--": torchrun would read --run as its own --run-path
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "chatforge.cli", "--", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def kill_torchrun_at_first_checkpoint(stage_dir: Path, port: int, *args: str) -> int:
    """Start `torchrun ... chatforge ARGS`, kill -9 its workers and itself as soon as the first checkpoint is on
    disk; return that checkpoint's step. (torchrun starts each worker in a session of its own: killing torchrun
    alone would leave them running.)"""
    proc = subprocess.Popen(_torchrun_cmd(port, *args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = stage_dir / "checkpoints" / "LATEST"
    deadline = time.time() + 180
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for pid in (children.read_text().split() if children.exists() else []):
        os.kill(int(pid), signal.SIGKILL)
    proc.kill()
    proc.wait()
    assert not (stage_dir / "summary.json").exists(), "the run finished before it could be killed"
    return int(latest.read_text().split("-")[1])


def metrics(stage_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (stage_dir / "metrics.jsonl").read_text().splitlines())}


def assert_same_curve(one: dict[int, dict], two: dict[int, dict], keys: tuple[str, ...]) -> float:
    """Every step's `keys` equal within LOSS_RTOL; returns the largest relative difference."""
    assert sorted(one) == sorted(two)
    worst = 0.0
    for step, record in one.items():
        for key in keys:
            if key in record or key in two[step]:
                a, b = record[key], two[step][key]
                worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
                assert abs(a - b) <= LOSS_RTOL * abs(a), (step, key, a, b)
    return worst


@pytest.fixture(scope="module")
def fsdp_sft(tiny_base, tmp_path_factory) -> Path:
    """The tiny run's SFT stage trained by two FSDP2 processes, uninterrupted."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    shutil.copytree(tiny_base, run, ignore=top_level(tiny_base, "sft", "eval"))
    proc = torchrun(29531, "sft", "--run", str(run), *FSDP)
    assert proc.stdout.count("sft: done") == 1  # rank 0 alone saves and reports
    return run


@pytest.mark.slow
def test_sft_follows_one_process_and_saves_a_transformers_model(fsdp_sft, tiny_rm):
    from transformers import AutoModelForCausalLM

    one, two = tiny_rm / "sft", fsdp_sft / "sft"  # tiny_rm's SFT: the same recipe in one process
    worst = assert_same_curve(metrics(one), metrics(two), ("loss", "replay_loss", "val/loss"))
    print(f"largest relative loss difference, 1 process vs 2 FSDP2 processes: {worst:.2e}")
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    assert not (two / "checkpoints").exists()
    a, b = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (one, two))
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
    with torch.no_grad():
        la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
    assert torch.allclose(la, lb, rtol=0, atol=1e-3), float((la - lb).abs().max())  # logits of size ~10
    assert {n for n, _ in a.named_parameters()} == {n for n, _ in b.named_parameters()}


@pytest.mark.slow
def test_sft_killed_after_a_checkpoint_resumes_into_the_same_model(fsdp_sft, tiny_base, tmp_path):
    run = tmp_path / "killed"
    shutil.copytree(tiny_base, run, ignore=top_level(tiny_base, "sft", "eval"))
    step = kill_torchrun_at_first_checkpoint(run / "sft", 29533, "sft", "--run", str(run), *FSDP)
    assert 0 < step < 40
    # the checkpoint holds whole tensors, gathered from the shards, as a one-process checkpoint does
    whole = load_file(run / "sft" / "checkpoints" / f"step-{step:07d}" / "model.safetensors")
    base = load_file(tiny_base / "base" / "model.safetensors")
    assert {k: v.shape for k, v in whole.items()} == {k: v.shape for k, v in base.items()}
    proc = torchrun(29533, "sft", "--run", str(run), *FSDP)
    assert f"resuming from step {step}" in proc.stdout
    # Two processes on gloo repeat bit for bit: a reduce-scatter over two adds the same two numbers whichever
    # arrives first, and every other kernel is deterministic (dist.init) in its one thread.
    assert same_model_file(run / "sft", fsdp_sft / "sft")
    assert untimed(metrics(run / "sft")) == untimed(metrics(fsdp_sft / "sft"))


def untimed(records: dict[int, dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records.values()]


@pytest.mark.slow
def test_reward_and_ppo_run_under_fsdp(tiny_rm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run = tmp_path / "rm"
    shutil.copytree(tiny_rm, run, ignore=top_level(tiny_rm, "reward", "ppo", "eval"))
    torchrun(29535, "reward", "--run", str(run), *FSDP)
    one, two = tiny_rm / "reward", run / "reward"
    worst = assert_same_curve(metrics(one), metrics(two), ("loss", "accuracy", "val/accuracy"))
    print(f"reward: largest relative difference, 1 process vs 2 FSDP2 processes: {worst:.2e}")
    bias = [json.loads((d / "summary.json").read_text())["reward_bias"] for d in (one, two)]
    assert abs(bias[0] - bias[1]) < 1e-4, bias  # every process scored every SFT answer, in step
    rm = AutoModelForSequenceClassification.from_pretrained(two)
    assert rm.config.reward_bias == pytest.approx(bias[1], abs=1e-6)

    # PPO killed after its first iteration's checkpoint (its two models and two optimizers, gathered), then resumed
    ppo = ("ppo", "--run", str(run), "--set", "ppo.iterations=2", "--set", "ppo.save_every=1", *FSDP)
    assert kill_torchrun_at_first_checkpoint(run / "ppo", 29537, *ppo) == 1
    proc = torchrun(29537, *ppo)
    assert "resuming from iteration 1" in proc.stdout and proc.stdout.count("ppo: done") == 1
    summary = json.loads((run / "ppo" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 2
    records = list(metrics(run / "ppo").values())
    assert [r["step"] for r in records] == [1, 2] and all(r["ptx_loss"] > 0 for r in records)
    policy = AutoModelForCausalLM.from_pretrained(run / "ppo")
    out = policy.generate(torch.tensor([[5, 17, 42]]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 3


# ----------------------------------------------------------------------------- keeping in step, one process


def test_a_process_with_fewer_eval_batches_runs_a_dropped_one(monkeypatch):
    """17 items, batches of 8, two processes: rank 0 has 9 items (2 batches), rank 1 has 8 (1 batch); under FSDP2
    rank 1 must run a second forward, whose result does not count."""
    items = list(range(17))
    monkeypatch.setattr(dist, "sharded", lambda model: True)
    monkeypatch.setattr(dist, "_state", dist.Dist(rank=1, world_size=2))
    assert dist.eval_batches(items, 8, None) == [(items[1::2], True), (items[:8], False)]
    monkeypatch.setattr(dist, "_state", dist.Dist(rank=0, world_size=2))
    assert dist.eval_batches(items, 8, None) == [(items[0:16:2], True), ([16], True)]
    monkeypatch.setattr(dist, "sharded", lambda model: False)  # DDP, or one process: no extra forward
    monkeypatch.setattr(dist, "_state", dist.Dist(rank=1, world_size=2))
    assert dist.eval_batches(items, 8, None) == [(items[1::2], True)]


def test_generation_in_lockstep_answers_as_alone(monkeypatch):
    """A process whose rows have all ended keeps stepping while another process still generates (FSDP2: each forward
    needs every process); its answers are those it gives alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    prompts = [[1, 2, 3], [4, 5], [6]]
    free = generate(model, prompts, 12, pad_id=0, stop_ids=[49])
    # each answer ends by its third token (or by 49, where it did before): all are done early
    stops = sorted({49} | {g.tokens[2] for g in free if len(g.tokens) > 2})
    alone = generate(model, prompts, 12, pad_id=0, stop_ids=stops)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    calls = []
    # another process is still generating for its first 10 checks
    monkeypatch.setattr(dist, "all_true", lambda flag: calls.append(flag) or (flag and len(calls) > 10))
    monkeypatch.setattr(dist, "sharded", lambda m: True)
    stepped = generate(model, prompts, 12, pad_id=0, stop_ids=stops)
    assert stepped == alone
    # the prompt's forward, then one per check that found another process still generating
    assert all(g.finished for g in alone) and len(calls) == 11 and len(forwards) == 1 + 10
