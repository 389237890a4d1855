"""Weighted mixture of sources, packed into fixed-length windows.

Step `s` of a run always sees the same global batch, whatever the number of processes: the batch
is drawn from a generator seeded by (seed, s), and process r of N takes rows [r·B/N, (r+1)·B/N).
So the data position of a checkpoint is just its step, a resumed run sees exactly the data the
uninterrupted run would have, and a 2-process run sees the 1-process run's batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from chatforge import dist
from chatforge.data.corpus import discover_sources
from chatforge.data.tokens import load_streams
from chatforge.errors import DataError


def mixture_weights(requested: dict[str, float], token_counts: dict[str, int]) -> dict[str, float]:
    """Normalised weights per source; empty `requested` means proportional to each source's size."""
    if not requested:
        total = sum(token_counts.values())
        return {name: n / total for name, n in token_counts.items()}
    unknown = sorted(set(requested) - set(token_counts))
    if unknown:
        raise DataError(f"pretrain.mixture names sources not in the corpus: {unknown} (found: {sorted(token_counts)}); "
                        f"set pretrain.mixture to weights for your sources, or to {{}} for proportional to size")
    weights = {name: float(requested.get(name, 0.0)) for name in token_counts}
    total = sum(weights.values())
    if total <= 0:
        raise DataError("pretrain.mixture: the weights sum to zero")
    return {name: w / total for name, w in weights.items()}


class MixtureSampler:
    def __init__(self, streams: dict[str, torch.Tensor], weights: dict[str, float], seq_len: int, seed: int):
        self.names = [n for n in streams if weights.get(n, 0) > 0]
        for name in self.names:
            if streams[name].numel() < seq_len + 1:
                raise DataError(f"source {name!r} has {streams[name].numel()} tokens, fewer than one sequence ({seq_len + 1})")
        self.streams = [streams[n] for n in self.names]
        self.probs = torch.tensor([weights[n] for n in self.names], dtype=torch.float64)
        self.seq_len = seq_len
        self.seed = seed

    def global_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows [batch_size, seq_len+1], source index [batch_size]) for optimizer step `step`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        which = torch.multinomial(self.probs, batch_size, replacement=True, generator=g)
        u = torch.rand(batch_size, generator=g, dtype=torch.float64)
        rows = []
        for i in range(batch_size):
            stream = self.streams[which[i]]
            start = int(u[i] * (stream.numel() - self.seq_len))  # uniform over valid starts
            rows.append(stream[start : start + self.seq_len + 1])
        return torch.stack(rows), which

    def rank_rows(self, step: int, batch_size: int) -> torch.Tensor:
        """This process's share of step `step`'s global batch."""
        return dist.my_share(self.global_batch(step, batch_size)[0])

    def describe(self) -> str:
        return ", ".join(f"{n} {float(p):.0%} ({s.numel():,} tokens)" for n, p, s in zip(self.names, self.probs, self.streams))


def load_mixture(corpus_dir: Path, cache_dir: Path, tokenizer, weights: dict[str, float], seq_len: int,
                 seed: int) -> tuple[MixtureSampler, dict[str, torch.Tensor]]:
    """(a sampler of seq_len-token windows drawn from the sources by `weights`, the held-out stream per source)
    for the corpus under `corpus_dir`, tokenised once into `cache_dir`. Pretraining, SFT's replay and PPO-ptx
    each draw their own windows, in an order of their own (`seed`)."""
    sources = discover_sources(corpus_dir)

    def check(counts: dict[str, int]):  # before the cache is written: a corpus refused here leaves the run as it was
        normalised = mixture_weights(weights, counts)
        for name, count in counts.items():
            if normalised[name] > 0 and count < seq_len + 1:
                raise DataError(f"{Path(corpus_dir) / name}: {count} tokens of training text, fewer than one window of "
                                f"{seq_len + 1}: add text to this source, or give it no weight in pretrain.mixture")

    if dist.get().is_main:  # one process tokenises; the others read its cache
        load_streams(sources, tokenizer, cache_dir, check)
    dist.barrier()
    streams = load_streams(sources, tokenizer, cache_dir, check)
    normalised = mixture_weights(weights, {n: s["train"].numel() for n, s in streams.items()})
    sampler = MixtureSampler({n: s["train"] for n, s in streams.items()}, normalised, seq_len, seed)
    return sampler, {n: s["val"] for n, s in streams.items()}


def eval_windows(stream: torch.Tensor, seq_len: int, count: int) -> torch.Tensor:
    """Up to `count` windows [n, seq_len+1] spread evenly over a held-out stream (the same every time)."""
    span = seq_len + 1
    if stream.numel() < span:  # a very small held-out set: repeat it to fill one window
        reps = -(-span // max(stream.numel(), 1))
        return stream.repeat(reps)[:span].unsqueeze(0)
    num = min(count, stream.numel() // span)
    starts = torch.linspace(0, stream.numel() - span, num).long()
    return torch.stack([stream[s : s + span] for s in starts])
