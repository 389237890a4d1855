"""SFT: the assistant-only loss, batching, LoRA, kill -9 and resume, bad dialogue files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from chatforge.train.loop import read_metrics
from chatforge.train.loop import EpochOrder
from chatforge.scoring import masked_token_loss
from chatforge.data.dialogues import padded
from conftest import cli, kill_at_first_checkpoint, same_model_file

SFT_FAST = ["sft.steps=24", "sft.batch_size=8", "sft.micro_batch_size=4", "sft.max_len=64",
            "sft.eval_every=8", "sft.save_every=4", "sft.optim.warmup_steps=2"]


def sets(*items):
    return [x for o in items for x in ("--set", o)]


def test_masked_loss_counts_only_marked_targets():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0] = torch.tensor([0.0, math.log(3.0), 0.0])  # predicts token 1 with p = 3/5
    ids = torch.tensor([[2, 1, 0, 2]])
    mask = torch.tensor([[0, 1, 0, 0]])  # only token 1 (predicted at position 0) is trained
    total, count = masked_token_loss(logits, ids, mask)
    assert count.item() == 1
    assert total.item() == pytest.approx(-math.log(3 / 5))
    mask_all = torch.tensor([[1, 1, 1, 1]])  # the first token is never a target
    assert masked_token_loss(logits, ids, mask_all)[1].item() == 3


def test_pad_right_and_dialogue_order():
    ids, mask = padded([(torch.tensor([5, 6, 7]), torch.tensor([0, 1, 1])), (torch.tensor([8]), torch.tensor([1]))], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    order = EpochOrder(10, seed=1)
    first_epoch = order.indices(0, 5) + order.indices(1, 5)
    assert sorted(first_epoch) == list(range(10))  # every dialogue once per epoch
    assert EpochOrder(10, seed=1).indices(3, 4) == order.indices(3, 4)  # a pure function of the step


@pytest.mark.slow
def test_sft_kill_and_resume_matches_uninterrupted(tiny_copy):
    straight = tiny_copy("straight")
    cli("sft", "--run", str(straight), *sets(*SFT_FAST))
    killed = tiny_copy("killed")
    kill_at_first_checkpoint(killed / "sft", "sft", "--run", str(killed), *sets(*SFT_FAST))
    out = cli("sft", "--run", str(killed), *sets(*SFT_FAST))
    assert "resuming from step" in out.stdout
    a = {r["step"]: r for r in read_metrics(straight / "sft" / "metrics.jsonl")}
    b = {r["step"]: r for r in read_metrics(killed / "sft" / "metrics.jsonl")}
    assert sorted(a) == sorted(b) == list(range(1, 25))
    assert all(a[s]["loss"] == b[s]["loss"] for s in a) and a[24]["val/loss"] == b[24]["val/loss"]
    assert same_model_file(straight / "sft", killed / "sft")
    assert a[24]["val/loss"] < a[8]["val/loss"]  # it learns (one batch's loss is too noisy to show it)


@pytest.mark.slow
def test_lora_trains_only_adapters_and_merges_exactly(tiny_copy):
    """Two runs of one LoRA SFT: one merges the adapters into a plain model, one keeps them apart (peft's format,
    naming its base). The merged weights are the base weights plus scale · B @ A of the kept adapters, exactly; the
    kept adapter loads in transformers over its base; the checkpoints (which held only the adapters) are gone."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    merged_run, kept_run = tiny_copy("lora"), tiny_copy("lora-kept")
    train = (*SFT_FAST, "sft.steps=6", "sft.optim.lr=0.02")
    cli("sft", "--run", str(merged_run), "--lora-rank", "4", *sets(*train))
    cli("sft", "--run", str(kept_run), "--lora-rank", "4", *sets(*train, "sft.lora.keep_adapter=true"))
    base = load_file(merged_run / "base" / "model.safetensors")
    merged = load_file(merged_run / "sft" / "model.safetensors")
    assert set(base) == set(merged)  # a plain model, no adapter tensors left
    assert not (merged_run / "sft" / "checkpoints").exists()
    adapters = load_file(kept_run / "sft" / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)
    # merged weight = base weight + scale · B @ A, for every adapted projection; the rest kept its pretrained value
    scale, changed = 16.0 / 4, set()
    for key in (k for k in adapters if ".lora_A." in k):
        plain = key.split(".lora_A.")[0].replace("base_model.model.", "") + ".weight"
        a, b = adapters[key], adapters[key.replace("lora_A", "lora_B")]
        assert torch.allclose(merged[plain], base[plain] + scale * b @ a, atol=1e-6)
        changed.add(plain)
    assert all(torch.equal(merged[k], base[k]) for k in set(base) - changed)
    assert any(not torch.equal(merged[k], base[k]) for k in changed)
    assert AutoModelForCausalLM.from_pretrained(merged_run / "sft") is not None
    kept = AutoModelForCausalLM.from_pretrained(kept_run / "sft")  # transformers reads the adapter over its base
    plain = AutoModelForCausalLM.from_pretrained(merged_run / "sft")
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(kept(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)


@pytest.mark.slow
def test_bad_dialogue_file_is_named_and_skippable(tiny_copy, tmp_path):
    run = tiny_copy("bad")
    good = (run / "data" / "dialogues" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    bad = tmp_path / "mine.jsonl"
    lines = good[:]
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                                        {"role": "user", "content": "bye"}]})  # user turn last
    lines[9] = '{"messages": [ broken'
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = cli("sft", "--run", str(run), "--data", str(bad), *sets(*SFT_FAST), check=False)
    assert proc.returncode == 2 and f"{bad}:5: messages: the last turn must be the assistant's" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run / "base" / "model.safetensors").exists() and not (run / "sft" / "summary.json").exists()
    ok = cli("sft", "--run", str(run), "--data", str(bad), "--skip-invalid", *sets(*SFT_FAST, "sft.steps=2"))
    assert "skipped 2" in ok.stdout and "user_turn_last" in ok.stdout and "broken_json" in ok.stdout
