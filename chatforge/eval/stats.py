"""Statistics of the evaluation, pure functions: AUC, intervals, win rates, rank correlation, best of K."""

from __future__ import annotations

import numpy as np


def auc(positive: list[float], negative: list[float]) -> float:
    """The chance that a random positive scores above a random negative, ties counting half:
    1.0 separates them perfectly, 0.5 is chance. Needs no threshold."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def auc_by_lang(name: str, scored: list[tuple[float, str, bool]]) -> dict:
    """{name: auc, name/zh: ..., name/en: ...} of (score, lang, harmful) items, harmful against benign; a language
    with only one kind has no entry."""
    out = {}
    for lang in (None, "zh", "en"):
        pick = lambda harmful: [s for s, la, h in scored if h == harmful and lang in (None, la)]
        if pick(True) and pick(False):
            out[name if lang is None else f"{name}/{lang}"] = round(auc(pick(True), pick(False)), 4)
    return out


def interval95(xs: list[float]) -> tuple[float, float]:
    """A 95% interval for the mean of xs, one value per prompt: mean ± 1.96 standard errors (the normal
    approximation, fine for the hundreds of prompts evaluated). It says how far the mean would move on another
    draw of prompts like these; a difference whose interval holds 0 (a win rate whose holds 50%) is noise. It
    knows nothing of the spread between training runs, which comes on top."""
    n = len(xs)
    mean = sum(xs) / n
    se = (sum((x - mean) ** 2 for x in xs) / max(n - 1, 1) / n) ** 0.5
    return round(mean - 1.96 * se, 4), round(mean + 1.96 * se, 4)


def win_rate(gold: dict[str, float], against: dict[str, float], records: list[dict]) -> dict:
    """A judge's verdict (the gold judge, or a reward model), prompt by prompt, of one model's greedy answers against
    another's: a higher score wins, an equal one is a tie (counted half); overall and per prompt kind (records
    without a "kind" count only overall), with a 95% interval."""
    out = {}
    for kind in [None] + sorted({r["kind"] for r in records if r.get("kind")}):
        ids = [r["id"] for r in records if kind in (None, r.get("kind")) and r["id"] in gold and r["id"] in against]
        outcomes = [1.0 if gold[i] > against[i] + 1e-9 else 0.5 if abs(gold[i] - against[i]) <= 1e-9 else 0.0 for i in ids]
        if ids:
            out[kind or "all"] = {"win_rate": round(sum(outcomes) / len(ids), 4), "wins": outcomes.count(1.0),
                                  "ties": outcomes.count(0.5), "losses": outcomes.count(0.0), "ci95": interval95(outcomes)}
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (ties get their average rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # average the ranks of tied values
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    return pearson(ranks(x).tolist(), ranks(y).tolist())


def pearson(x: list[float], y: list[float]) -> float:

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def best_of(picks: list[tuple[float, float, float]]) -> dict:
    """What choosing among K answers by the reward model is worth in gold reward, which is what PPO climbs.
    picks: per prompt, (mean gold reward of its answers, gold reward of the answer the RM scores highest, the best
    one's). Returns their means over prompts and `share`, the part of the gap from a random answer to the best
    that the RM's pick closes: 1 always picks the best, 0 is no better than chance, below 0 worse than chance."""
    if not picks:
        return {"prompts": 0}
    random_, picked, best = (sum(p[i] for p in picks) / len(picks) for i in range(3))
    return {"prompts": len(picks), "random": round(random_, 4), "reward_model": round(picked, 4), "best": round(best, 4),
            "share": round((picked - random_) / (best - random_), 4) if best > random_ else None,
            "gain_ci95": interval95([p[1] - p[0] for p in picks])}  # the RM's pick over a random answer


def agreement(better: float, worse: float) -> float:
    """1 if the scores order the pair as the reference does, 0 if the other way round, 0.5 for a tie."""
    return 1.0 if better > worse else 0.5 if better == worse else 0.0


def accuracies(results: dict[str, list[float]]) -> dict:
    """Pairwise accuracy and the number of pairs, per key of `results`."""
    return {"pairwise_accuracy": {k: round(sum(v) / len(v), 4) for k, v in sorted(results.items())},
            "pairs": {k: len(v) for k, v in sorted(results.items())}}


def verdict(low: float, high: float) -> str:
    """What a difference with this 95% interval is: a gain or a loss if the interval leaves out 0, else noise."""
    return "gain" if low > 0 else "loss" if high < 0 else "within noise"


def paired_delta(after: dict[str, float], before: dict[str, float]) -> dict:
    """The mean of after - before over the keys both have (prompts, held-out windows), with its 95% interval and
    whether that is a gain, a loss or noise."""
    keys = [k for k in after if k in before]
    diffs = [after[k] - before[k] for k in keys]
    low, high = interval95(diffs)
    return {"delta": round(sum(diffs) / len(diffs), 4), "ci95": [low, high], "n": len(keys), "verdict": verdict(low, high)}
