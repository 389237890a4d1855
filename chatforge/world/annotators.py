"""The simulated annotators of the built-in world. The gold judge scores each answer; annotators, like the
people they stand in for, read its verdict with a little noise: they rank a prompt's K answers, rate each on
the scales seed 004's reviewers use (correctness, appropriateness, safety, completeness, fluency: 1 to 7) and
flag what is wrong with it.

    panel = Annotators(num=8, noise=0.05, seed=0)
    ranks, annotator_id, ratings, flags = panel.judge([judge.score(prompt, a) for a in answers])

Rankings and the choice of annotator draw from random.Random(seed) exactly as `chatforge rank` always drew
them, so a run's rankings stay what they were; ratings draw from a stream of their own, so their noise can
never move a ranking.
"""
import random

from chatforge.world.common import stream

TIE = 0.1  # annotators call two answers a tie when their (noisy) scores fall in the same band this wide
RATINGS = ("correctness", "appropriateness", "safety", "completeness", "fluency")
FLAG_LABELS = ("hallucination", "complied", "over_refusal", "wrong_value", "truncated", "repetition",
               "made_up", "hedged", "padding", "mixed_script", "broken_word")


def annotate(totals: list[float], noise: float, rng) -> list[int]:
    """One annotator's ranks (0 = best, ties shared) from the gold totals: each total plus Gaussian noise,
    read to the nearest band of TIE. Equally good answers (three wordings of "I don't know") come out tied
    rather than in a random order, which would teach the reward model nothing but noise."""
    bands = [round((t + rng.gauss(0.0, noise)) / TIE) if noise > 0 else round(t / TIE) for t in totals]
    return dense([sum(other > b for other in bands) for b in bands])


def dense(ranks: list[int]) -> list[int]:
    """Ranks as positions of tie groups ([0, 2, 0, 1] -> [0, 2, 0, 1]; [0, 2, 0] -> [0, 1, 0])."""
    levels = sorted(set(ranks))
    return [levels.index(r) for r in ranks]


def _seven(x: float) -> int:
    """A judge component in [-1, 1] as the 1..7 Likert scale annotators use."""
    return max(1, min(7, round(4 + 3 * x)))


def components(score) -> dict[str, float]:
    """What each rating reads off a judge Score, in [-1, 1]. Completeness, for a fact: 1 with a true related
    fact, 0.2 for the right value alone, -1 without it; for anything else, how helpful the answer is."""
    completeness = score.helpful
    if score.labels.get("behaviour") == "answer":
        completeness = 1.0 if score.labels.get("complete") else 0.2 if score.labels.get("correct") else -1.0
    return {"correctness": score.honest, "appropriateness": score.helpful, "safety": score.harmless,
            "completeness": completeness, "fluency": score.fluent}


def ratings_of(score, noise: float = 0.0, rng=None) -> dict[str, int]:
    """The annotators' 1..7 ratings of one answer. With noise, each component is read with Gaussian noise of
    that standard deviation, drawn from rng, in the order of RATINGS."""
    if noise < 0:
        raise ValueError(f"ratings_of: noise must be >= 0, got {noise}")
    if noise > 0 and rng is None:
        raise ValueError("ratings_of: noise needs a seeded rng")
    read = components(score)
    return {name: _seven(read[name] + (rng.gauss(0.0, noise) if noise > 0 else 0.0)) for name in RATINGS}


def flags_of(score) -> list[str]:
    """The labels an annotator flags on an answer, in the order of FLAG_LABELS."""
    return [name for name in FLAG_LABELS if score.labels.get(name)]


class Annotators:
    """A pool of simulated annotators, a00, a01, ...: one of them ranks, rates and flags each prompt's answers."""

    def __init__(self, num: int, noise: float, seed: int, rating_noise: float | None = None):
        """noise: the standard deviation of the noise on the totals they rank by; rating_noise: on the
        components they rate (noise when not given)."""
        if num < 1:
            raise ValueError(f"Annotators: num must be >= 1, got {num}")
        if noise < 0 or (rating_noise is not None and rating_noise < 0):
            raise ValueError(f"Annotators: noise must be >= 0, got {noise} and {rating_noise}")
        self.ids = [f"a{i:02d}" for i in range(num)]
        self.noise = noise
        self.rating_noise = noise if rating_noise is None else rating_noise
        self.rng = random.Random(seed)  # rankings, then who ranked: the order `rank` has always drawn them in
        self.rating_rng = stream(seed, "annotators/ratings")

    def judge(self, scores: list) -> tuple[list[int], str, list[dict], list[list[str]]]:
        """(ranks, annotator id, ratings, flags) for one prompt's answers, given their judge Scores."""
        ranks = annotate([s.total for s in scores], self.noise, self.rng)
        annotator = self.rng.choice(self.ids)
        ratings = [ratings_of(s, self.rating_noise, self.rating_rng) for s in scores]
        return ranks, annotator, ratings, [flags_of(s) for s in scores]
