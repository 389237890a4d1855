"""Several annotators' labels of one task merged into one ranking, by the Borda count.

Each annotator gives every answer one point for each answer it ranks below it and half a point for each
it ties with; the merged order sorts the answers by their total, and equal totals tie. Why Borda rather
than ranked pairs: every annotator ranks all K answers, so Borda's weakness with partial ballots does not
arise, and a Borda total is exactly the answer's number of pairwise wins summed over annotators, the very
pairs the reward model's loss is made of. It always gives a complete order with ties, the shape the
rankings format holds, where ranked pairs leaves the pairs with a zero margin unordered (a partial order
that would have to be forced into one). And a pair the annotators split evenly on comes out tied, so the
reward model, which skips ties, is not trained on a coin toss.
"""

from __future__ import annotations

from statistics import median_low


def borda_scores(rankings: list[list[int]]) -> list[float]:
    """Per answer, summed over annotators: answers it beats + half the answers it ties with.
    rankings: one rank list per annotator (0 = best, ties share a rank), all of the same length K."""
    k = len(rankings[0])
    assert all(len(r) == k for r in rankings), rankings
    return [sum(sum(r[i] < r[j] for j in range(k)) + 0.5 * sum(r[i] == r[j] for j in range(k) if j != i)
                for r in rankings) for i in range(k)]


def borda_merge(rankings: list[list[int]]) -> list[int]:
    """One rank list (0 = best, ties as equal ranks 0..G-1) from several: by Borda total, equal totals tie.
    [[0, 1, 2], [0, 2, 1], [1, 0, 2]]: totals [5, 3, 1] -> [0, 1, 2];  [[0, 1], [1, 0]]: totals [1, 1] -> [0, 0]."""
    scores = borda_scores(rankings)
    levels = sorted(set(scores), reverse=True)
    return [levels.index(s) for s in scores]


def merge_ratings(per_annotator: list[list[dict] | None], k: int) -> list[dict] | None:
    """Per answer and criterion, the median (the lower one of an even count) of the scores given: ratings
    are ordinal, so no mean. None when nobody rated anything."""
    given = [r for r in per_annotator if r is not None]
    if not given:
        return None
    merged = []
    for i in range(k):
        names = sorted({name for r in given for name in r[i]})
        merged.append({name: median_low([r[i][name] for r in given if name in r[i]]) for name in names})
    return merged if any(merged) else None


def merge_flags(per_annotator: list[list[list[str]] | None], k: int) -> list[list[str]] | None:
    """Per answer, every flag any annotator raised (sorted): a flag marks something to look at, such as
    harm or a made-up fact, and one person seeing it is reason enough. None when nobody flagged anything."""
    given = [f for f in per_annotator if f is not None]
    merged = [sorted({flag for f in given for flag in f[i]}) for i in range(k)]
    return merged if any(merged) else None
