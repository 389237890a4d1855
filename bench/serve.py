"""Serving throughput: N concurrent streaming requests against the same N one after another.

    python bench/serve.py [--model runs/laptop/sft] [--concurrent 32] [--max-tokens 48] [--repeats 3]

Starts `chatforge serve`'s app in this process (uvicorn on a free local port, moderation off so
only generation is measured) and sends chat requests with streaming on, from N client threads
at once, then the same N sequentially. Each answer is greedy and runs to --max-tokens (the
prompts ask for lists, but a short answer just means fewer tokens: the count is what the server
reports in `usage`). Checks that every concurrent answer equals its sequential twin (nothing lost
or mixed up) and prints JSON: generated tokens/s for both, the ratio, batch sizes the engine
formed, and model FLOP/s against the fp32 matmul ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.perf import matmul_ceiling  # noqa: E402

QUESTIONS = ["What is the capital of {}?", "{}的首都是哪里？", "Which continent is {} in?", "{}在哪个洲？"]
PLACES = ["France", "China", "Japan", "Brazil", "Kenya", "Italy", "Egypt", "Germany"]


def start(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}"


def ask(url: str, question: str, max_tokens: int) -> tuple[str, int]:
    """One streaming request: (text, completion tokens from the usage chunk)."""
    import httpx

    body = {"model": "m", "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    text, tokens = "", 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return text, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/laptop/sft", help="a chat model directory (default: runs/laptop/sft)")
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from chatforge.model import matmul_params
    from chatforge.serve.app import create_app
    from chatforge.serve.chat import load
    from chatforge.serve.engine import Engine

    model, tokenizer = load(args.model)
    engine = Engine(model, tokenizer, max_batch=args.concurrent)
    server, url = start(create_app(engine, "m", moderator=None))
    questions = [QUESTIONS[i % len(QUESTIONS)].format(PLACES[i % len(PLACES)]) + f" ({i})" for i in range(args.concurrent)]
    ask(url, questions[0], 4)  # warm-up

    runs = {"concurrent": [], "sequential": []}
    answers = {}
    ceilings = []
    for _ in range(args.repeats):
        ceilings.append(matmul_ceiling())
        t0 = time.perf_counter()
        seq = [ask(url, q, args.max_tokens) for q in questions]
        runs["sequential"].append((time.perf_counter() - t0, sum(n for _, n in seq)))
        first_batch = len(engine.batch_sizes)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            con = list(pool.map(lambda q: ask(url, q, args.max_tokens), questions))
        runs["concurrent"].append((time.perf_counter() - t0, sum(n for _, n in con)))
        answers = {"same_text": [a == b for a, b in zip(seq, con)], "batches": engine.batch_sizes[first_batch:]}
    server.should_exit = True
    engine.close()

    tps = {k: statistics.median(n / s for s, n in v) for k, v in runs.items()}
    ceiling = statistics.median(ceilings)
    flops_per_token = 2 * matmul_params(model)  # forward only, attention over short contexts left out
    print(json.dumps({
        "bench": "serve", "model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
        "concurrent": args.concurrent, "max_tokens": args.max_tokens, "threads": torch.get_num_threads(),
        "generated_tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "speedup_concurrent_vs_sequential": round(tps["concurrent"] / tps["sequential"], 2),
        "all_answers_complete_and_identical": all(answers["same_text"]) and len(answers["same_text"]) == args.concurrent,
        "batch_sizes_last_repeat": answers["batches"],
        "tokens_per_request": round(runs["concurrent"][-1][1] / args.concurrent, 1),
        "seconds_all": {k: [round(s, 2) for s, _ in v] for k, v in runs.items()},
        "matmul_ceiling_gflops": round(ceiling / 1e9, 1),
        "model_gflops_concurrent": round(tps["concurrent"] * flops_per_token / 1e9, 2),
        "utilisation_concurrent": round(tps["concurrent"] * flops_per_token / ceiling, 4),
        "load_average": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
