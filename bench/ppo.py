"""PPO iteration speed: chatforge's PPO against TRL's PPOTrainer, same model sizes, batch, answer length, epochs.

    python bench/ppo.py [--run runs/laptop] [--batch 64] [--response-length 48] [--ppo-epochs 4]
                        [--minibatches 1] [--iterations 6] [--trl-python .venv-trl/bin/python]

Our side runs the stage's own `rollout` and `optimise` on the run's SFT policy and reward model
(without a run, freshly initialised models of the laptop recipe's size and a tokenizer trained on
the built-in world, made in a temporary folder). TRL's side is bench/trl_ppo.py, run by the Python
of its own environment (bench/trl_env.sh makes it; TRL is never a dependency of chatforge), with
randomly initialised models of the same sizes. Both generate exactly --response-length tokens per
answer (no stop token can occur), in fp32, without gradient checkpointing.

Prints one JSON object: seconds per iteration (median over the iterations after the first),
generated tokens/s, episodes/s for each side, their ratio, the machine's fp32 matmul ceiling and
the model FLOP/s of our iteration against it, and the load average before and after (the machine
may be shared: a busy one slows both sides unevenly).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_ceiling(n: int = 1024, repeats: int = 5) -> float:
    """fp32 FLOP/s of a square matmul on this machine, now (median of repeats)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def _fresh_run(folder: Path) -> Path:
    """A run with the laptop world's tokenizer and untrained laptop-size policy and reward models."""
    from transformers import LlamaForSequenceClassification

    from chatforge.config import load_recipe
    from chatforge.model import build_model, save_pretrained
    from chatforge.pipeline import stage_tokenizer, stage_world

    recipe = load_recipe(None)
    run = folder / "run"
    stage_world(run, recipe)
    tokenizer = stage_tokenizer(run, recipe)
    policy = build_model(recipe.model, tokenizer, seed=0)
    save_pretrained(policy, tokenizer, run / "sft")
    config = policy.config
    config.num_labels = 1
    config.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(1)
    save_pretrained(LlamaForSequenceClassification(config), tokenizer, run / "reward")
    return run


def ours(run: Path, args) -> dict:
    from chatforge import dist
    from chatforge.config import load_recipe
    from chatforge.model import matmul_params
    from chatforge.train import ppo
    from chatforge.train.loop import make_optimizer

    d = dist.init()
    recipe = load_recipe(None)
    cfg = replace(recipe.ppo, batch_size=args.batch, max_new_tokens=args.response_length, ppo_epochs=args.ppo_epochs,
                  minibatches=args.minibatches, ptx_coef=0.0, temperature=1.0)
    policy, value, reference, reward_model, bias, tokenizer = ppo.load_models(run, d)
    scorer = ppo.Scorer(reward_model, bias, tokenizer, policy.config.max_position_embeddings, cfg.unfinished_penalty)
    opt_policy = make_optimizer(policy, cfg.lr, 0.0, (cfg.beta1, cfg.beta2))
    opt_value = make_optimizer(value, cfg.value_lr, 0.0, (cfg.beta1, cfg.beta2))
    g = torch.Generator().manual_seed(0)
    # prompts of --prompt-length random tokens of the tokenizer's ordinary vocabulary, as on TRL's side
    low = 256  # past the byte tokens, below nothing special
    prompts = [{"ids": torch.randint(low, len(tokenizer) - 16, (args.prompt_length,), generator=g).tolist(),
                "messages": [{"role": "user", "content": "x"}]} for _ in range(args.batch * args.iterations)]
    for p in prompts:
        p["messages"] = [{"role": "user", "content": tokenizer.decode(p["ids"])}]
    times, gen_times = [], []
    for it in range(args.iterations):
        batch_prompts = prompts[it * args.batch : (it + 1) * args.batch]
        t0 = time.perf_counter()
        batch = ppo.rollout(policy, value, reference, scorer, batch_prompts, tokenizer, cfg, cfg.kl_coef, None, d.device,
                            stop_ids=[-1])  # -1 never occurs: every answer is exactly response_length tokens
        ppo.optimise(policy, value, opt_policy, opt_value, batch, cfg, None, it, d)
        times.append(time.perf_counter() - t0)
        gen_times.append(batch.stats["gen_seconds"])
        assert batch.stats["gen_tokens"] == args.batch * args.response_length
    sec = statistics.median(times[1:])
    seq = args.prompt_length + args.response_length
    # model FLOPs of one iteration: forward (2N per token) of policy, reference, value and reward model in the
    # rollout, forward + backward (6N) of policy and value per PPO epoch; generation ~2N per generated token
    n = matmul_params(policy)
    tokens = args.batch * seq
    flops = 4 * 2 * n * tokens + args.ppo_epochs * 2 * 6 * n * tokens + 2 * n * args.batch * args.response_length
    return {"impl": "chatforge", "params_per_model": sum(p.numel() for p in policy.parameters()),
            "sec_per_iter_median": round(sec, 3), "sec_per_iter_all": [round(t, 3) for t in times],
            "generation_sec_median": round(statistics.median(gen_times[1:]), 3),
            "episodes_per_s": round(args.batch / sec, 2),
            "generated_tokens_per_s": round(args.batch * args.response_length / sec, 1),
            "model_flops_per_s": round(flops / sec / 1e9, 2)}


def theirs(args) -> dict:
    python = Path(args.trl_python)
    if not python.exists():
        return {"impl": "trl", "skipped": f"{python} not found: run bench/trl_env.sh to make TRL's own environment"}
    cmd = [str(python), str(ROOT / "bench" / "trl_ppo.py"), "--batch", str(args.batch), "--response-length",
           str(args.response_length), "--ppo-epochs", str(args.ppo_epochs), "--minibatches", str(args.minibatches),
           "--iterations", str(args.iterations), "--prompt-length", str(args.prompt_length),
           "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"impl": "trl", "failed": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/laptop", help="a run with sft/ and reward/ (else fresh laptop-size models)")
    ap.add_argument("--batch", type=int, default=64, help="episodes per iteration")
    ap.add_argument("--response-length", type=int, default=48)
    ap.add_argument("--prompt-length", type=int, default=24)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--minibatches", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=6, help="the first is a warm-up, left out of the median")
    ap.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    ap.add_argument("--skip-trl", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    load_before = os.getloadavg()[0]
    ceiling = matmul_ceiling()
    run = Path(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        if not ((run / "sft" / "config.json").exists() and (run / "reward" / "config.json").exists()):
            run = _fresh_run(Path(tmp))
        result = ours(run, args)
    result["mfu_fp32"] = round(result["model_flops_per_s"] * 1e9 / ceiling, 3)
    trl = {"impl": "trl", "skipped": "--skip-trl"} if args.skip_trl else theirs(args)
    out = {"bench": "ppo", "batch": args.batch, "response_length": args.response_length, "prompt_length": args.prompt_length,
           "ppo_epochs": args.ppo_epochs, "minibatches": args.minibatches, "iterations": args.iterations,
           "threads": torch.get_num_threads(), "models": "run " + str(run) if run == Path(args.run) else "fresh, laptop size",
           "matmul_ceiling_gflops": round(ceiling / 1e9, 1), "ours": result, "trl": trl,
           "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}
    if "sec_per_iter_median" in trl:
        out["speedup_vs_trl"] = round(trl["sec_per_iter_median"] / result["sec_per_iter_median"], 2)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
