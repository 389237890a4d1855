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


def _fresh_run(folder: Path) -> Path:
    """A run with the laptop world's tokenizer and untrained laptop-size policy and reward models."""
    from transformers import LlamaForSequenceClassification

    from chatforge.config import load_recipe
    from chatforge.model import build_model, save_pretrained
    from chatforge import tokenizer as tokenizer_stage
    from chatforge.stages import run_world

    recipe = load_recipe(None)
    run = folder / "run"
    run_world(run, recipe, run / "data")
    tokenizer = tokenizer_stage.run(run, recipe, run / "tokenizer")
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
    models = ppo.load_models(run, replace(recipe, ppo=cfg), d)
    policy, tokenizer = models.policy, models.tokenizer
    scorer = ppo.Scorer(models.reward, models.bias, tokenizer, policy.config.max_position_embeddings, cfg.unfinished_penalty)
    optimizers = {"policy": make_optimizer(models.policy_params, cfg.optim),
                  "value": make_optimizer(models.value_params, cfg.optim, lr=cfg.value_lr)}
    prompts = world_prompts(run, replace(recipe, ppo=cfg), args) if args.workload == "world" else random_prompts(tokenizer, args)
    times, gen_times, tokens = [], [], []
    for it in range(args.iterations):
        batch_prompts = prompts[it * args.batch : (it + 1) * args.batch]
        t0 = time.perf_counter()
        # synthetic: -1 never occurs, so every answer is exactly response_length tokens; world: answers end at <|im_end|>
        batch = ppo.rollout(models, scorer, batch_prompts, cfg, cfg.kl_coef, None, d.device,
                            stop_ids=[-1] if args.workload == "synthetic" else None)
        ppo.optimise(policy, models.value, models, optimizers, batch, cfg, None, it, d)
        times.append(time.perf_counter() - t0)
        gen_times.append(batch.stats["gen_seconds"])
        tokens.append(batch.stats["gen_tokens"])
    sec = statistics.median(times[1:])
    seq = statistics.mean(len(p["ids"]) for p in prompts) + statistics.mean(tokens) / args.batch
    # model FLOPs of one iteration: forward (2N per token) of policy, reference, value and reward model in the
    # rollout, forward + backward (6N) of policy and value per PPO epoch; generation ~2N per generated token
    n = matmul_params(policy)
    seq_tokens = args.batch * seq
    flops = 4 * 2 * n * seq_tokens + args.ppo_epochs * 2 * 6 * n * seq_tokens + 2 * n * statistics.mean(tokens)
    return {"impl": "chatforge", "params_per_model": sum(p.numel() for p in policy.parameters()),
            "answer_tokens_mean": round(statistics.mean(tokens) / args.batch, 1),
            "sec_per_iter_median": round(sec, 3), "sec_per_iter_all": [round(t, 3) for t in times],
            "generation_sec_median": round(statistics.median(gen_times[1:]), 3),
            "episodes_per_s": round(args.batch / sec, 2),
            "generated_tokens_per_s": round(statistics.median(tokens[1:]) / sec, 1),
            "model_flops_per_s": round(flops / sec / 1e9, 2)}


def random_prompts(tokenizer, args) -> list[dict]:
    """--prompt-length random ids of the ordinary vocabulary per prompt, as on TRL's side."""
    g = torch.Generator().manual_seed(0)
    prompts = []
    for _ in range(args.batch * args.iterations):
        ids = torch.randint(256, len(tokenizer) - 16, (args.prompt_length,), generator=g).tolist()
        prompts.append({"ids": ids, "messages": [{"role": "user", "content": tokenizer.decode(ids)}]})
    return prompts


def world_prompts(run: Path, recipe, args) -> list[dict]:
    """The run's PPO prompts, as the stage reads them; their ids go to TRL's side through a file."""
    from chatforge.train import ppo

    prompts, _ = ppo.load_ppo_prompts(run, recipe)
    prompts = prompts[: args.batch * args.iterations]
    if len(prompts) < args.batch * args.iterations:
        raise SystemExit(f"{run}: only {len(prompts)} PPO prompts; lower --batch or --iterations")
    Path(args.prompts_file).write_text(json.dumps([p["ids"] for p in prompts]))
    return prompts


def theirs(args, run: Path) -> dict:
    python = Path(args.trl_python)
    if not python.exists():
        return {"impl": "trl", "skipped": f"{python} not found: run bench/trl_env.sh to make TRL's own environment"}
    cmd = [str(python), str(ROOT / "bench" / "trl_ppo.py"), "--batch", str(args.batch), "--response-length",
           str(args.response_length), "--ppo-epochs", str(args.ppo_epochs), "--minibatches", str(args.minibatches),
           "--iterations", str(args.iterations), "--prompt-length", str(args.prompt_length),
           "--threads", str(torch.get_num_threads())]
    c = json.loads((run / "sft" / "config.json").read_text())  # the same model size on both sides: ours
    cmd += ["--vocab", str(c["vocab_size"]), "--hidden", str(c["hidden_size"]), "--layers", str(c["num_hidden_layers"]),
            "--heads", str(c["num_attention_heads"]), "--kv-heads", str(c["num_key_value_heads"]),
            "--intermediate", str(c["intermediate_size"]), "--max-positions", str(c["max_position_embeddings"])]
    if args.workload == "world":
        cmd += ["--run", str(run), "--prompts-file", args.prompts_file]
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
    ap.add_argument("--workload", choices=("synthetic", "world"), default="synthetic",
                    help="synthetic: random prompts of --prompt-length, answers always --response-length tokens; "
                         "world: the run's own models and PPO prompts, answers that end when the policy ends them")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    from chatforge.perf import matmul_ceiling

    load_before = os.getloadavg()[0]
    ceiling = matmul_ceiling()
    run = Path(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        args.prompts_file = str(Path(tmp) / "prompts.json")
        if not ((run / "sft" / "config.json").exists() and (run / "reward" / "config.json").exists()):
            if args.workload == "world":
                raise SystemExit(f"{run}: --workload world needs a run with sft/ and reward/ (make demo)")
            run = _fresh_run(Path(tmp))
        result = ours(run, args)
        result["mfu_fp32"] = round(result["model_flops_per_s"] * 1e9 / ceiling, 3)
        trl = {"impl": "trl", "skipped": "--skip-trl"} if args.skip_trl else theirs(args, run)
    out = {"bench": "ppo", "workload": args.workload, "batch": args.batch, "response_length": args.response_length, "prompt_length": args.prompt_length,
           "ppo_epochs": args.ppo_epochs, "minibatches": args.minibatches, "iterations": args.iterations,
           "threads": torch.get_num_threads(), "models": "run " + str(run) if run == Path(args.run) else "fresh, laptop size",
           "matmul_ceiling_gflops": round(ceiling / 1e9, 1), "ours": result, "trl": trl,
           "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}
    if "sec_per_iter_median" in trl:
        out["speedup_vs_trl"] = round(trl["sec_per_iter_median"] / result["sec_per_iter_median"], 2)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
