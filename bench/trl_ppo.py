"""TRL's PPO iteration time on CPU, for the same models and batch as chatforge's PPO; one JSON object on stdout.

    bash bench/trl_env.sh                                  # once: TRL in its own venv, .venv-trl/
    .venv-trl/bin/python bench/trl_ppo.py [--batch 64] [--response-length 48] [--ppo-epochs 4]
                                          [--minibatches 1] [--iterations 6] [--threads 2]

What one iteration is: TRL 1.12's `PPOTrainer.train()` runs one loop pass per batch of prompts —
rollout (sample `--response-length` tokens per prompt, no-grad forwards of reference, value and
reward models, rewards, GAE) then `--ppo-epochs` passes of clipped policy and value losses with
AdamW steps — and calls `on_step_end` once at the end of each pass. A callback stamps
`time.perf_counter()` there (and at `on_train_begin`), so the gap between two stamps is exactly one
pass of that loop. The first iteration is warm-up and is left out of the median.

Four randomly initialised models of one size (default: chatforge's laptop model): Llama policy and
reference (the reference a copy of the policy, as the SFT model is of itself), and Llama
sequence-classification value and reward models (the value a copy of the reward model). Prompts
are random token ids of one length, never the pad or eos id. There is no stop token, so every
answer is the full length and TRL does the same work as chatforge's side.

Runs in .venv-trl only: it imports no chatforge (whose dependencies are not installed there).
Everything TRL and transformers print goes to stderr; stdout carries the JSON alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

PAD_ID, EOS_ID = 0, 1  # the synthetic tokenizer's specials; prompts use ids from 2 up


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="episodes (prompt + sampled answer) per iteration")
    ap.add_argument("--response-length", type=int, default=48, help="tokens sampled per answer")
    ap.add_argument("--prompt-length", type=int, default=24)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--minibatches", type=int, default=1, help="minibatches per PPO epoch")
    ap.add_argument("--iterations", type=int, default=6, help="PPO iterations; the first is warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", help="a chatforge run: policy and reference from RUN/sft, value and reward from RUN/reward, "
                                  "their tokenizer, and answers that end at <|im_end|> (default: random models, no stop)")
    ap.add_argument("--prompts-file", help="JSON list of prompts as token-id lists, batch x iterations of them "
                                           "(default: random ids of --prompt-length)")
    # The model: chatforge's laptop recipe (recipes/laptop.yaml, section model); bench/ppo.py passes its sizes.
    ap.add_argument("--vocab", type=int, default=2304)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--max-positions", type=int, default=128)
    args = ap.parse_args()
    if args.batch % args.minibatches:
        ap.error(f"--batch ({args.batch}) must be a multiple of --minibatches ({args.minibatches})")
    if args.iterations < 2:
        ap.error("--iterations must be at least 2 (the first is warm-up)")
    if not args.prompts_file and args.prompt_length + args.response_length > args.max_positions:
        ap.error("--prompt-length + --response-length exceeds --max-positions")
    return args


def build_models(args):
    """Policy, reference, value, reward: fp32, sdpa attention, tied embeddings, as chatforge.model.build_model."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID, num_labels=1,
        attn_implementation="sdpa", dtype=torch.float32,
    )
    torch.manual_seed(args.seed)
    policy = LlamaForCausalLM(config)
    reward = LlamaForSequenceClassification(config)
    policy.generation_config.pad_token_id = PAD_ID
    return policy, copy.deepcopy(policy), copy.deepcopy(reward), reward


def build_tokenizer(vocab: int):
    """A word-level tokenizer over the ids: TRL wants one for pad/eos ids and for collating, never for text."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<eos>"] + [f"t{i}" for i in range(2, vocab)]
    tok = Tokenizer(WordLevel({name: i for i, name in enumerate(names)}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def load_run_models(run: str):
    """A chatforge run's SFT model (policy, and a copy as reference) and reward model (value, and a copy as reward)
    with their tokenizer, padded on the left for generation as TRL expects; answers stop at <|im_end|>."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    sft, rm = os.path.join(run, "sft"), os.path.join(run, "reward")
    policy = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(rm, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    tokenizer.padding_side = "left"
    return (policy, copy.deepcopy(policy), copy.deepcopy(reward), reward), tokenizer


def prompt_dataset(args):
    """batch * iterations prompts: the file's token ids, or random ids in [2, vocab) (one fresh prompt per episode)."""
    from datasets import Dataset

    if args.prompts_file:
        with open(args.prompts_file) as f:
            return Dataset.from_dict({"input_ids": json.load(f)[: args.batch * args.iterations]})
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(2, args.vocab, (args.batch * args.iterations, args.prompt_length), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist()})


def make_timer():
    from transformers import TrainerCallback

    class IterationTimer(TrainerCallback):
        """Stamps the start of training and the end of every PPO iteration (TRL calls on_step_end once per pass)."""

        def __init__(self):
            self.stamps = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def seconds(self) -> list[float]:
            return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    return IterationTimer()


def watch_rollouts(ppo_trainer_module):
    """Wrap TRL's batch_generation to record each rollout's sampling time and what it sampled (lengths, pads)."""
    seen = []
    inner = ppo_trainer_module.batch_generation

    def batch_generation(model, queries, *a, **kw):
        t0 = time.perf_counter()
        query_responses, logits = inner(model, queries, *a, **kw)
        answers = query_responses[:, queries.shape[1]:]
        seen.append({"generate_s": time.perf_counter() - t0, "answer_tokens": answers.shape[1],
                     "answers_with_pad": int((answers == PAD_ID).any(1).sum()),
                     "answers_with_eos": int((answers == EOS_ID).any(1).sum())})
        return query_responses, logits

    ppo_trainer_module.batch_generation = batch_generation  # train() looks it up in the module at call time
    return seen


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Contention:
    """Cores kept busy by other processes since construction: on a shared 2-core machine anything well above 0
    means the timings are contended (the load average lags by a minute and counts this process too)."""

    def __init__(self):
        self.busy, self.own, self.wall = machine_busy_seconds(), self._own_cpu(), time.perf_counter()

    @staticmethod
    def _own_cpu() -> float:
        t = os.times()
        return t.user + t.system

    def other_cores(self) -> float | None:
        busy = machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (self._own_cpu() - self.own)
        return round(max(0.0, others / (time.perf_counter() - self.wall)), 2)


def ppo_config(args, output_dir: str, stop_id: int | None = None):
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=output_dir,  # TRL makes this directory even when nothing is saved: keep it out of the repo
        total_episodes=args.batch * args.iterations,  # -> exactly `iterations` loop passes
        # TRL's rollout batch is per_device_train_batch_size * gradient_accumulation_steps; a minibatch is that
        # over num_mini_batches, run in microbatches of per_device_train_batch_size: one microbatch per minibatch.
        per_device_train_batch_size=args.batch // args.minibatches,
        gradient_accumulation_steps=args.minibatches,
        num_mini_batches=args.minibatches,
        num_ppo_epochs=args.ppo_epochs,
        local_rollout_forward_batch_size=args.batch,  # the whole rollout in one generate call, as chatforge
        response_length=args.response_length,
        temperature=1.0,
        # no stop token: generate always samples response_length tokens; with a run's models, <|im_end|> ends an answer
        stop_token=None, stop_token_id=stop_id,
        missing_eos_penalty=None,
        num_sample_generations=0,
        gradient_checkpointing=False,  # TRL's default is True
        bf16=False, fp16=False,  # TRL's default is bf16 whenever fp16 is off
        use_cpu=True,
        eval_strategy="no", save_strategy="no", report_to="none", push_to_hub=False,
        logging_steps=1, disable_tqdm=True,
        seed=args.seed,
    )


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # PPOTrainer lives only in trl.experimental: we know

    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_trainer_module
    from trl.experimental.ppo import PPOTrainer

    if args.run:
        (policy, ref, value, reward), tokenizer = load_run_models(args.run)
        stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    else:
        (policy, ref, value, reward), tokenizer, stop_id = build_models(args), build_tokenizer(args.vocab), None
    timer = make_timer()
    rollouts = watch_rollouts(ppo_trainer_module)
    load_before = os.getloadavg()
    contention = Contention()
    with tempfile.TemporaryDirectory(prefix="trl_ppo_") as out_dir, contextlib.redirect_stdout(sys.stderr):
        trainer = PPOTrainer(
            args=ppo_config(args, out_dir, stop_id), processing_class=tokenizer, model=policy,
            ref_model=ref, reward_model=reward, value_model=value, train_dataset=prompt_dataset(args),
            callbacks=[timer],
        )
        # Counts the AdamW steps that really happen: accelerate skips the step on accumulating microbatches.
        optimizer_steps = []
        trainer.optimizer.optimizer.register_step_post_hook(lambda *_: optimizer_steps.append(1))
        trainer.train()
    load_after, other_cores = os.getloadavg(), contention.other_cores()

    seconds = timer.seconds()
    assert len(seconds) == args.iterations == len(rollouts), (len(seconds), len(rollouts))
    median = statistics.median(seconds[1:])
    num_params = sum(p.numel() for p in policy.parameters())
    print(json.dumps({
        "impl": "trl",
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "params_per_model": num_params,
        "params_value_model": sum(p.numel() for p in value.parameters()),
        "batch": args.batch,
        "prompt_length": "from file" if args.prompts_file else args.prompt_length,
        "models": f"run {args.run}" if args.run else "random",
        "response_length": args.response_length,
        "ppo_epochs": args.ppo_epochs,
        "minibatches": args.minibatches,
        "iterations": args.iterations,
        "sec_per_iter_median": round(median, 4),
        "sec_per_iter_all": [round(s, 4) for s in seconds],
        "sec_per_iter_min": round(min(seconds[1:]), 4),  # the least disturbed one, when other processes interfere
        "episodes_per_s": round(args.batch / median, 3),
        "generated_tokens_per_s": round(args.batch * args.response_length / median, 1),
        # What TRL actually did, so a mismatch with chatforge's side shows.
        # The sampling part of each iteration (TRL's generate over the whole batch), median over the same iterations.
        "generate_sec_median": round(statistics.median(r["generate_s"] for r in rollouts[1:]), 4),
        "answer_tokens_sampled": sorted({r["answer_tokens"] for r in rollouts}),
        "answers_with_sampled_pad": sum(r["answers_with_pad"] for r in rollouts),
        "answers_with_sampled_eos": sum(r["answers_with_eos"] for r in rollouts),
        "optimizer_steps_per_iter": len(optimizer_steps) / args.iterations,
        "optimizer": type(trainer.optimizer.optimizer).__name__,
        "gradient_checkpointing": bool(trainer.model.is_gradient_checkpointing),
        "param_dtype": str(next(trainer.model.parameters()).dtype),
        "attn_implementation": policy.config._attn_implementation,
        "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "other_processes_cores_busy": other_cores,
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
