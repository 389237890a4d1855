"""Pretraining throughput: tokens/s, model FLOP/s, and their share of the fp32 matmul ceiling, as JSON.

    python bench/pretrain.py [--recipe recipes/laptop.yaml] [--set model.d_model=256] [--repeats 5]

The same training step as `chatforge pretrain` (forward, backward, clip, AdamW) on random tokens
(throughput does not depend on the text), for the recipe's model and batch. The ceiling is the best
median fp32 square-matmul rate, measured in this run before and after the model, so the ratio
compares like with like on a shared, noisy machine. Medians over repeats; the load average is
reported so a busy machine shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.config import load_recipe  # noqa: E402
from chatforge.model import build_model, num_params, train_flops_per_token  # noqa: E402
from chatforge.perf import matmul_ceiling  # noqa: E402
from chatforge.train.loop import clip_and_step, make_optimizer  # noqa: E402
from chatforge.scoring import next_token_loss  # noqa: E402


class _VocabOnly:
    """Just what build_model asks of a tokenizer, so the benchmark needs no trained one."""

    def __init__(self, size: int):
        self.size, self.eos_token_id, self.pad_token_id = size, 0, 0

    def __len__(self):
        return self.size

    def convert_tokens_to_ids(self, _):
        return 2


def time_steps(model, optimizer, batch_size: int, micro: int, seq_len: int, vocab: int, steps: int) -> float:
    """Seconds per optimizer step (median over `steps`, after 2 warm-up steps)."""
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 2):
        windows = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
        t0 = time.perf_counter()
        for j in range(0, batch_size, micro):
            (next_token_loss(model, windows[j : j + micro]) * micro / batch_size).backward()
        clip_and_step(model, optimizer, 1.0)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parents[1] / "recipes" / "laptop.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary size (default: tokenizer.vocab_size)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported apart)")
    args = ap.parse_args()

    recipe = load_recipe(args.recipe if args.recipe.exists() else None, args.overrides)
    cfg, vocab = recipe.pretrain, args.vocab or recipe.tokenizer.vocab_size
    load_before = os.getloadavg()[0]
    ceilings = [matmul_ceiling()]
    model = build_model(recipe.model, _VocabOnly(vocab), seed=0)
    optimizer = make_optimizer(model, cfg.optim)
    step_model, compile_s = model, 0.0
    if args.compile:
        t0 = time.perf_counter()
        step_model = torch.compile(model)
        time_steps(step_model, optimizer, cfg.batch_size, cfg.micro_batch_size, cfg.seq_len, vocab, 1)
        compile_s = time.perf_counter() - t0
    step_times = []
    for _ in range(args.repeats):
        step_times.append(time_steps(step_model, optimizer, cfg.batch_size, cfg.micro_batch_size, cfg.seq_len, vocab, args.steps))
        ceilings.append(matmul_ceiling())
    step_s = statistics.median(step_times)
    tokens_per_s = cfg.batch_size * cfg.seq_len / step_s
    flops_per_s = tokens_per_s * train_flops_per_token(model, cfg.seq_len)
    ceiling = statistics.median(ceilings)
    print(json.dumps({
        "bench": "pretrain",
        "model": {"parameters": num_params(model), "d_model": recipe.model.d_model, "n_layers": recipe.model.n_layers,
                  "vocab": vocab, "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size},
        "threads": torch.get_num_threads(), "compile": args.compile, "compile_seconds": round(compile_s, 1),
        "step_seconds_median": round(step_s, 4), "step_seconds_all": [round(s, 4) for s in step_times],
        "tokens_per_s": round(tokens_per_s), "model_flops_per_s": round(flops_per_s),
        "matmul_ceiling_flops_per_s": round(ceiling), "matmul_ceiling_all": [round(c) for c in ceilings],
        "utilisation": round(flops_per_s / ceiling, 4),
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
