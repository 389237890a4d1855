"""The dashboard's numbers, from the store's live events: progress and pace, each annotator's count and
speed, agreement between annotators, and (on the built-in world) each annotator's agreement with the gold
judge. Pure functions of their arguments; `now` is passed in so that tests can fix it."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from statistics import median

from chatforge.data.rankings import RATING_KEYS
from chatforge.label.agreement import competition, kendall_tau_b, krippendorff_alpha_ordinal, mean


def dashboard(tasks: list[dict], events: list[dict], n: int, now: float, window: float,
              gold: dict[str, list[int]] | None = None, names: list[str] = ()) -> dict:
    """Everything the dashboard shows. events: the store's live events; gold: task id -> the judge's ranks."""
    labels = [e for e in events if e["kind"] == "label"]
    rankable = [e for e in labels if not e["body"]["not_rankable"]]
    progress = _progress(tasks, labels, n)
    rate = _rate([e["created"] for e in labels], now, window)
    progress["pace"] = {"labels_per_hour": round(rate * 3600, 1) if rate else None, "window_seconds": window,
                        "eta_seconds": round(progress["labels"]["needed"] / rate) if rate else None}
    pairs = annotator_pairs(rankable)
    return {**progress,
            "annotators": annotator_rows(labels, events, pairs, now, window, gold, names),
            "agreement": {"pairs": pairs, "mean_tau_b": _round(mean([p["tau_b"] for p in pairs if p["tau_b"] is not None])),
                          "alpha_ordinal": _round(rank_alpha(rankable)),
                          "ratings_alpha": {c: _round(rating_alpha(labels, c)) for c in RATING_KEYS}},
            "gold": gold is not None}


def _progress(tasks: list[dict], labels: list[dict], n: int) -> dict:
    per_task = defaultdict(int)
    for e in labels:
        per_task[e["task_id"]] += 1
    counts = [per_task[t["prompt_id"]] for t in tasks]
    done = sum(c >= n for c in counts)
    return {"annotators_per_task": n,
            "tasks": {"total": len(tasks), "done": done, "started": sum(0 < c < n for c in counts),
                      "left": len(tasks) - done},
            "labels": {"total": len(labels), "needed": sum(max(0, n - c) for c in counts),
                       "not_rankable": sum(e["body"]["not_rankable"] for e in labels)}}


def _rate(times: list[float], now: float, window: float) -> float | None:
    """Labels per second over the last `window` seconds (or since the first label, if later); None if none."""
    recent = [t for t in times if t > now - window]
    if not recent:
        return None
    span = now - max(now - window, min(times))
    return len(recent) / max(span, 1.0)


def annotator_rows(labels, events, pairs, now, window, gold, names) -> list[dict]:
    """Per annotator: labels, skips, median seconds per label, labels per hour lately, mean tau-b with the
    others (over the tasks they share) and with the gold judge."""
    everyone = sorted(set(names) | {e["annotator"] for e in events})
    rows = []
    for name in everyone:
        mine = [e for e in labels if e["annotator"] == name]
        seconds = [e["body"]["seconds"] for e in mine if e["body"].get("seconds") is not None]
        rate = _rate([e["created"] for e in mine], now, window)
        theirs = [p for p in pairs if name in (p["a"], p["b"]) and p["tau_b"] is not None]
        shared = sum(p["shared"] for p in theirs)  # weighted by tasks shared: one task in common counts once
        with_others = sum(p["tau_b"] * p["shared"] for p in theirs) / shared if shared else None
        rows.append({"name": name, "labels": len(mine),
                     "skips": sum(e["kind"] == "skip" and e["annotator"] == name for e in events),
                     "median_seconds": round(median(seconds), 1) if seconds else None,
                     "labels_per_hour": round(rate * 3600, 1) if rate else None,
                     "tau_with_others": _round(with_others),
                     **_with_gold(mine, gold)})
    return rows


def _with_gold(mine: list[dict], gold: dict | None) -> dict:
    if gold is None:
        return {}
    taus = [kendall_tau_b(e["body"]["ranks"], gold[e["task_id"]]) for e in mine
            if not e["body"]["not_rankable"] and e["task_id"] in gold]
    taus = [t for t in taus if t is not None]
    return {"tau_with_gold": _round(mean(taus)), "gold_tasks": len(taus)}


def annotator_pairs(rankable: list[dict]) -> list[dict]:
    """For every two annotators who ranked a task in common: the tasks shared and their mean tau-b there
    (tasks where tau is undefined, one of them tying every answer, left out of the mean)."""
    by_task = defaultdict(list)
    for e in rankable:
        by_task[e["task_id"]].append(e)
    taus = defaultdict(list)
    for group in by_task.values():
        for x, y in combinations(sorted(group, key=lambda e: e["annotator"]), 2):
            taus[x["annotator"], y["annotator"]].append(kendall_tau_b(x["body"]["ranks"], y["body"]["ranks"]))
    return [{"a": a, "b": b, "shared": len(ts), "tau_b": _round(mean([t for t in ts if t is not None]))}
            for (a, b), ts in sorted(taus.items())]


def rank_alpha(rankable: list[dict]) -> float | None:
    """Krippendorff's ordinal alpha over every (task, answer): the competition ranks the annotators gave it."""
    return krippendorff_alpha_ordinal(list(_units(rankable, lambda body, i: competition(body["ranks"])[i])))


def rating_alpha(labels: list[dict], criterion: str) -> float | None:
    """Krippendorff's ordinal alpha of one rating criterion over every (task, answer) rated twice or more."""
    def value(body, i):
        return (body["ratings"] or [{}] * len(body["ranks"]))[i].get(criterion)
    return krippendorff_alpha_ordinal(list(_units(labels, value)))


def _units(labels: list[dict], value):
    """Per (task, answer), the values `value(body, answer)` of the labels of that task (None: not given)."""
    by_task = defaultdict(list)
    for e in labels:
        by_task[e["task_id"]].append(e["body"])
    for bodies in by_task.values():
        for i in range(len(bodies[0]["ranks"])):
            yield [value(b, i) for b in bodies]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
