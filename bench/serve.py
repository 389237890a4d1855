"""Serving throughput: N concurrent streaming requests against the same N one after another.

    python bench/serve.py [--model runs/laptop/sft] [--concurrent 32] [--max-tokens 48] [--repeats 3]

Starts `chatforge serve` in its own process (a free local port, moderation off so only generation
is measured; clients in this process would fight the server for Python's GIL) and sends chat
requests with streaming on, from N client threads at once, then the same N sequentially. The
questions are everyday how-to requests and facts of mixed lengths (a few tokens to most of a small
model's context), so a batch pads its prompts and its longest prompt leaves the others less room
than they use alone; each answer is greedy, up to --max-tokens, and the token count is what the
server reports in `usage`. Checks that every concurrent answer equals its sequential twin (text,
finish reason and token count: a greedy answer does not depend on its neighbours) and prints JSON:
generated tokens/s both ways, their ratio, and model FLOP/s against the fp32 matmul ceiling
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.perf import matmul_ceiling  # noqa: E402

QUESTIONS = [
    "Hi!", "怎么学会游泳？", "How do I clean a backpack?", "日本的首都是哪里？", "What is the capital of France?",
    "Give me some tips to prepare for an exam.", "我该怎么整理我的衣柜？衣服太多了，每次找衣服都很麻烦，你有什么好办法吗？",
    ("My friend's birthday is next week. She likes books, tea and long walks in the park, and I do not have much "
     "money. What gift should I choose for her, and how should I wrap it so that it looks nice?"),
    ("I am moving to a new city next month for work. I do not know anyone there, the flat is small, and I have "
     "never cooked for myself. How can I make friends, keep the flat tidy and learn to cook simple meals?"),
    "帮我想想怎么给我的朋友挑一件礼物。她喜欢看书、喝茶，也喜欢在公园里散步。我的钱不多，下个星期就是她的生日了。",
    "How can I grow tomatoes at home?", "中国的首都是哪里？",
]


def start(model: str):
    """`chatforge serve MODEL` in a child process; returns (process, base url) once /health answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "serve", model, "--port", str(port),
                             "--no-moderation", "--name", "m"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def ask(url: str, question: str, max_tokens: int) -> tuple[str, str, int, int]:
    """One streaming request: (text, finish reason, completion tokens, prompt tokens; from the usage chunk)."""
    import httpx

    body = {"model": "m", "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    text, finish, usage = "", None, {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
            usage = chunk.get("usage") or usage
    return text, finish, usage["completion_tokens"], usage["prompt_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/laptop/sft", help="a chat model directory (default: runs/laptop/sft)")
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from chatforge.model import load_causal_lm, matmul_params

    model = load_causal_lm(Path(args.model))  # only for its size and context
    context = model.config.max_position_embeddings
    server, url = start(args.model)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.concurrent)]
    ask(url, questions[0], 4)  # warm-up

    runs = {"concurrent": [], "sequential": []}
    same = []  # per repeat: concurrent answers equal to their sequential twin (text, finish, tokens)
    ceilings = []
    for _ in range(args.repeats):
        ceilings.append(matmul_ceiling())
        t0 = time.perf_counter()
        seq = [ask(url, q, args.max_tokens) for q in questions]
        runs["sequential"].append((time.perf_counter() - t0, sum(a[2] for a in seq)))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            con = list(pool.map(lambda q: ask(url, q, args.max_tokens), questions))
        runs["concurrent"].append((time.perf_counter() - t0, sum(a[2] for a in con)))
        same.append(sum(a == b for a, b in zip(seq, con)))
    server.terminate()
    server.wait(timeout=30)

    tps = {k: statistics.median(n / s for s, n in v) for k, v in runs.items()}
    ceiling = statistics.median(ceilings)
    flops_per_token = 2 * matmul_params(model)  # forward only, attention over short contexts left out
    print(json.dumps({
        "bench": "serve", "model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
        "concurrent": args.concurrent, "max_tokens": args.max_tokens, "threads": torch.get_num_threads(),
        "generated_tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "speedup_concurrent_vs_sequential": round(tps["concurrent"] / tps["sequential"], 2),
        "all_answers_complete_and_identical": same == [args.concurrent] * args.repeats,
        "identical_answers_per_repeat": same,
        "prompt_tokens": {"min": min(a[3] for a in seq), "max": max(a[3] for a in seq)},
        # answers that a batch limit shared with the longest prompt (context - longest) would have cut short
        "answers_longer_than_the_longest_prompts_room": sum(a[2] > context - max(b[3] for b in seq) for a in seq),
        "finish_reasons": dict(Counter(a[1] for a in seq)),
        "tokens_per_request": round(runs["concurrent"][-1][1] / args.concurrent, 1),
        "seconds_all": {k: [round(s, 2) for s, _ in v] for k, v in runs.items()},
        "matmul_ceiling_gflops": round(ceiling / 1e9, 1),
        "model_gflops_concurrent": round(tps["concurrent"] * flops_per_token / 1e9, 2),
        "utilisation_concurrent": round(tps["concurrent"] * flops_per_token / ceiling, 4),
        "load_average": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
