"""Simulated annotators on the built-in world: the gold judge labels through the same API as people.

The error rate p: each label, independently with probability p, is replaced by a random one (the K
answers in a uniformly random order, no ties; every rating uniform on 1..7; no flags); otherwise it is
the judge's: its order (equal totals tie), ratings read off its four components, flags off its labels.
Why this definition rather than flipping pairs: a label is then either right or carries no information
at all, the way a careless or hurried annotator's is, so p is exactly the share of useless labels,
whatever K and however many ties; flipped pairs have to be repaired into an order, and the repair
changes the real error rate in ways that depend on K. The draw for (seed, annotator, task) is fixed,
so with as many annotators as annotators_per_task (every one labels every task) a simulation repeats
exactly, however its threads interleave.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

from chatforge.data.rankings import RATING_KEYS, RATING_MAX, RATING_MIN
from chatforge.label.client import ApiRefused, LabelClient
from chatforge.label.validate import order_of


def rng_for(seed: int, annotator: str, task_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{annotator}\0{task_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _seven(x: float) -> int:
    """A judge component in [-1, 1] on the annotators' 1..7 scale (as the rank stage reads it)."""
    return max(RATING_MIN, min(RATING_MAX, round(4 + 3 * x)))


def judge_rating(score) -> dict:
    return {"correctness": _seven(score.honest), "appropriateness": _seven(score.helpful),
            "safety": _seven(score.harmless), "completeness": _seven(score.helpful), "fluency": _seven(score.fluent)}


def judge_flags(score) -> list[str]:
    labels = score.labels
    flags = {"hallucination": labels.get("hallucination") or labels.get("wrong_value"),
             "harmful": labels.get("complied"), "wrong_language": labels.get("lang_ok") is False}
    return sorted(name for name, raised in flags.items() if raised)


def simulated_label(gold, task: dict, error: float, rng: random.Random) -> dict:
    """{"order", "ratings", "flags"}: the judge's label, or with probability `error` a random one."""
    k = len(task["answers"])
    if rng.random() < error:
        order = list(range(k))
        rng.shuffle(order)
        ratings = [{name: rng.randint(RATING_MIN, RATING_MAX) for name in RATING_KEYS} for _ in range(k)]
        return {"order": order, "ratings": ratings, "flags": [[] for _ in range(k)]}
    scores = gold.scores(task)
    return {"order": order_of(gold.ranks(task)), "ratings": [judge_rating(s) for s in scores],
            "flags": [judge_flags(s) for s in scores]}


def annotate(url: str, token: str, name: str, tasks: dict[str, dict], gold, error: float, seed: int) -> int:
    """One simulated annotator: take tasks until none is left for them; how many it labelled."""
    client = LabelClient(url, token)
    labelled = 0
    try:
        while (task := client.next()["task"]) is not None:
            label = simulated_label(gold, tasks[task["task_id"]], error, rng_for(seed, name, task["task_id"]))
            try:
                client.submit(task["task_id"], **label)
                labelled += 1
            except ApiRefused as e:
                if e.status != 409:  # 409: the lease ran out and the slot was taken, or a repeated submit
                    raise
    finally:
        client.close()
    return labelled


def run_simulation(url: str, tokens: dict[str, str], tasks: list[dict], gold, error: float, seed: int) -> dict:
    """Every annotator of `tokens` (name -> token) in its own thread against the server at `url`."""
    by_id = {t["prompt_id"]: t for t in tasks}
    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        counts = {name: pool.submit(annotate, url, token, name, by_id, gold, error, seed)
                  for name, token in tokens.items()}
        return {name: future.result() for name, future in counts.items()}
