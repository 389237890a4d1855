"""Batched greedy generation: chatforge.generate against transformers' generate, same model, same batch.

    python bench/generate.py [--model runs/laptop/sft] [--batch 32] [--new-tokens 48] [--repeats 3]

Without --model, a freshly initialised model of the laptop recipe's size. Both decoders get the
same left-padded prompts of mixed lengths and produce exactly --new-tokens tokens (no stop
token), so they do the same work; prints JSON with tokens/s for each, the ratio, and whether the
two produced the same tokens. Medians over repeats, alternating the two so drift hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.generate import generate, left_pad  # noqa: E402
from chatforge.model import matmul_params  # noqa: E402
from chatforge.perf import matmul_ceiling  # noqa: E402


def load(model_dir: str | None):
    if model_dir:
        from chatforge.model import load_causal_lm

        return load_causal_lm(Path(model_dir)).eval()
    from bench.pretrain import _VocabOnly  # a model of the laptop size, no tokenizer needed
    from chatforge.config import load_recipe
    from chatforge.model import build_model

    recipe = load_recipe(None)
    return build_model(recipe.model, _VocabOnly(recipe.tokenizer.vocab_size), seed=0).eval()


def ours(model, prompts, new_tokens: int, pad_id: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    gens = generate(model, prompts, new_tokens, pad_id=pad_id, stop_ids=[-1])  # -1: never stops early
    return time.perf_counter() - t0, [g.tokens for g in gens]


@torch.no_grad()
def theirs(model, prompts, new_tokens: int, pad_id: int) -> tuple[float, list[list[int]]]:
    ids, mask = left_pad(prompts, pad_id, "cpu")
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=pad_id, eos_token_id=None)
    return time.perf_counter() - t0, out[:, ids.shape[1]:].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a Hugging Face model directory (default: a fresh laptop-size model)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    ceiling = matmul_ceiling()
    model = load(args.model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 40, (args.batch,), generator=g).tolist()  # mixed lengths: padding matters
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    pad_id = 0
    ours(model, prompts[:2], 4, pad_id), theirs(model, prompts[:2], 4, pad_id)  # warm-up
    times = {"chatforge": [], "transformers": []}
    for _ in range(args.repeats):
        t_ours, out_ours = ours(model, prompts, args.new_tokens, pad_id)
        t_theirs, out_theirs = theirs(model, prompts, args.new_tokens, pad_id)
        times["chatforge"].append(t_ours)
        times["transformers"].append(t_theirs)
    tokens = args.batch * args.new_tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    ceiling = max(ceiling, matmul_ceiling())
    flops = 2 * matmul_params(model) * tokens  # a decoding step's forward, per generated token (attention aside)
    print(json.dumps({
        "bench": "generate", "model": args.model or "fresh laptop-size model",
        "parameters": sum(p.numel() for p in model.parameters()), "batch": args.batch, "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "tokens_per_s": {k: round(tokens / v) for k, v in med.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "speedup_vs_transformers": round(med["transformers"] / med["chatforge"], 3),
        "matmul_ceiling_flops_per_s": round(ceiling),
        "utilisation": {k: round(flops / v / ceiling, 4) for k, v in med.items()},
        "identical_tokens": out_ours == out_theirs,
        "load_average": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
