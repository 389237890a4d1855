"""Pretraining: next-token prediction on a weighted mixture of corpus sources -> runs/<name>/base/.

The loop, per optimizer step:
  draw the step's global batch (seeded by the step, so resume and N processes see the same data)
  -> each process: forward/backward its micro-batches (DDP syncs gradients on the last one)
  -> clip, AdamW step, schedule
  -> log loss, tokens/s, model FLOP/s and its share of the matmul ceiling
  -> now and then: held-out loss per source, greedy samples, an atomic checkpoint.
The result is a plain Hugging Face directory: a base model that continues text, and does not answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from chatforge import dist
from chatforge.config import PretrainConfig, Recipe, check_context
from chatforge.data.corpus import corpus_dir, token_cache
from chatforge.data.mixture import eval_windows, load_mixture
from chatforge.errors import ConfigError, UserError
from chatforge.generate import complete
from chatforge.model import build_model, load_causal_lm, num_params, save_pretrained, train_flops_per_token
from chatforge.perf import Throughput, machine_ceiling
from chatforge.scoring import next_token_loss
from chatforge.tokenizer import load_tokenizer
from chatforge.train.loop import MetricsLog, StageRun, autocast, clip_and_step, make_optimizer, read_metrics, scheduled_lr


def run(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    run_dir, cfg = Path(run_dir), recipe.pretrain
    d = dist.get()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(_tokenizer_dir(run_dir, cfg.init))
    sampler, val_streams = load_mixture(corpus_dir(run_dir, cfg.corpus), token_cache(run_dir), tokenizer, cfg.mixture,
                                        cfg.seq_len, cfg.seed)
    dist.print0(f"pretrain: mixture {sampler.describe()}")
    model = _init_model(recipe, tokenizer).to(d.device)
    check_context("pretrain.seq_len", cfg.seq_len, model.config.max_position_embeddings)
    micro, accum = _micro_batching(cfg, d.world_size)
    train_model = dist.wrap(_compiled(model, sampler, cfg, micro, d), cfg.dtype)  # before the optimizer (FSDP2 shards)
    optimizer = make_optimizer(model, cfg.optim)
    frame = StageRun("pretrain", out, total=cfg.steps, save_every=cfg.save_every)
    state = frame.start(model, {"adamw": optimizer}, {"step": 0, "tokens": 0, "seconds": 0.0},
                        {"pretrain": asdict(cfg), "model": model.config.to_dict()})
    samples = MetricsLog(out / "samples.jsonl", resume_step=state["step"])  # a resumed run samples those steps again
    flops_per_token = train_flops_per_token(model, cfg.seq_len)
    ceiling = machine_ceiling(d)
    meter = Throughput(flops_per_token)
    dist.print0(f"pretrain: {num_params(model) / 1e6:.2f}M parameters, {d.world_size} process(es), "
                f"batch {cfg.batch_size}x{cfg.seq_len} tokens = {d.world_size}x{accum}x{micro} sequences, "
                f"fp32 matmul ceiling {ceiling / 1e9:.0f} GFLOP/s")

    for step in range(state["step"], cfg.steps):
        t0 = time.perf_counter()
        lr = scheduled_lr(optimizer, cfg.optim, step, cfg.steps)
        loss = _train_step(train_model, optimizer, sampler.rank_rows(step, cfg.batch_size), micro, accum, cfg, d)
        seconds = time.perf_counter() - t0
        meter.add(seconds, cfg.batch_size * cfg.seq_len)
        state = {"step": step + 1, "tokens": state["tokens"] + cfg.batch_size * cfg.seq_len, "seconds": state["seconds"] + seconds}
        record = {"step": step + 1, "loss": round(loss["loss"], 6), "lr": lr, "grad_norm": round(loss["grad_norm"], 4),
                  "tokens": state["tokens"], "tokens_per_s": round(meter.tokens_per_s),
                  "flops_per_s": round(meter.flops_per_s), "utilisation": round(meter.flops_per_s / ceiling, 4)}
        if frame.due(step + 1, cfg.eval_every):
            record.update(evaluate(model, val_streams, cfg, d))
            # A ceiling sampled while something else loaded the machine would flatter us: keep the best.
            ceiling = max(ceiling, machine_ceiling(d))
            record["matmul_ceiling"] = round(ceiling)
            frame.bar.write(f"step {step + 1}: held-out loss " + ", ".join(f"{k[4:]} {v:.3f}" for k, v in record.items() if k.startswith("val/")))
        if cfg.sample_every and frame.due(step + 1, cfg.sample_every) and (d.is_main or dist.sharded(model)):
            _print_samples(model, tokenizer, cfg, step + 1, samples, frame.bar)
        frame.end_step(state, record, loss=f"{loss['loss']:.3f}", tok_s=f"{meter.tokens_per_s:,.0f}",
                       util=f"{meter.flops_per_s / ceiling:.0%}")
    return _finish(frame, model, tokenizer, state, flops_per_token, ceiling, d)


def _train_step(train_model, optimizer, rows_BT1: torch.Tensor, micro: int, accum: int, cfg: PretrainConfig, d) -> dict:
    """Forward/backward this process's rows in `accum` micro-batches (DDP syncs on the last), clip, step;
    returns the global batch's mean loss and the gradient norm before clipping."""
    loss_sum = torch.zeros((), device=d.device)
    for i in range(accum):
        chunk = rows_BT1[i * micro : (i + 1) * micro].to(d.device)
        with dist.no_sync(train_model, sync=i == accum - 1), autocast(d.device, cfg.dtype):
            loss = next_token_loss(train_model, chunk)
            (loss / accum).backward()
        loss_sum += loss.detach()
    grad_norm = clip_and_step(train_model, optimizer, cfg.optim.grad_clip)
    return {"loss": float(dist.all_reduce_mean(loss_sum / accum)), "grad_norm": grad_norm}


@torch.no_grad()
def evaluate(model, val_streams: dict[str, torch.Tensor], cfg: PretrainConfig, d) -> dict:
    """Held-out loss per source; each process takes every N-th window, sums are reduced."""
    model.eval()
    out = {}
    for name, stream in val_streams.items():
        total = torch.zeros(2, device=d.device)  # [sum of losses, number of windows]
        for chunk, counts in dist.eval_batches(eval_windows(stream, cfg.seq_len, cfg.eval_sequences),
                                               cfg.micro_batch_size, model):
            chunk = chunk.to(d.device)
            with autocast(d.device, cfg.dtype):
                loss_sum = next_token_loss(model, chunk) * len(chunk)
            if counts:
                total[0] += loss_sum
                total[1] += len(chunk)
        total = dist.all_reduce_sum(total)
        out[f"val/{name}"] = round(float(total[0] / total[1]), 6)
    out["val/mean"] = round(sum(out.values()) / len(out), 6)
    model.train()
    return out


def _compiled(model, sampler, cfg: PretrainConfig, micro: int, d: dist.Dist):
    """The model to train: compiled if asked, but under FSDP2 eager (its sharding hooks would sit inside this compile,
    which takes the whole model; compiling block by block, before sharding, is not done here)."""
    if not cfg.compile:
        return model
    if d.shards:
        dist.print0("pretrain: torch.compile is off under compute.parallel=fsdp (the model runs eagerly)")
        return model
    return maybe_compile(model, sampler.rank_rows(0, cfg.batch_size)[:micro].to(d.device))  # a step's shapes


def maybe_compile(model, example_BT1: torch.Tensor):
    """torch.compile, checked on one real micro-batch; eager (with a warning) if this machine cannot compile."""
    compiled = torch.compile(model)
    try:
        next_token_loss(compiled, example_BT1).backward()  # compiles forward and backward now, not mid-run
    except Exception as e:  # noqa: BLE001 - no C++ toolchain, an unsupported op...: all mean "run eagerly"
        dist.print0(f"pretrain: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); running eagerly")
        compiled = model
    model.zero_grad(set_to_none=True)  # the check must not leak into the first step
    return compiled


def _micro_batching(cfg: PretrainConfig, world_size: int) -> tuple[int, int]:
    if cfg.batch_size % world_size:
        raise ConfigError(f"pretrain.batch_size ({cfg.batch_size}) must divide evenly over {world_size} processes")
    per_rank = cfg.batch_size // world_size
    micro = min(cfg.micro_batch_size, per_rank)
    if per_rank % micro:
        raise ConfigError(f"pretrain.micro_batch_size ({micro}) must divide the per-process batch ({per_rank})")
    return micro, per_rank // micro


def _tokenizer_dir(run_dir: Path, init: str) -> Path:
    # A model we start from brings its own vocabulary; otherwise the run's trained tokenizer.
    if init and (Path(init) / "tokenizer.json").exists():
        return Path(init)
    return run_dir / "tokenizer"


def _init_model(recipe: Recipe, tokenizer):
    cfg = recipe.pretrain
    if not cfg.init:
        return build_model(recipe.model, tokenizer, cfg.seed)
    model = load_causal_lm(Path(cfg.init))
    if model.config.vocab_size < len(tokenizer):
        raise UserError(f"{cfg.init}: the model's vocab_size ({model.config.vocab_size}) is smaller than its tokenizer ({len(tokenizer)})")
    if getattr(model.config, "max_position_embeddings", cfg.seq_len) < cfg.seq_len:
        raise UserError(f"{cfg.init}: max_position_embeddings is below pretrain.seq_len ({cfg.seq_len})")
    return model


def _print_samples(model, tokenizer, cfg: PretrainConfig, step: int, log: MetricsLog, bar):
    model.eval()
    texts = complete(model, tokenizer, cfg.sample_prompts, max_new_tokens=24)
    model.train()
    lines = [f"  {p!r} -> {c!r}" for p, c in zip(cfg.sample_prompts, texts)]
    if dist.get().is_main:  # under FSDP2 every process samples (each forward needs them all); one prints
        bar.write(f"step {step}: greedy samples\n" + "\n".join(lines))
    log.log({"step": step, "samples": dict(zip(cfg.sample_prompts, texts))})


def _finish(frame: StageRun, model, tokenizer, state: dict, flops_per_token: float, ceiling: float, d) -> dict:
    records = read_metrics(frame.dir / "metrics.jsonl") if d.is_main else []
    final = records[-1] if records else {}
    tokens_per_s = state["tokens"] / max(state["seconds"], 1e-9)  # training steps only, eval and saving excluded
    summary = {
        "steps": state["step"], "tokens": state["tokens"], "train_seconds": round(state["seconds"], 1),
        "final_loss": final.get("loss"), "val": {k[4:]: v for k, v in final.items() if k.startswith("val/")},
        "tokens_per_s": round(tokens_per_s), "flops_per_s": round(tokens_per_s * flops_per_token),
        "matmul_ceiling_flops_per_s": round(ceiling), "utilisation": round(tokens_per_s * flops_per_token / ceiling, 4),
        "parameters": num_params(model), "world_size": d.world_size,
    }
    return frame.finish(summary, model, lambda out, weights: save_pretrained(model, tokenizer, out, weights=weights),
                        f"final loss {summary['final_loss']}, {summary['tokens_per_s']:,} tokens/s, "
                        f"{summary['utilisation']:.0%} of the matmul ceiling")
