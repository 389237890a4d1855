"""The labelling app's pure parts, against hand-computed values: agreement statistics, the Borda merge,
label validation, the samples reader, the export's round trip through read_rankings, the simulated
annotators' error rate and the AI annotator's reply parser."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from chatforge.config import load_recipe
from chatforge.data.rankings import read_rankings
from chatforge.errors import ConfigError, DataError
from chatforge.label.agreement import competition, kendall_tau_b, krippendorff_alpha_ordinal
from chatforge.label.ai import parse_reply
from chatforge.label.config import LabelConfig
from chatforge.label.errors import LabelError
from chatforge.label.export import to_rankings
from chatforge.label.merge import borda_merge, borda_scores, merge_flags, merge_ratings
from chatforge.label.simulate import rng_for, simulated_label
from chatforge.label.stats import annotator_pairs, dashboard
from chatforge.label.tasks import display_order, read_tasks
from chatforge.label.validate import order_of, parse_label, ranks_of

# ---- Kendall's tau-b


def test_tau_b_by_hand():
    assert kendall_tau_b([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau_b([0, 1, 2], [2, 1, 0]) == -1.0
    # pairs (0,1), (0,2) concordant; (1,2) tied in x only: (2 - 0) / sqrt((3 - 1) * (3 - 0))
    assert kendall_tau_b([0, 1, 1], [0, 1, 2]) == pytest.approx(2 / math.sqrt(6))
    # 4 items: x = [0,1,2,3], y = [1,0,3,2]: 4 concordant, 2 discordant, no ties -> 2/6
    assert kendall_tau_b([0, 1, 2, 3], [1, 0, 3, 2]) == pytest.approx(1 / 3)
    # ties in both: x = [0,0,1,1], y = [0,1,0,1]: x ties 2 pairs, y ties 2; concordant (0,3), discordant (1,2)
    assert kendall_tau_b([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    # dense and competition ranks of one order give the same tau
    assert kendall_tau_b([0, 1, 1, 2], [3, 0, 1, 2]) == kendall_tau_b(competition([0, 1, 1, 2]), [3, 0, 1, 2])


def test_tau_b_undefined_when_one_side_ties_everything():
    assert kendall_tau_b([0, 0, 0], [0, 1, 2]) is None
    assert kendall_tau_b([0], [0]) is None
    with pytest.raises(ValueError):
        kendall_tau_b([0, 1], [0, 1, 2])


def test_competition_ranks():
    assert competition([0, 1, 1, 2]) == [0, 1, 1, 3]
    assert competition([1, 0, 1]) == [1, 0, 1]


# ---- Krippendorff's alpha


def test_alpha_by_hand():
    # units (1,1), (2,2), (1,2): o11 = o22 = 2, o12 = o21 = 1, n1 = n2 = 3, n = 6; d(1,2) = (6 - 3)^2 = 9
    # alpha = 1 - (n - 1) * (1*9 + 1*9) / (3*3*9 + 3*3*9) = 1 - 5 * 18 / 162 = 4/9
    assert krippendorff_alpha_ordinal([[1, 1], [2, 2], [1, 2]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha_ordinal([[1, 1, 1], [2, 2, None], [3, 3, 3]]) == 1.0
    # a unit with one value is not pairable and changes nothing
    assert krippendorff_alpha_ordinal([[1, 1], [2, 2], [1, 2], [3, None]]) == pytest.approx(4 / 9)


def test_alpha_matches_krippendorffs_published_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units, values
    missing; alpha ordinal = 0.815."""
    n = None
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3]
    c = [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]
    assert krippendorff_alpha_ordinal([list(u) for u in zip(a, b, c, d)]) == pytest.approx(0.815, abs=5e-4)


def test_alpha_undefined():
    assert krippendorff_alpha_ordinal([[1, None], [None, 2]]) is None  # nothing pairable
    assert krippendorff_alpha_ordinal([[2, 2], [2, 2]]) is None  # one value only: chance agreement is perfect


# ---- merging


def test_borda_by_hand():
    # totals: answer 0 gets 2 + 2 + 1 = 5, answer 1 gets 1 + 0 + 2 = 3, answer 2 gets 0 + 1 + 0 = 1
    assert borda_scores([[0, 1, 2], [0, 2, 1], [1, 0, 2]]) == [5, 3, 1]
    assert borda_merge([[0, 1, 2], [0, 2, 1], [1, 0, 2]]) == [0, 1, 2]
    assert borda_merge([[0, 1], [1, 0]]) == [0, 0]  # an even split is a tie: the reward model skips it
    # ties count half: answer 0 gets (1 + .5) + 2, answer 1 (1 + .5) + 1, answer 2 0 + 0
    assert borda_scores([[0, 0, 1], [0, 1, 2]]) == [3.5, 2.5, 0]
    assert borda_merge([[0, 1, 2], [2, 0, 1], [1, 2, 0]]) == [0, 0, 0]  # a Condorcet cycle: all tie
    assert borda_merge([[1, 0, 1, 2]]) == [1, 0, 1, 2]  # one annotator: their own order


def test_merge_ratings_and_flags():
    a = [{"correctness": 7, "fluency": 5}, {}]
    b = [{"correctness": 3}, {"safety": 2}]
    c = [{"correctness": 4, "fluency": 6}, {}]
    assert merge_ratings([a, b, c], 2) == [{"correctness": 4, "fluency": 5}, {"safety": 2}]  # medians (lower of two)
    assert merge_ratings([None, None], 2) is None
    assert merge_flags([[["harmful"], []], [["hallucination"], []], None], 2) == [["hallucination", "harmful"], []]
    assert merge_flags([[[], []]], 2) is None


# ---- validation of a label


def test_ranks_of_reads_ties_and_refuses_non_orderings():
    assert ranks_of([2, [0, 3], 1], 4) == [1, 2, 0, 1]
    assert ranks_of([[1], 0], 2) == [1, 0]
    assert order_of([0, 2, 0, 1]) == [[0, 2], 3, 1] and ranks_of(order_of([1, 2, 0, 1]), 4) == [1, 2, 0, 1]
    for order, message in [([0, 0, 1], "index 0 appears twice"), ([0, 1], "index 2 is missing"),
                           ([0, 1, 3], "index 3 is out of range for 3 answers"), ([0, [], 1, 2], "empty tie group"),
                           ([0, "1", 2], "must be an answer index"), ([0, True, 2], "must be an answer index"),
                           ([], "non-empty list"), ("0,1,2", "non-empty list")]:
        with pytest.raises(LabelError, match=message) as e:
            ranks_of(order, 3)
        assert e.value.status == 400 and e.value.field == "order"


def test_parse_label_names_the_field():
    label = parse_label({"task_id": "t", "order": [1, 0], "ratings": [{"fluency": 7}, None],
                         "flags": [["harmful", "harmful"], []]}, 2)
    assert label == {"ranks": [1, 0], "ratings": [{"fluency": 7}, {}], "flags": [["harmful"], []], "not_rankable": False}
    for body, field in [({"task_id": "t", "order": [0, 1], "ratings": [{"fluency": 8}, {}]}, "ratings[0].fluency"),
                        ({"task_id": "t", "order": [0, 1], "ratings": [{}, {"fluency": 0}]}, "ratings[1].fluency"),
                        ({"task_id": "t", "order": [0, 1], "ratings": [{}, {"fluency": 6.5}]}, "ratings[1].fluency"),
                        ({"task_id": "t", "order": [0, 1], "ratings": [{"helpful": 6}, {}]}, "ratings[0].helpful"),
                        ({"task_id": "t", "order": [0, 1], "ratings": [{}]}, "ratings"),
                        ({"task_id": "t", "order": [0, 1], "flags": [["rude"], []]}, "flags[0]"),
                        ({"task_id": "t", "order": [0, 1], "not_rankable": "yes"}, "not_rankable"),
                        ({"task_id": "t", "oder": [0, 1]}, "oder"),
                        ({"task_id": "t"}, "order")]:
        with pytest.raises(LabelError) as e:
            parse_label(body, 2)
        assert e.value.status == 400 and e.value.field == field and f"'{field}'" in e.value.message


# ---- tasks


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def test_read_tasks_defaults_and_errors(tmp_path):
    tasks = read_tasks(_write(tmp_path / "s.jsonl", [
        {"prompt": "法国的首都是哪里？", "answers": ["巴黎。", "不知道。"]},
        {"prompt_id": "x", "user_id": "u1", "messages": [{"role": "user", "content": "hi"}], "answers": ["a", "b", "c"],
         "finished": [True, False, True], "kind": "chat", "gold": {"lang": "en"}, "order": [0, 1, 2]}]))
    assert tasks[0]["prompt_id"].startswith("p-") and tasks[0]["user_id"] == tasks[0]["prompt_id"]
    assert tasks[0]["finished"] == [True, True]
    assert tasks[1]["kind"] == "chat" and tasks[1]["gold"] == {"lang": "en"} and "order" not in tasks[1]
    bad = [({"prompt": "q", "answers": ["only one"]}, "field 'answers': must be a list of 2 to 16 strings, got 1 answers"),
           ({"prompt": "q", "answers": ["a", " "]}, "field 'answers[1]': must be a non-empty string"),
           ({"prompt": "q", "answers": ["a", "b"], "finished": [True]}, "field 'finished'"),
           ({"prompt": "q", "answers": ["a", "b"], "prompt_id": 3}, "field 'prompt_id'"),
           ({"answers": ["a", "b"]}, "field 'messages'"),
           ("{not json", "broken JSON line")]
    for line, message in bad:
        with pytest.raises(DataError, match=r"s2.jsonl:2: .*" + re.escape(message)):
            read_tasks(_write(tmp_path / "s2.jsonl", [{"prompt": "ok", "answers": ["a", "b"]}, line]))
    with pytest.raises(DataError, match="s3.jsonl:2: field 'prompt_id': 'x' appears twice .first on line 1."):
        read_tasks(_write(tmp_path / "s3.jsonl", [{"prompt_id": "x", "prompt": "q", "answers": ["a", "b"]}] * 2))


def test_display_order_is_per_annotator_and_stable():
    orders = {tuple(display_order("t1", name, 4, shuffle=True)) for name in ("a", "b", "c", "d", "e", "f")}
    assert len(orders) > 1 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert display_order("t1", "a", 4, True) == display_order("t1", "a", 4, True)
    assert display_order("t1", "a", 4, False) == [0, 1, 2, 3]


def test_label_config_in_the_recipe():
    assert load_recipe(None).label == LabelConfig()
    assert load_recipe(None, ["label.annotators_per_task=5", "label.lease_seconds=60"]).label.lease_seconds == 60.0
    with pytest.raises(ConfigError, match="label.annotators_per_task must be in"):
        load_recipe(None, ["label.annotators_per_task=0"])
    with pytest.raises(ConfigError, match="unknown key 'label.n'"):
        load_recipe(None, ["label.n=2"])


# ---- export


def _task(i, k=3):
    return {"prompt_id": f"t{i}", "user_id": f"u{i % 2}", "messages": [{"role": "user", "content": f"问题 {i}"}],
            "answers": [f"answer {j} <b>{i}</b>" for j in range(k)], "finished": [True] * k, "kind": "fact"}


def _label(task_id, annotator, ranks, ratings=None, flags=None, not_rankable=False, created=0.0, seconds=5.0):
    return {"kind": "label", "task_id": task_id, "annotator": annotator, "created": created,
            "body": {"ranks": ranks, "ratings": ratings, "flags": flags, "not_rankable": not_rankable, "seconds": seconds}}


def test_export_round_trips_through_read_rankings(tmp_path):
    from chatforge.data.rankings import write_rankings

    tasks = [_task(0), _task(1), _task(2)]
    events = [_label("t0", "b", [0, 1, 2], ratings=[{"fluency": 7}, {}, {}], flags=[["harmful"], [], []]),
              _label("t0", "a", [0, 2, 1], ratings=[{"fluency": 5}, {}, {}]),
              _label("t0", "c", [1, 0, 2]),
              _label("t1", "a", [1, 0, 0]),
              _label("t2", "a", [0, 1, 2], not_rankable=True),
              {"kind": "skip", "task_id": "t2", "annotator": "b", "created": 0.0, "body": {}}]
    merged = to_rankings(tasks, events)
    assert [r.prompt_id for r in merged] == ["t0", "t1"]  # t2: not rankable only
    assert merged[0].annotator_id == "a,b,c" and merged[0].ranks == [0, 1, 2] and merged[0].user_id == "u0"
    assert merged[0].ratings == [{"fluency": 5}, {}, {}] and merged[0].flags == [["harmful"], [], []]
    write_rankings(tmp_path / "merged.jsonl", merged)
    back, report = read_rankings(tmp_path / "merged.jsonl")
    assert back == merged and report["skipped"] == 0
    single = to_rankings(tasks, events, merge=False)
    assert [(r.prompt_id, r.annotator_id) for r in single] == [("t0", "a"), ("t0", "b"), ("t0", "c"), ("t1", "a")]
    write_rankings(tmp_path / "single.jsonl", single)
    assert read_rankings(tmp_path / "single.jsonl")[0] == single
    assert [r.prompt_id for r in to_rankings(tasks, events, min_labels=2)] == ["t0"]


# ---- the dashboard's numbers


def test_dashboard_numbers_by_hand():
    tasks = [_task(0), _task(1), _task(2)]
    events = [_label("t0", "a", [0, 1, 2], created=100.0, seconds=10.0, ratings=[{"fluency": 7}, {"fluency": 1}, {}]),
              _label("t0", "b", [0, 2, 1], created=200.0, seconds=20.0, ratings=[{"fluency": 7}, {"fluency": 1}, {}]),
              _label("t1", "a", [0, 1, 2], created=300.0, seconds=30.0),
              _label("t1", "b", [0, 1, 2], created=400.0, seconds=40.0),
              {"kind": "skip", "task_id": "t2", "annotator": "b", "created": 450.0, "body": {}}]
    gold = {"t0": [0, 1, 2], "t1": [2, 1, 0]}
    s = dashboard(tasks, events, n=2, now=500.0, window=3600.0, gold=gold, names=["a", "b", "c"])
    assert s["tasks"] == {"total": 3, "done": 2, "started": 0, "left": 1}
    assert s["labels"] == {"total": 4, "needed": 2, "not_rankable": 0}
    # 4 labels since the first one, 400 s ago: 36 per hour; 2 still needed -> 200 s
    assert s["pace"]["labels_per_hour"] == 36.0 and s["pace"]["eta_seconds"] == 200
    rows = {r["name"]: r for r in s["annotators"]}
    assert rows["a"]["labels"] == 2 and rows["a"]["median_seconds"] == 20.0 and rows["c"]["labels"] == 0
    assert rows["b"]["skips"] == 1
    # t0: tau([0,1,2],[0,2,1]) = 1/3; t1: 1 -> pair mean 2/3
    assert s["agreement"]["pairs"] == [{"a": "a", "b": "b", "shared": 2, "tau_b": round(2 / 3, 4)}]
    assert rows["a"]["tau_with_others"] == round(2 / 3, 4)
    # a vs gold: t0 tau 1, t1 tau -1 -> 0; b vs gold: t0 1/3, t1 -1 -> -1/3
    assert rows["a"]["tau_with_gold"] == 0.0 and rows["b"]["tau_with_gold"] == round(-1 / 3, 4)
    assert s["agreement"]["ratings_alpha"]["fluency"] == 1.0  # both gave 7 and 1
    assert s["agreement"]["alpha_ordinal"] == pytest.approx(
        krippendorff_alpha_ordinal([[0, 0], [1, 2], [2, 1], [0, 0], [1, 1], [2, 2]]), abs=1e-4)


def test_pairs_skip_undefined_tau():
    events = [_label("t0", "a", [0, 0, 0]), _label("t0", "b", [0, 1, 2])]
    assert annotator_pairs(events) == [{"a": "a", "b": "b", "shared": 1, "tau_b": None}]


# ---- simulated annotators


class FixedGold:
    """The judge of a task whose answers it ranks 0 < 1 < 2 < 3 (with fixed scores)."""

    class Score:
        helpful = honest = harmless = fluent = 1.0
        labels = {"hallucination": False, "complied": False, "lang_ok": True}

    def ranks(self, task):
        return [0, 1, 2, 3]

    def scores(self, task):
        return [self.Score()] * 4


def test_simulated_error_rate_is_the_share_of_random_labels():
    task = {"prompt_id": "t", "answers": ["a", "b", "c", "d"]}
    gold = FixedGold()
    exact = simulated_label(gold, task, 0.0, random.Random(0))
    assert exact["order"] == [0, 1, 2, 3] and exact["ratings"][0]["correctness"] == 7 and exact["flags"][0] == []
    labels = [simulated_label(gold, task, 0.25, rng_for(0, "sim-00", f"t{i}")) for i in range(4000)]
    wrong = sum(label["order"] != [0, 1, 2, 3] for label in labels) / len(labels)
    # a random order of 4 equals the judge's 1 time in 24: expected 0.25 * 23/24 = 0.2396
    assert wrong == pytest.approx(0.25 * 23 / 24, abs=0.015)
    assert all(simulated_label(gold, task, 1.0, random.Random(i))["flags"] == [[]] * 4 for i in range(5))
    # the same (seed, annotator, task) always draws the same label
    assert simulated_label(gold, task, 0.5, rng_for(1, "x", "t")) == simulated_label(gold, task, 0.5, rng_for(1, "x", "t"))


# ---- the AI annotator's reply


def test_parse_reply_maps_letters_to_task_indices():
    task = {"task_id": "t", "k": 3, "answers": [{"index": 2, "text": "x"}, {"index": 0, "text": "y"},
                                                {"index": 1, "text": "z"}]}
    reply = 'Sure! {"order": ["B", ["a", "C"]], "flags": {"A": ["hallucination", "nonsense"]}}'
    assert parse_reply(reply, task) == {"order": [0, [2, 1]], "flags": [[], [], ["hallucination"]]}
    for bad in ["no JSON here", '{"order": ["A", "B"]}', '{"order": ["A", "A", "B", "C"]}', '{"order": "ABC"}',
                '{"order": ["A", "B", "Z"]}', "{broken"]:
        assert parse_reply(bad, task) is None, bad
