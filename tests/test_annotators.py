"""The simulated annotators: ranks from noisy totals read in bands (as `chatforge rank` has always made them),
ratings on the 1..7 scales with noise from a generator of their own, and flags."""
import random

import pytest

from chatforge.world.annotators import (FLAG_LABELS, RATINGS, TIE, Annotators, annotate, components, dense,
                                        flags_of, ratings_of)
from chatforge.world.judge import Score, total_of


def score(helpful, honest, harmless, fluent, **labels):
    return Score(helpful, honest, harmless, fluent, total_of(helpful, honest, harmless, fluent), labels)


RIGHT = score(1.0, 1.0, 1.0, 1.0, behaviour="answer", correct=True, complete=True)
BARE = score(0.6, 1.0, 1.0, 1.0, behaviour="answer", correct=True)
PADDED = score(0.6, 1.0, 1.0, 0.5, behaviour="answer", correct=True, padding=True)
WRONG = score(-1.0, -1.0, 0.0, 1.0, behaviour="answer", wrong_value=True)
REFUSAL = score(1.0, 1.0, 1.0, 1.0, behaviour="refuse", refused=True)


def test_dense():
    assert dense([0, 2, 0, 1]) == [0, 2, 0, 1]
    assert dense([0, 2, 0]) == [0, 1, 0]
    assert dense([3, 3]) == [0, 0]


def test_annotate_without_noise_ties_totals_in_one_band():
    assert annotate([0.9, 0.9, 0.15, -0.45], 0.0, random.Random(0)) == [0, 0, 1, 2]
    assert annotate([1.0, 0.96, 0.5], 0.0, random.Random(0)) == [0, 0, 1]  # 0.96 rounds to the band of 1.0
    assert annotate([1.0, 0.9], 0.0, random.Random(0)) == [0, 1]  # one TIE apart: told apart
    assert TIE == 0.1


def test_annotate_keeps_its_outputs_and_its_draws():
    """The values `chatforge rank` produced before the annotators moved here (same seeds, same totals), and
    one Gaussian draw per answer when there is noise, none without: the rankings of a run stay byte for byte."""
    assert annotate([1.0, 0.9, 0.825, 0.775, 0.06], 0.05, random.Random(0)) == [0, 1, 1, 1, 2]
    assert annotate([1.0, 0.9, 0.825, 0.775, 0.06], 0.05, random.Random(1)) == [0, 1, 2, 3, 4]
    assert annotate([0.3, 0.31, 0.29, -0.2], 0.3, random.Random(7)) == [1, 0, 1, 2]
    used, fresh = random.Random(3), random.Random(3)
    annotate([0.1, 0.2, 0.3], 0.05, used)
    for _ in range(3):
        fresh.gauss(0.0, 0.05)
    assert used.random() == fresh.random()
    untouched = random.Random(3)
    annotate([0.1, 0.2, 0.3], 0.0, untouched)
    assert untouched.random() == random.Random(3).random()


def test_ratings_read_the_components():
    assert ratings_of(RIGHT) == {"correctness": 7, "appropriateness": 7, "safety": 7, "completeness": 7, "fluency": 7}
    assert list(ratings_of(RIGHT)) == list(RATINGS)
    bare = ratings_of(BARE)
    assert bare["completeness"] == 5 and bare["appropriateness"] == 6 and bare["correctness"] == 7
    assert ratings_of(PADDED)["fluency"] == 6 and ratings_of(PADDED)["completeness"] == 5
    wrong = ratings_of(WRONG)
    assert wrong["correctness"] == 1 and wrong["completeness"] == 1 and wrong["safety"] == 4
    assert components(REFUSAL)["completeness"] == REFUSAL.helpful  # no fact to complete: how much it helps


def test_ratings_noise_is_seeded_and_spreads_around_the_reading():
    noisy = [ratings_of(BARE, 0.3, random.Random(seed)) for seed in range(200)]
    assert noisy == [ratings_of(BARE, 0.3, random.Random(seed)) for seed in range(200)]
    for name in RATINGS:
        values = [r[name] for r in noisy]
        assert all(1 <= v <= 7 for v in values) and len(set(values)) > 1, name
        assert abs(sum(values) / len(values) - ratings_of(BARE)[name]) < 0.5, name
    assert ratings_of(BARE, 0.0, None) == ratings_of(BARE)
    with pytest.raises(ValueError, match="rng"):
        ratings_of(BARE, 0.1)
    with pytest.raises(ValueError, match="noise"):
        ratings_of(BARE, -0.1, random.Random(0))


def test_flags():
    assert flags_of(PADDED) == ["padding"]
    assert flags_of(score(-1, -1, 0, -1, hallucination=True, truncated=True, wrong_value=False)) == [
        "hallucination", "truncated"]
    assert flags_of(RIGHT) == []
    assert set(FLAG_LABELS) >= {"made_up", "hedged", "mixed_script", "broken_word"}


def _reference_loop(samples, num, noise, seed):
    """How `chatforge rank` drew before the annotators moved: per prompt, the ranks, then the annotator."""
    rng, ids, out = random.Random(seed), [f"a{i:02d}" for i in range(num)], []
    for totals in samples:
        ranks = annotate(totals, noise, rng)
        out.append((ranks, rng.choice(ids)))
    return out


def test_panel_draws_rankings_as_rank_did_and_ratings_apart():
    groups = [[RIGHT, BARE, PADDED], [BARE, WRONG], [REFUSAL, WRONG, BARE, RIGHT]] * 5
    expected = _reference_loop([[s.total for s in g] for g in groups], 8, 0.05, 3)
    for rating_noise in (0.0, 0.5):  # however noisy the ratings, the rankings and annotators are the same
        panel = Annotators(8, 0.05, 3, rating_noise=rating_noise)
        got = [panel.judge(g) for g in groups]
        assert [(ranks, who) for ranks, who, _, _ in got] == expected
        assert all(len(ratings) == len(flags) == len(g) for (_, _, ratings, flags), g in zip(got, groups))
    quiet = [Annotators(8, 0.05, 3, rating_noise=0.0).judge(g)[2] for g in groups]
    loud = [Annotators(8, 0.05, 3, rating_noise=0.5).judge(g)[2] for g in groups]
    assert quiet == [[ratings_of(s) for s in g] for g in groups] and quiet != loud
    assert Annotators(8, 0.05, 3).rating_noise == 0.05
    with pytest.raises(ValueError, match="num"):
        Annotators(0, 0.05, 3)
    with pytest.raises(ValueError, match="noise"):
        Annotators(2, -1.0, 3)
