"""Throughput accounting: the machine's fp32 matmul ceiling, measured in the same run as the model."""

from __future__ import annotations

import statistics
import time

import torch

from chatforge import dist


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device = torch.device("cpu"), sizes=(512, 1024, 2048), repeats: int = 5) -> float:
    """Best median FLOP/s of an fp32 square matmul over `sizes`: what this process can do at most right now."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        a @ b  # warm-up: thread pool, caches
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


class Throughput:
    """Tokens/s and model FLOP/s over a sliding window of recent steps."""

    def __init__(self, flops_per_token: float, window: int = 20):
        self.flops_per_token = flops_per_token
        self.window = window
        self.samples: list[tuple[float, int]] = []  # (seconds, tokens) per step

    def add(self, seconds: float, tokens: int):
        self.samples = (self.samples + [(seconds, tokens)])[-self.window :]

    @property
    def tokens_per_s(self) -> float:
        secs = sum(s for s, _ in self.samples)
        return sum(t for _, t in self.samples) / secs if secs else 0.0

    @property
    def flops_per_s(self) -> float:
        return self.tokens_per_s * self.flops_per_token


def machine_ceiling(d: dist.Dist) -> float:
    """fp32 matmul FLOP/s of the whole machine now: every process measures at once, the rates add up."""
    return float(dist.all_reduce_sum(torch.tensor(matmul_ceiling(d.device))))
