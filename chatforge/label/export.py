"""Labels -> rankings in the format of docs/rankings.md, which `chatforge reward --rankings FILE` trains on.

Built as `Ranking` objects and written by `write_rankings`, which validates every line, so an export
can always be read back. By default the labels of one task are merged into one line (merge.py: Borda
for the order, medians for ratings, every flag raised), its annotator_id the annotators' names joined
by ","; with merge=False each label is its own line, under its annotator's name. Labels marked
not rankable are left out.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from chatforge.data.rankings import Ranking, write_rankings
from chatforge.errors import UserError
from chatforge.label.merge import borda_merge, merge_flags, merge_ratings


def to_rankings(tasks: list[dict], events: list[dict], merge: bool = True, min_labels: int = 1) -> list[Ranking]:
    """Rankings of every task with at least `min_labels` rankable labels, in the tasks' order."""
    by_task = defaultdict(list)
    for e in events:
        if e["kind"] == "label" and not e["body"]["not_rankable"]:
            by_task[e["task_id"]].append(e)
    rankings = []
    for task in tasks:
        labels = sorted(by_task.get(task["prompt_id"], []), key=lambda e: e["annotator"])
        if len(labels) < max(1, min_labels):
            continue
        if merge:
            rankings.append(_merged(task, labels))
        else:
            rankings += [_ranking(task, e["annotator"], e["body"]["ranks"], e["body"]["ratings"], e["body"]["flags"])
                         for e in labels]
    return rankings


def _merged(task: dict, labels: list[dict]) -> Ranking:
    k = len(task["answers"])
    bodies = [e["body"] for e in labels]
    return _ranking(task, ",".join(e["annotator"] for e in labels), borda_merge([b["ranks"] for b in bodies]),
                    merge_ratings([b["ratings"] for b in bodies], k), merge_flags([b["flags"] for b in bodies], k))


def _ranking(task: dict, annotator: str, ranks: list[int], ratings, flags) -> Ranking:
    return Ranking(prompt_id=task["prompt_id"], user_id=task["user_id"], annotator_id=annotator,
                   messages=task["messages"], answers=task["answers"], ranks=list(ranks),
                   kind=task.get("kind", ""), ratings=ratings, flags=flags)


def export(store, out: Path, merge: bool = True, min_labels: int = 1) -> dict:
    """Write the store's labels to `out` (atomically); what was written, counted."""
    events = store.live_events()
    rankings = to_rankings(store.tasks(), events, merge, min_labels)
    if not rankings:
        raise UserError(f"{store.path}: no task has {max(1, min_labels)} rankable label(s) yet; nothing to export")
    write_rankings(out, rankings)
    labels = [e for e in events if e["kind"] == "label"]
    return {"out": str(out), "lines": len(rankings), "tasks": len({r.prompt_id for r in rankings}),
            "labels": len(labels), "not_rankable": sum(e["body"]["not_rankable"] for e in labels),
            "merged": merge}
