"""Rankings files: K-way and pairwise lines read exactly, write -> read round-trips, every bad line names
its file, line and field, and the user split never puts one user (or one prompt) on both sides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatforge.data.rankings import Ranking, pairs, parse_ranking, read_rankings, split_by_user, write_rankings
from chatforge.errors import DataError

Q = [{"role": "user", "content": "What is the capital of France?"}]
GOOD = {"prompt_id": "rank-00012", "user_id": "u0042", "annotator_id": "a03", "messages": Q,
        "answers": ["The capital of France is Paris.", "Paris is in Asia.", "I don't know."],
        "order": [0, [2, 1]], "kind": "fact"}
RATING = {"correctness": 7, "appropriateness": 7, "safety": 7, "completeness": 6, "fluency": 7}


def write_jsonl(path: Path, records) -> Path:
    """Records are objects (dumped), str (written as the raw line) or bytes (written as they are)."""
    raw = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode()
           for r in records]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def raises_at(where: str, message: str):
    """pytest.raises for a DataError whose whole message is `where: message`."""
    return pytest.raises(DataError, match="^" + re.escape(f"{where}: {message}") + "$")


def with_(**changes) -> dict:
    """GOOD with some fields changed; a value of None removes the field."""
    record = {**GOOD, **changes}
    return {k: v for k, v in record.items() if v is not None}


# ---- reading ----


def test_a_kway_line_reads_with_ties_as_shared_ranks(tmp_path):
    line = with_(ratings=[RATING, {"safety": 7}, {}], flags=[[], ["hallucination"], []])
    rankings, report = read_rankings(write_jsonl(tmp_path / "r.jsonl", [line]))
    assert rankings == [Ranking(prompt_id="rank-00012", user_id="u0042", annotator_id="a03", messages=Q,
                                answers=GOOD["answers"], ranks=[0, 1, 1], kind="fact",
                                ratings=[RATING, {"safety": 7}, {}], flags=[[], ["hallucination"], []])]
    assert report == {"files": 1, "read": 1, "skipped": 0, "first_errors": []}


@pytest.mark.parametrize("order, ranks", [
    ([0, 1, 2], [0, 1, 2]),
    ([2, 0, 1], [1, 2, 0]),
    ([[0, 1, 2]], [0, 0, 0]),
    ([[2, 0], 1], [0, 1, 0]),
    ([1, [0], 2], [1, 0, 2]),  # a group of one is its index
])
def test_order_becomes_ranks_by_group_position(order, ranks):
    assert parse_ranking(with_(order=order), "f:1").ranks == ranks


def test_a_pairwise_line_is_k2_and_prompt_is_a_user_message(tmp_path):
    lines = [{"prompt": "你好吗？", "chosen": "我很好，谢谢！", "rejected": "不知道。", "user_id": "u1"},
             {"messages": Q, "chosen": "Paris.", "rejected": "Lyon."}]
    rankings, _ = read_rankings(write_jsonl(tmp_path / "p.jsonl", lines))
    a, b = rankings
    assert (a.messages, a.answers, a.ranks, a.user_id) == (
        [{"role": "user", "content": "你好吗？"}], ["我很好，谢谢！", "不知道。"], [0, 1], "u1")
    assert (b.answers, b.ranks, b.annotator_id, b.kind, b.ratings, b.flags) == (["Paris.", "Lyon."], [0, 1], "", "",
                                                                               None, None)


def test_default_ids_hash_the_messages_and_a_prompt_is_its_own_user():
    a = parse_ranking({"prompt": Q[0]["content"], "answers": ["x", "y"], "order": [1, 0]}, "f:1")
    b = parse_ranking({"messages": Q, "chosen": "x", "rejected": "y"}, "f:2")
    assert a.prompt_id == b.prompt_id and re.fullmatch(r"p-[0-9a-f]{16}", a.prompt_id)  # same messages, same id
    assert a.user_id == a.prompt_id
    assert parse_ranking({"prompt": "Other?", "answers": ["x", "y"], "order": [0, 1]}, "f:1").prompt_id != a.prompt_id


def test_identical_answers_are_allowed():
    assert parse_ranking(with_(answers=["Paris.", "Paris.", "Lyon."], order=[[0, 1], 2]), "f:1").ranks == [0, 0, 1]


def test_write_then_read_round_trips_utf8_unescaped(tmp_path):
    rankings = [parse_ranking(with_(ratings=[RATING] * 3, flags=[["x"], [], []]), "f:1"),
                parse_ranking({"messages": [{"role": "system", "content": "简短回答。"},
                                            {"role": "user", "content": "法国的首都是哪里？"}],
                               "answers": ["巴黎。", "北京。"], "order": [[1, 0]]}, "f:2")]
    path = tmp_path / "out" / "rankings.jsonl"
    write_rankings(path, rankings)
    assert "巴黎" in path.read_text(encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["order"] == [0, [1, 2]]
    assert read_rankings(path)[0] == rankings
    assert [p.name for p in path.parent.iterdir()] == ["rankings.jsonl"]  # no temporary file left


def test_writing_an_invalid_ranking_is_an_error(tmp_path):
    bad = Ranking("p", "u", "", Q, ["fine", " "], [0, 1])
    with raises_at(f"{tmp_path / 'r.jsonl'}: ranking 0", "field 'answers[1]': must be a non-empty string, "
                                                          "got only whitespace"):
        write_rankings(tmp_path / "r.jsonl", [bad])
    assert not (tmp_path / "r.jsonl").exists()


def test_a_folder_reads_its_jsonl_files_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [with_(prompt_id="b1")])
    write_jsonl(tmp_path / "a.jsonl", [with_(prompt_id="a1"), with_(prompt_id="a2")])
    write_jsonl(tmp_path / ".a.jsonl.tmp123", ["half a li"])  # a killed writer's leftover
    (tmp_path / "notes.txt").write_text("not data")
    rankings, report = read_rankings(tmp_path)
    assert [r.prompt_id for r in rankings] == ["a1", "a2", "b1"]
    assert report["files"] == 2 and report["read"] == 3


# ---- bad lines ----


BAD_LINES = [
    (with_(order=[0, 1, 1]), "field 'order': index 1 appears twice"),
    (with_(order=[0, [1, 0], 2]), "field 'order': index 0 appears twice"),
    (with_(order=[0, 2]), "field 'order': index 1 is missing (every answer must be ranked)"),
    (with_(order=[0, 1, 3]), "field 'order': index 3 is out of range for 3 answers"),
    (with_(order=[0, [1, -1], 2]), "field 'order': index -1 is out of range for 3 answers"),
    (with_(order=[0, [], 1, 2]), "field 'order': element 1 is an empty tie group"),
    (with_(order=[0, "1", 2]), "field 'order': element 1 must be an answer index or a list of tied indices, got str"),
    (with_(order=[0, [1, 2.0]]), "field 'order': element 1: an answer index must be an integer, got float"),
    (with_(order=[True, 1, 2]),
     "field 'order': element 0 must be an answer index or a list of tied indices, got bool"),
    (with_(order="0,1,2"), "field 'order': must be a non-empty list of answer indices and tie groups, got str"),
    (with_(order=None), "field 'order': missing (best first: answer indices, tied ones in a list)"),
    (with_(answers=["Paris."], order=[0]), "field 'answers': K = 1: a ranking needs at least two answers"),
    (with_(answers="Paris.", order=[0]), "field 'answers': must be a list of strings, got str"),
    (with_(answers=None), "field 'answers': missing (or give 'chosen' and 'rejected' for a pair)"),
    (with_(answers=["Paris.", "", "x"]), "field 'answers[1]': must be a non-empty string, got an empty string"),
    (with_(answers=["Paris.", " \n", "x"]), "field 'answers[1]': must be a non-empty string, got only whitespace"),
    (with_(answers=["Paris.", 3, "x"]), "field 'answers[1]': must be a non-empty string, got int"),
    (with_(ratings=[RATING, RATING]), "field 'ratings': mismatched lengths: 2 entries for 3 answers"),
    (with_(flags=[[], [], [], []]), "field 'flags': mismatched lengths: 4 entries for 3 answers"),
    (with_(ratings=RATING), "field 'ratings': must be a list with one entry per answer, got dict"),
    (with_(ratings=[RATING, {"correctness": 8}, RATING]),
     "field 'ratings[1].correctness': must be an integer from 1 to 7, got 8"),
    (with_(ratings=[RATING, {"safety": "7"}, RATING]),
     "field 'ratings[1].safety': must be an integer from 1 to 7, got \"7\""),
    (with_(ratings=[RATING, {"helpful": 5}, RATING]),
     "field 'ratings[1].helpful': unknown rating "
     "(expected one of correctness, appropriateness, safety, completeness, fluency)"),
    (with_(flags=[[], "hallucination", []]), "field 'flags[1]': must be a list of strings, got \"hallucination\""),
    (with_(user_id=42), "field 'user_id': must be a non-empty string, got int"),
    (with_(prompt_id=""), "field 'prompt_id': must be a non-empty string, got an empty string"),
    (with_(kind=None, kinds="fact"), "field 'kinds': unknown field (did you mean 'kind'?)"),
    (with_(timestamp=3),
     "field 'timestamp': unknown field "
     "(expected one of messages, prompt, answers, order, prompt_id, user_id, annotator_id, kind, ratings, flags)"),
    (with_(messages=Q + [{"role": "assistant", "content": "Paris."}]),
     "field 'messages[1].role': the last message must be the user's, got assistant"),
    (with_(messages=[{"role": "human", "content": "Hi"}]),
     "field 'messages[0].role': must be one of system, user, assistant, got \"human\""),
    (with_(messages=[{"content": "Hi"}]), "field 'messages[0].role': missing"),
    (with_(messages=[{"role": "user", "content": ""}]),
     "field 'messages[0].content': must be a non-empty string, got an empty string"),
    (with_(messages=Q + [{"role": "system", "content": "Be brief."}, Q[0]]),
     "field 'messages[1].role': a system message may only come first"),
    (with_(messages=[]),
     "field 'messages': must be a non-empty list of {'role', 'content'} objects, got an empty list"),
    (with_(messages=None), "field 'messages': missing (give 'messages', or 'prompt' for a single user message)"),
    (with_(prompt="Hi"), "field 'prompt': give either 'prompt' or 'messages', not both"),
    (with_(chosen="Paris.", rejected="Lyon."),
     "field 'answers': a line has either 'chosen' and 'rejected' (pairwise) or 'answers' and 'order', not both"),
    ({"messages": Q, "chosen": "Paris."}, "field 'rejected': missing"),
    ({"messages": Q, "chosen": "Paris.", "rejected": "Lyon.", "ratings": [RATING]},
     "field 'ratings': mismatched lengths: 1 entry for 2 answers"),
    (["not", "an", "object"], "expected a JSON object (one ranking), got list"),
]


@pytest.mark.parametrize("bad, message", BAD_LINES, ids=[m[:50] for _, m in BAD_LINES])
def test_a_bad_line_names_file_line_and_field(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD, bad, GOOD])
    with raises_at(f"{path}:2", message):
        read_rankings(path)


def test_broken_json_and_non_utf8_bytes_name_their_line(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD, '{"prompt": "Hi", "answers": ["a", "b"'])
    with raises_at(f"{path}:2", "broken JSON line (Expecting ',' delimiter at column 38)"):
        read_rankings(path)
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD, GOOD, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'])
    with raises_at(f"{path}:3", "not UTF-8 text (byte 0xe9 at column 16)"):
        read_rankings(path)


def test_skip_invalid_counts_skips_and_keeps_the_first_five_messages(tmp_path):
    bad = [b[0] for b in BAD_LINES[:6]] + ["{broken", b"\xff"]
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD] + bad + [GOOD])
    rankings, report = read_rankings(path, skip_invalid=True)
    assert len(rankings) == 2
    assert report["read"] == 10 and report["skipped"] == 8 and report["files"] == 1
    assert report["first_errors"] == [f"{path}:{i + 2}: {m}" for i, (_, m) in enumerate(BAD_LINES[:5])]


def test_nothing_valid_or_an_empty_file_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [with_(order=[0])])
    with pytest.raises(DataError, match=re.escape(f"{path}: no valid rankings (skipped 1); first error: {path}:1:")):
        read_rankings(path, skip_invalid=True)
    (tmp_path / "e.jsonl").write_text("\n\n")
    with raises_at(str(tmp_path / "e.jsonl"), "empty file (no rankings)"):
        read_rankings(tmp_path / "e.jsonl", skip_invalid=True)
    with raises_at(str(tmp_path / "nope.jsonl"), "file not found"):
        read_rankings(tmp_path / "nope.jsonl")


# ---- split and pairs ----


def _many(num_users: int) -> list[Ranking]:
    """3 prompts per user, 2 annotators per prompt; every 7th user shares a prompt with the next one."""
    out = []
    for u in range(num_users):
        for p in range(3):
            prompt_id = f"shared-{u}" if (u % 7 == 6 and p == 0) else f"q{u}-{p}"
            for a in ("a1", "a2"):
                out.append(Ranking(prompt_id, f"u{u:03d}", a, Q, ["x", "y"], [0, 1]))
        if u % 7 == 0 and u > 0:
            out.append(Ranking(f"shared-{u - 1}", f"u{u:03d}", "a1", Q, ["x", "y"], [0, 1]))
    return out


def test_split_by_user_keeps_users_and_prompts_whole_and_is_deterministic():
    rankings = _many(60)
    train, held = split_by_user(rankings, 0.25, seed=7)
    assert sorted(map(id, train + held)) == sorted(map(id, rankings))  # nothing lost or doubled
    assert train == [r for r in rankings if r in train]  # input order kept (no reordering)
    assert not {r.user_id for r in train} & {r.user_id for r in held}
    assert not {r.prompt_id for r in train} & {r.prompt_id for r in held}
    assert 5 <= len({r.user_id for r in held}) <= 25  # about a quarter of 60 users
    assert split_by_user(rankings, 0.25, seed=7) == (train, held)
    assert split_by_user(list(reversed(rankings)), 0.25, seed=7)[1] == list(reversed(held))  # order-free
    assert split_by_user(rankings, 0.25, seed=8)[1] != held
    # Adding users moves nobody already there: the decision is per user, not per position.
    held_more = split_by_user(_many(90), 0.25, seed=7)[1]
    assert {r.user_id for r in held} == {r.user_id for r in held_more if int(r.user_id[1:]) < 60}


def test_split_by_user_puts_a_user_on_each_side_when_it_can():
    two = _many(2)
    for fraction in (0.001, 0.5, 0.999):
        for seed in range(5):
            train, held = split_by_user(two, fraction, seed)
            assert len({r.user_id for r in train}) == 1 and len({r.user_id for r in held}) == 1
    assert sorted(map(len, split_by_user(_many(1), 0.5, seed=0))) == [0, 6]  # one user cannot be split
    assert split_by_user(two, 0.0, seed=0) == (two, [])
    with pytest.raises(ValueError):
        split_by_user(two, 1.0, seed=0)


@pytest.mark.parametrize("ranks, expected", [
    ([0, 1], [(0, 1)]),
    ([1, 0], [(1, 0)]),
    ([0, 1, 1], [(0, 1), (0, 2)]),
    ([0, 0], []),
    ([2, 0, 1], [(1, 0), (1, 2), (2, 0)]),
    ([1, 0, 2, 0], [(0, 2), (1, 0), (1, 2), (3, 0), (3, 2)]),
])
def test_pairs_are_better_worse_with_ties_skipped(ranks, expected):
    assert pairs(ranks) == expected
