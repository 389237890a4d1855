"""Evaluation of any stage's model on the world's evaluation sets; results in runs/<name>/eval/<stage>.json.

Base models: greedy completion of every fact's stem ("中国最高的山是" -> "珠穆朗玛峰"), in both
languages, split by whether SFT will see the entity; and held-out loss per corpus source.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from chatforge.data.corpus import discover_sources
from chatforge.data.mixture import eval_windows
from chatforge.data.tokens import load_streams
from chatforge.errors import UserError
from chatforge.generate import complete
from chatforge.io import atomic_write_json, read_jsonl
from chatforge.model import load_causal_lm
from chatforge.tokenizer import load_tokenizer


def completes_with(continuation: str, value: str) -> bool:
    """True if the continuation starts with `value` as a whole word ("Paris." yes, "Parisville" no)."""
    text = continuation.lstrip()
    if not text.startswith(value):
        return False
    rest = text[len(value) :]
    if not rest or not value[-1].isascii():  # CJK values have no word boundaries to check
        return True
    return not (rest[0].isalnum() and rest[0].isascii())


def fact_completion(model, tokenizer, records: list[dict], batch_size: int = 64) -> dict:
    """Accuracy of greedy stem completion, overall and per language x entity split."""
    max_new = 2 + max(len(tokenizer.encode(" " + r["answer"], add_special_tokens=False)) for r in records)
    outputs = complete(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=max_new, batch_size=batch_size)
    groups: dict[str, list[bool]] = {}
    examples = []
    for r, out in zip(records, outputs):
        ok = completes_with(out, r["answer"])
        for key in ("all", f"{r['lang']}", f"{r['lang']}/{r.get('entity_split', 'all')}"):
            groups.setdefault(key, []).append(ok)
        if len(examples) < 12 or not ok and len(examples) < 24:
            examples.append({"prompt": r["prompt"], "answer": r["answer"], "output": out, "correct": ok})
    return {"accuracy": {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())},
            "counts": {k: len(v) for k, v in sorted(groups.items())}, "examples": examples}


@torch.no_grad()
def heldout_loss(model, tokenizer, run_dir: Path, seq_len: int, sequences: int = 64) -> dict:
    """Held-out cross-entropy (nats/token) and perplexity per corpus source."""
    sources = discover_sources(Path(run_dir) / "data" / "corpus")
    streams = load_streams(sources, tokenizer, Path(run_dir) / "data" / "tokens")
    out = {}
    for name, s in streams.items():
        windows = eval_windows(s["val"], seq_len, sequences)
        logits = torch.cat([model(input_ids=windows[i : i + 32, :-1]).logits for i in range(0, len(windows), 32)])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())
        out[name] = {"loss": round(float(loss), 4), "perplexity": round(math.exp(float(loss)), 3)}
    return out


def evaluate_stage(run_dir: Path, stage: str) -> dict:
    run_dir = Path(run_dir)
    model_dir = run_dir / stage
    if not (model_dir / "config.json").exists():
        raise UserError(f"{model_dir}: no model here (has the {stage!r} stage run?)")
    t0 = time.time()
    model = load_causal_lm(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    records = [r for _, r in read_jsonl(run_dir / "data" / "eval" / "fact_completion.jsonl")]
    result = {"stage": stage, "model": str(model_dir)}
    result["fact_completion"] = fact_completion(model, tokenizer, records)
    result["heldout"] = heldout_loss(model, tokenizer, run_dir, seq_len=min(128, model.config.max_position_embeddings - 1))
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(run_dir / "eval" / f"{stage}.json", result)
    return result


def format_table(result: dict) -> str:
    acc = result["fact_completion"]["accuracy"]
    counts = result["fact_completion"]["counts"]
    lines = [f"eval of {result['stage']} ({result['model']})", "  fact completion (greedy, stem -> value):"]
    lines += [f"    {k:<22} {v:6.1%}  (n={counts[k]})" for k, v in acc.items()]
    lines.append("  held-out corpus:")
    lines += [f"    {k:<22} loss {v['loss']:.3f}  ppl {v['perplexity']:.2f}" for k, v in result["heldout"].items()]
    return "\n".join(lines)
