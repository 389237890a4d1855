"""Shared fixtures: a small synthetic corpus and a trained tokenizer, independent of the built-in world."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A pretraining run small enough for seconds on two CPU cores.
TINY_PRETRAIN = [
    "model.d_model=64", "model.d_ff=128", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
    "model.max_seq_len=64", "tokenizer.vocab_size=400",
    "pretrain.batch_size=8", "pretrain.micro_batch_size=4", "pretrain.seq_len=32", "pretrain.optim.warmup_steps=5",
    "pretrain.eval_every=10", "pretrain.eval_sequences=8", "pretrain.save_every=10", "pretrain.sample_every=0",
    "pretrain.compile=false", "pretrain.mixture={}",
]

CAPITALS = {"France": ("Paris", "法国", "巴黎"), "China": ("Beijing", "中国", "北京"), "Japan": ("Tokyo", "日本", "东京")}


def write_corpus(corpus_dir: Path, docs_per_source: int = 200, seed: int = 0):
    rng = random.Random(seed)
    for source in ("encyclopedia", "forum"):
        d = corpus_dir / source
        d.mkdir(parents=True, exist_ok=True)
        for name, n in (("train-00000.jsonl", docs_per_source), ("val.jsonl", 10)):
            with open(d / name, "w", encoding="utf-8") as f:
                for i in range(n):
                    en, (cap, zh, zcap) = rng.choice(list(CAPITALS.items()))
                    text = (f"The capital of {en} is {cap}. {zh}的首都是{zcap}。" if source == "encyclopedia"
                            else f"Q: capital of {en}? A: {cap}! #{i}")
                    f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def cli(*args: str, env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "chatforge.cli", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"chatforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def corpus_run(tmp_path_factory) -> Path:
    """A run directory with data/corpus and a trained tokenizer; copy it before training in it."""
    run = tmp_path_factory.mktemp("corpus") / "run"
    write_corpus(run / "data" / "corpus")
    cli("tokenizer", "--run", str(run), *[x for o in TINY_PRETRAIN for x in ("--set", o)])
    return run


@pytest.fixture
def fresh_run(corpus_run, tmp_path):
    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(corpus_run, dst)
        return dst

    return make


def same_model_file(a: Path, b: Path) -> bool:
    """Whether two stage directories hold byte-identical model.safetensors: runs repeat bit for bit."""
    return (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def overrides(*extra: str) -> list[str]:
    return [x for o in (*TINY_PRETRAIN, *extra) for x in ("--set", o)]


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny built-in world, its tokenizer and a pretrained base model (the tiny recipe, seconds)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    for stage in ("world", "tokenizer", "pretrain"):
        cli(stage, "--run", str(run), "--recipe", str(RECIPES / "tiny.yaml"))
    return run


def top_level(root: Path, *prefixes: str):
    """A copytree `ignore` that leaves out the stage folders of `root` starting with a prefix, and nothing deeper
    (ignore_patterns would also drop data/eval and data/prompts/ppo.jsonl)."""
    return lambda folder, names: [n for n in names if Path(folder) == Path(root) and n.startswith(prefixes)]


@pytest.fixture
def tiny_copy(tiny_base, tmp_path):
    """A private copy of the tiny run, without the stages after pretraining."""
    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_base, dst, ignore=top_level(tiny_base, "sft", "eval"))
        return dst

    return make


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory, tiny_base):
    """The tiny run through the reward model (SFT, sampling, ranking, RM), made once; copy it before training in it."""
    run = tmp_path_factory.mktemp("rm") / "run"
    shutil.copytree(tiny_base, run, ignore=top_level(tiny_base, "sft", "eval"))
    for stage in ("sft", "sample", "rank", "reward"):
        cli(stage, "--run", str(run))
    return run


def kill_at_first_checkpoint(stage_dir: Path, *args: str) -> int:
    """Start `chatforge ARGS`, kill -9 it as soon as its first checkpoint is on disk; return that step."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "chatforge.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = stage_dir / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (stage_dir / "summary.json").exists(), "the run finished before it could be killed"
    return int(latest.read_text().split("-")[1])


CHAT_TEXTS = [
    "Hello! How can I help you today?", "The capital of France is Paris.", "中国的首都是北京。",
    "Sorry, I can't help with that.", "What is the capital of Japan? Tokyo.", "谢谢！不客气。",
] * 20


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> Path:
    """A randomly initialised tiny chat model directory (our tokenizer and template): seconds to make,
    enough to test serving, where only the plumbing matters, not the answers."""
    from chatforge.config import ModelConfig
    from chatforge.model import build_model, save_pretrained
    from chatforge.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("chat") / "model"
    tokenizer = train_tokenizer(CHAT_TEXTS, out, vocab_size=300)
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=256),
                        tokenizer, seed=0)
    save_pretrained(model, tokenizer, out)
    return out


class WordModerator:
    """A stand-in moderator that blocks input containing `bad_in` and output containing `bad_out`: for
    testing how chat, server and page handle a block, not the rules (tests/test_moderation.py does those)."""

    class Verdict:
        def __init__(self, allowed: bool):
            self.allowed = allowed

    def __init__(self, bad_in: str = "bomb", bad_out: str | None = None):
        self.bad_in, self.bad_out = bad_in, bad_out

    def check_input(self, text):
        return self.Verdict(self.bad_in not in text)

    def check_output(self, text, final=False):
        return self.Verdict(self.bad_out is None or self.bad_out not in text)

    def settled(self, text):
        return len(text)

    def message(self, text):
        return "Sorry, I can't help with that request."


def serve_in_thread(app):
    """Run a FastAPI app with uvicorn on a free local port: (server, thread, base url)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    return server, thread, f"http://127.0.0.1:{port}"


CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright; skips, saying why, where there is none."""
    from playwright.sync_api import Error, sync_playwright

    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.skip("no Chromium: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        except Error as e:
            pytest.skip(f"Playwright cannot launch {path}: {str(e).splitlines()[0]}")
        yield b
        b.close()
