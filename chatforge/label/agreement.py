"""How far annotators agree: Kendall's tau-b between two rankings, Krippendorff's alpha over all of them.

Ranks follow docs/rankings.md: one number per answer, lower is better, equal numbers tie. Both statistics
see only the order the numbers give (tau) or their ordinal positions (alpha), so dense ranks
([0, 1, 1, 2]) and competition ranks ([0, 1, 1, 3]) of the same order give the same tau; alpha is
computed on competition ranks (`competition`), so that "the worst of four" is the same value for everyone.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations


def competition(ranks: list[int]) -> list[int]:
    """Per answer, the number of answers strictly better: [0, 1, 1, 2] -> [0, 1, 1, 3]."""
    return [sum(other < r for other in ranks) for r in ranks]


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of two rankings of the same items (ties allowed), in [-1, 1]:
        (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)),  n0 = n(n-1)/2,
    where ties_x counts the pairs tied in x. A pair tied in either ranking is neither concordant nor
    discordant. None when it is undefined: fewer than two items, or one ranking ties everything."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: {len(x)} against {len(y)} items")
    concordant = discordant = tied_x = tied_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    n0 = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((n0 - tied_x) * (n0 - tied_y))
    return (concordant - discordant) / denominator if denominator else None


def krippendorff_alpha_ordinal(units: list[list[int | None]]) -> float | None:
    """Krippendorff's alpha for ordinal data with missing values (Krippendorff 2011, "Computing
    Krippendorff's alpha-reliability"). `units[u]` holds one value per coder, None where that coder gave
    none; a unit with fewer than two values is not pairable and is left out.

    From the coincidence matrix o[c][k] = sum over units of (c-k pairs of values in the unit) / (m_u - 1),
    n_c = sum_k o[c][k], n = sum_c n_c, and the ordinal distance
        d(c, k) = (sum of n_g for g from c to k  -  (n_c + n_k) / 2) ** 2,
    alpha = 1 - (n - 1) * sum o[c][k] d(c, k) / sum n_c n_k d(c, k).
    1 is perfect agreement, 0 agreement by chance. None when it is undefined (no pairable unit, or
    every value the same, so that chance agreement is already perfect)."""
    coincidence = _coincidences(units)
    totals = Counter()
    for (c, _), count in coincidence.items():
        totals[c] += count
    n = sum(totals.values())
    if n == 0:
        return None
    values = sorted(totals)
    distance = _ordinal_distances(values, totals)
    observed = sum(count * distance[c, k] for (c, k), count in coincidence.items())
    expected = sum(totals[c] * totals[k] * distance[c, k] for c in values for k in values)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def _coincidences(units: list[list[int | None]]) -> Counter:
    """o[(c, k)]: every ordered pair of values from different coders of a unit, weighted 1 / (m_u - 1)."""
    coincidence = Counter()
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincidence[values[i], values[j]] += 1.0 / (m - 1)
    return coincidence


def _ordinal_distances(values: list, totals: Counter) -> dict:
    """d(c, k) for every pair of the values seen, ordinal metric (see krippendorff_alpha_ordinal)."""
    distance = {}
    for a, c in enumerate(values):
        for b, k in enumerate(values):
            lo, hi = min(a, b), max(a, b)
            between = sum(totals[values[g]] for g in range(lo, hi + 1))
            distance[c, k] = (between - (totals[c] + totals[k]) / 2) ** 2
    return distance


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
