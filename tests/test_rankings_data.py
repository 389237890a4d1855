"""Rankings files: every preference shape (K-way order, ranks, scores; chosen/rejected as strings, message lists or
HH transcripts; UltraFeedback; OpenAssistant trees; chatforge's own samples) and container reads exactly (the
fixtures under tests/fixtures/data too), write -> read round-trips, every bad record names its location and
field, generated input gives rankings or a DataError and nothing else, and the user split never puts one user
(or one prompt) on both sides."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_like, mutated

from chatforge.data.rankings import (Ranking, format_report, pairs, parse_ranking, parse_rankings, read_rankings,
                                     split_by_user, write_rankings)
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
    assert report == {"path": str(tmp_path / "r.jsonl"), "files": 1, "read": 1, "rankings": 1, "shapes": {"order": 1},
                      "unranked": 0, "all_tied": 0, "skipped": 0, "skipped_by": {}, "first_errors": []}


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
    (with_(order=None), "field 'order': missing (best first: answer indices, tied ones in a list; or per answer "
                        "'ranks' or 'scores')"),
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
     "field 'timestamp': unknown field (expected one of messages, prompt, answers, order, ranks, scores, prompt_id, "
     "user_id, annotator_id, kind, ratings, flags, finished, lang, gold, source)"),
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

# Other shapes, each valid as given here (see test_each_shape_reads_to_its_ranking); BAD_SHAPES breaks them.
UQ, AQ = {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Earlier answer."}
RANKS = {"prompt": "Q?", "answers": ["a", "b", "c"], "ranks": [1, 2, 2]}
SCORES = {"prompt": "Q?", "answers": ["a", "b", "c"], "scores": [0.5, 7, 0.5]}
PAIR = {"chosen": [UQ, {"role": "assistant", "content": "A"}], "rejected": [UQ, {"role": "assistant", "content": "B"}]}
HH = {"chosen": "\n\nHuman: Q?\n\nAssistant: A", "rejected": "\n\nHuman: Q?\n\nAssistant: B"}
UF = {"instruction": "Q?", "completions": [{"response": "a", "overall_score": 8}, {"response": "b", "overall_score": 3},
                                           {"response": "c", "overall_score": 5}]}
TREE = {"message_tree_id": "t1", "prompt": {"role": "prompter", "text": "Q?", "replies": [
    {"role": "assistant", "text": "a", "rank": 0}, {"role": "assistant", "text": "b", "rank": 1}]}}
SAMPLE = {"prompt_id": "rank-00001", "user_id": "u1", "messages": [UQ], "answers": ["a", "b", "c"],
          "finished": [True, True, False], "kind": "fact", "lang": "en", "gold": {"behaviour": "answer"},
          "source": "written", "order": [2, [0, 1]]}


def tree_with(**changes) -> dict:
    """TREE with its second reply changed."""
    record = copy.deepcopy(TREE)
    record["prompt"]["replies"][1].update(changes)
    return record


def uf_with(i: int, **changes) -> dict:
    record = copy.deepcopy(UF)
    record["completions"][i] = {k: v for k, v in {**record["completions"][i], **changes}.items() if v is not None}
    return record


NOT_IMAGE = [{"type": "image_url", "image_url": {"url": "x.png"}}]
NO_SCORE = "give every completion 'fine-grained_score', 'annotations' ratings or 'overall_score'"
BAD_SHAPES = [
    ({**RANKS, "ranks": [1, 2]}, "field 'ranks': mismatched lengths: 2 entries for 3 answers"),
    ({**RANKS, "ranks": [1, -1, 2]}, "field 'ranks[1]': must be an integer >= 0 (lower is better), got -1"),
    ({**RANKS, "ranks": [1, 1.5, 2]}, "field 'ranks[1]': must be an integer >= 0 (lower is better), got 1.5"),
    ({**RANKS, "order": [0, 1, 2]}, "field 'ranks': give one of 'order', 'ranks' or 'scores', not both 'order' and "
                                    "'ranks'"),
    ({**SCORES, "scores": [1, "2", 3]}, "field 'scores[1]': must be a number, got str"),
    ({**SCORES, "scores": [1, True, 3]}, "field 'scores[1]': must be a number, got bool"),
    ('{"prompt": "Q?", "answers": ["a", "b"], "scores": [NaN, 1]}', "field 'scores[0]': must be a finite number, got nan"),
    ({**PAIR, "rejected": [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "B"}]},
     "field 'rejected[0]': differs from chosen[0]: the two must share every message before their answers"),
    ({**PAIR, "rejected": [AQ, UQ, {"role": "assistant", "content": "B"}]},
     "field 'rejected[0]': differs from chosen[0]: the two must share every message before their answers"),
    ({"chosen": [UQ], "rejected": [UQ]}, "field 'chosen[0].role': the last message must be the assistant's answer, "
                                         "got user"),
    ({"chosen": [PAIR["chosen"][1]], "rejected": [PAIR["rejected"][1]]},
     "field 'prompt': missing: 'chosen' and 'rejected' hold only their answers, so give the conversation as 'prompt'"),
    ({**PAIR, "rejected": "B"}, "field 'rejected': must be a message list like 'chosen', got str"),
    ({**PAIR, "prompt": "Another question?"}, "field 'prompt': differs from the conversation that 'chosen' and "
                                              "'rejected' share"),
    ({**PAIR, "score_chosen": 5}, "field 'score_rejected': missing (give both 'score_chosen' and 'score_rejected', "
                                  "or neither)"),
    ({**PAIR, "score_chosen": 5, "score_rejected": 8},
     "field 'score_rejected': 8 is above score_chosen (5): the chosen answer must not score lower"),
    ({**PAIR, "chosen": [UQ, {"role": "assistant", "content": NOT_IMAGE}]},
     "field 'chosen[1].content[0].type': only text parts can be trained on, got 'image_url'"),
    ({"prompt": [AQ], "chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant",
                                                                                      "content": "B"}]},
     "field 'prompt[0].role': the last message must be the user's, got assistant"),
    ({**HH, "rejected": "\n\nHuman: Q2?\n\nAssistant: B"},
     "field 'rejected': turn 1 differs from chosen's: the two transcripts must share every turn before their last "
     "Assistant turn"),
    ({**HH, "rejected": "\n\nHuman: Q?\n\nAssistant:"}, "field 'rejected': the last Assistant turn (the answer) is empty"),
    ({**HH, "rejected": "B"}, 'field \'rejected\': must be a transcript like \'chosen\' ("\\n\\nHuman: '
                              '...\\n\\nAssistant: ..."), got "B"'),
    ({**HH, "chosen": HH["chosen"] + "\n\nHuman: More?"}, "field 'chosen': the last turn must be the Assistant's answer"),
    ({"chosen": "\n\nHuman:\n\nAssistant: A", "rejected": "\n\nHuman:\n\nAssistant: B"},
     "field 'chosen': turn 1 (Human) is empty"),
    (uf_with(2, overall_score="8"), "field 'completions[2].overall_score': must be a number, got str"),
    (uf_with(1, overall_score=None), f"field 'completions[1]': no score ({NO_SCORE})"),
    (uf_with(1, overall_score=None, **{"fine-grained_score": 2.5}),
     f"field 'completions': no score that every completion has ({NO_SCORE})"),
    (uf_with(0, response=None), "field 'completions[0].response': missing"),
    (uf_with(0, response=""), "field 'completions[0].response': must be a non-empty string, got an empty string"),
    ({**UF, "completions": [{"response": "a", "annotations": {"helpfulness": {"Rating": "good"}}}] * 2},
     "field 'completions[0].annotations.helpfulness.Rating': must be a number or \"N/A\", got \"good\""),
    ({**UF, "completions": [{"response": "a", "annotations": {"honesty": [{"Rating": "N/A"}]}}] * 2},
     "field 'completions[0].annotations': no rating to score by (every 'Rating' is N/A)"),
    ({**UF, "completions": [{"response": "a", "annotations": {"honesty": "5"}}] * 2},
     "field 'completions[0].annotations.honesty': must be an object with a 'Rating', got \"5\""),
    ({**UF, "completions": UF["completions"][:1]}, "field 'completions': K = 1: a ranking needs at least two answers"),
    ({**UF, "completions": [UF["completions"][0], "b"]},
     "field 'completions[1]': must be an object with 'response' and a score, got str"),
    ({**UF, "prompt": "Q?"}, "field 'instruction': give only one of 'instruction', 'prompt', 'messages'"),
    ({**UF, "modles": []}, "field 'modles': unknown field (did you mean 'models'?)"),
    (tree_with(rank=-1), "field 'prompt.replies[1].rank': must be an integer >= 0 (lower is better), got -1"),
    (tree_with(rank="1"), "field 'prompt.replies[1].rank': must be an integer >= 0 (lower is better), got \"1\""),
    (tree_with(role="bot"), "field 'prompt.replies[1].role': must be 'prompter' or 'assistant', got \"bot\""),
    (tree_with(role="prompter"), "field 'prompt.replies[1].role': a reply must come from the other side "
                                 "(prompter, assistant, ...)"),
    (tree_with(text=None), "field 'prompt.replies[1].text': must be a non-empty string, got null"),
    (tree_with(replies={"role": "prompter"}), "field 'prompt.replies[1].replies': must be a list of messages, got dict"),
    ({**TREE, "prompt": {**TREE["prompt"], "role": "assistant"}},
     "field 'prompt.role': the tree's first message must be the prompter's"),
    ({**TREE, "tree_stat": "ready"}, "field 'tree_stat': unknown field (did you mean 'tree_state'?)"),
    ({"message_tree_id": "t1"}, "field 'prompt': missing (the tree's first message)"),
    ({"message_tree_id": "t1", "prompt": "Q?"},
     "field 'prompt': must be a message object ('role', 'text', 'replies'), got str"),
    ({**SAMPLE, "finished": [True, False]}, "field 'finished': mismatched lengths: 2 entries for 3 answers"),
    ({**SAMPLE, "finished": ["yes", True, True]}, "field 'finished[0]': must be true or false, got \"yes\""),
    ({**SAMPLE, "lang": 3}, "field 'lang': must be a string, got int"),
    ({**SAMPLE, "finishd": [True] * 3}, "field 'finishd': unknown field (did you mean 'finished'?)"),
    ({**SAMPLE, "answers": {"a": 1}}, "field 'answers': must be a list of strings, got dict"),
    ({"text": "hi", "id": 3}, "unknown shape (fields: id, text): expected 'answers' with 'order', 'ranks' or 'scores'; "
                              "'chosen' and 'rejected'; 'completions' (UltraFeedback); or an OpenAssistant message tree"),
    ({"message_id": "m1", "parent_id": None, "role": "prompter", "text": "Q?"},
     "one message of OpenAssistant's flat export: give its message-tree export instead (one tree per line)"),
    ("[" * 50_000, "JSON nested too deeply to parse"),
]
BAD_LINES = BAD_LINES + BAD_SHAPES


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
    with raises_at(str(tmp_path / "e.jsonl"), "empty file (no records)"):
        read_rankings(tmp_path / "e.jsonl", skip_invalid=True)
    with raises_at(str(tmp_path / "nope.jsonl"), "file not found"):
        read_rankings(tmp_path / "nope.jsonl")


# ---- each shape ----


def answers_ranks(record) -> list[tuple]:
    return [(r.messages, r.answers, r.ranks) for r in parse_rankings(record, "f:1")]


@pytest.mark.parametrize("record, expected", [
    (RANKS, [[UQ], ["a", "b", "c"], [0, 1, 1]]),  # 1-based ranks, the two 2s tie
    ({**RANKS, "ranks": [0, 3, 7]}, [[UQ], ["a", "b", "c"], [0, 1, 2]]),  # only the order of the ranks matters
    (SCORES, [[UQ], ["a", "b", "c"], [1, 0, 1]]),  # higher is better, equal scores tie
    (PAIR, [[UQ], ["A", "B"], [0, 1]]),  # TRL: the conversation is what chosen and rejected share
    ({"prompt": [UQ], "chosen": [PAIR["chosen"][1]], "rejected": [PAIR["rejected"][1]]}, [[UQ], ["A", "B"], [0, 1]]),
    ({**PAIR, "prompt": "Q?", "messages": PAIR["chosen"], "score_chosen": 8.5, "score_rejected": 3.0,
      "prompt_id": "abc"}, [[UQ], ["A", "B"], [0, 1]]),  # UltraFeedback binarized
    ({**PAIR, "score_chosen": 4, "score_rejected": 4.0}, [[UQ], ["A", "B"], [0, 0]]),
    ({"prompt": "Q?", "chosen": "A", "rejected": "B", "score_chosen": 2, "score_rejected": 1}, [[UQ], ["A", "B"], [0, 1]]),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 你好吗？\n\nAssistant: 我很好。",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 你好吗？\n\nAssistant: 不知道。"},
     [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "你好吗？"}],
      ["我很好。", "不知道。"], [0, 1]]),
    ({"prompt": "\n\nHuman: Q?\n\nAssistant:", "chosen": " A", "rejected": " B"}, [[UQ], [" A", " B"], [0, 1]]),
    (UF, [[UQ], ["a", "b", "c"], [0, 2, 1]]),
    (uf_with(1, overall_score=9, **{"fine-grained_score": 1.0}) | {"completions": [
        {"response": "a", "overall_score": 8, "fine-grained_score": 4.5},
        {"response": "b", "overall_score": 9, "fine-grained_score": 1.0},
        {"response": "c", "overall_score": 5, "fine-grained_score": 4.5}]},
     [[UQ], ["a", "b", "c"], [0, 1, 0]]),  # fine-grained_score before overall_score
    ({"instruction": "Q?", "completions": [
        {"response": "a", "annotations": {"helpfulness": {"Rating": "4"}, "honesty": {"Rating": "N/A"}}},
        {"response": "b", "annotations": {"helpfulness": [{"Rating": 5}], "honesty": [{"Rating": "3"}]}}]},
     [[UQ], ["a", "b"], [0, 0]]),  # mean ratings 4 and 4: a tie; N/A left out
    ({**SAMPLE}, [[UQ], ["a", "b", "c"], [1, 1, 0]]),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "?"}]}],
      "answers": ["a", "b"], "order": [1, 0]}, [[UQ], ["a", "b"], [1, 0]]),
], ids=["ranks", "ranks-gaps", "scores", "pair-implicit", "pair-explicit", "binarized", "pair-tie", "pair-strings",
        "hh", "hh-prompt", "ultrafeedback", "uf-priority", "uf-annotations", "samples", "content-parts"])
def test_each_shape_reads_to_its_ranking(record, expected):
    assert answers_ranks(record) == [tuple(expected)]


def test_a_message_tree_gives_a_ranking_per_prompter_with_ranked_replies():
    def node(role, text, rank=None, replies=(), **extra):
        return {"role": role, "text": text, "rank": rank, "replies": list(replies), **extra}

    follow_up = node("prompter", "它是火山吗？", message_id="p2", replies=[
        node("assistant", "是的。", rank=1), node("assistant", "是的，富士山是活火山。", rank=0),
        node("assistant", "不是。", rank=2, deleted=True), node("assistant", "也许。")])  # deleted, unranked: left out
    tree = {"message_tree_id": "t9", "tree_state": "ready_for_export", "origin": "x", "prompt": node(
        "prompter", "日本最高的山是什么？", message_id="p1", user_id="u7", replies=[
            node("assistant", "富士山。", rank=0, replies=[follow_up]), node("assistant", "不知道。", rank=1),
            node("assistant", "珠穆朗玛峰。", rank=None, replies=[node("prompter", "真的？", replies=[
                node("assistant", "是的。", rank=0)])])])}  # one ranked reply: no ranking
    first, second = parse_rankings(tree, "f:1")
    root = {"role": "user", "content": "日本最高的山是什么？"}
    assert (first.prompt_id, first.user_id, first.messages, first.answers, first.ranks) == (
        "p1", "u7", [root], ["富士山。", "不知道。"], [0, 1])
    assert (second.prompt_id, second.user_id, second.answers, second.ranks) == (
        "p2", "u7", ["是的。", "是的，富士山是活火山。"], [1, 0])
    assert second.messages == [root, {"role": "assistant", "content": "富士山。"}, {"role": "user", "content": "它是火山吗？"}]
    assert answers_ranks(tree["prompt"]) == [(r.messages, r.answers, r.ranks) for r in (first, second)]  # a bare root
    with pytest.raises(DataError, match=re.escape("f:1: a message tree holding 2 rankings, not one")):
        parse_ranking(tree, "f:1")


def test_a_tree_deeper_than_python_recursion_reads_with_a_loop():
    node = {"role": "assistant", "text": "end", "rank": 0}
    for depth in range(3001):  # built upwards: depth 0 is the prompter the two ranked answers reply to
        node = {"role": "prompter" if depth % 2 == 0 else "assistant", "text": f"t{depth}", "replies": [node]}
        if depth == 0:
            node["replies"].append({"role": "assistant", "text": "other", "rank": 1})
    ranking, = parse_rankings({"message_tree_id": "deep", "prompt": node}, "f:1")
    assert len(ranking.messages) == 3001 and ranking.answers == ["end", "other"]


def test_a_sample_line_with_an_order_reads_and_its_fields_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "samples.jsonl", [SAMPLE, {**SAMPLE, "source": 5}])
    with raises_at(f"{path}:2", "field 'source': must be a string, got int"):
        read_rankings(path)
    ranking = read_rankings(path, skip_invalid=True)[0][0]
    assert (ranking.prompt_id, ranking.user_id, ranking.kind, ranking.ranks) == ("rank-00001", "u1", "fact", [1, 1, 0])


def test_ties_everywhere_are_counted_and_a_file_of_only_ties_is_an_error(tmp_path):
    tied = {"prompt": "Q?", "answers": ["a", "b"], "order": [[0, 1]]}
    rankings, report = read_rankings(write_jsonl(tmp_path / "r.jsonl", [GOOD, tied, {**tied, "prompt": "Q2?"}]))
    assert len(rankings) == 3 and report["all_tied"] == 2
    assert format_report(report) == (f"read 3 rankings from {tmp_path / 'r.jsonl'} (3 order); 2 tie all their "
                                     "answers (no pair to learn from)")
    path = write_jsonl(tmp_path / "ties.jsonl", [tied, {"prompt": "Q2?", "answers": ["a", "b"], "scores": [1, 1]}])
    with raises_at(str(path), "every one of its 2 rankings ties all its answers, so there is no (better, worse) "
                              "pair to learn from"):
        read_rankings(path)


def test_trees_without_ranked_replies_are_counted_and_a_file_of_them_is_an_error(tmp_path):
    unranked = tree_with(rank=None)
    rankings, report = read_rankings(write_jsonl(tmp_path / "t.jsonl", [TREE, unranked]))
    assert len(rankings) == 1 and report["unranked"] == 1 and report["shapes"] == {"oasst": 2}
    path = write_jsonl(tmp_path / "u.jsonl", [unranked])
    with raises_at(str(path), "no rankings: none of its 1 records has two ranked answers to one message "
                              "(message trees without ranked replies)"):
        read_rankings(path)


def test_skipped_records_are_counted_by_reason(tmp_path):
    records = [GOOD, "{broken", b"\xff", with_(order=[0]), with_(kinds="x"), {"text": "t"}, uf_with(0, response=None),
               "[" * 50_000, GOOD]
    path = write_jsonl(tmp_path / "r.jsonl", records)
    rankings, report = read_rankings(path, skip_invalid=True)
    assert len(rankings) == 2 and report["skipped"] == 7
    assert report["skipped_by"] == {"broken_json": 1, "not_utf8": 1, "bad_order": 1, "unknown_field": 1,
                                    "unknown_shape": 1, "bad_completions": 1, "too_deep": 1}
    assert format_report(report).splitlines() == [
        f"read 2 rankings from {path} (2 order); skipped 7: 1 bad_completions, 1 bad_order, "
        "1 broken_json, 1 not_utf8, 1 too_deep, 1 unknown_field, 1 unknown_shape",
        f"  first skipped: {path}:2: broken JSON line (Expecting property name enclosed in double quotes at column 2)"]


# ---- the fixtures: every shape and container reads back to the same rankings ----

FIXTURES = Path(__file__).parent / "fixtures" / "data"
_spec = importlib.util.spec_from_file_location("fixture_build", FIXTURES / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
PREFS = build.PREFERENCES


def _pairs_of(items) -> list[tuple]:
    return [(convo, list(build.pair_of(answers, ranks)), [0, 1]) for _, convo, answers, ranks in items]


NO_SYSTEM = [p for p in PREFS if p[1][0]["role"] != "system"]
SINGLE = [p for p in PREFS if len(p[1]) == 1]
KWAY = [(convo, answers, ranks) for _, convo, answers, ranks in PREFS]
# oasst ranks never tie: build._tree breaks ties in answer order
TREES = [(convo, answers, [sorted(range(len(ranks)), key=lambda a: (ranks[a], a)).index(a) for a in range(len(ranks))])
         for _, convo, answers, ranks in NO_SYSTEM]
PREF_FIXTURES = [  # (path under tests/fixtures/data, the shapes found, (messages, answers, ranks) per ranking, users)
    ("prefs/order.jsonl", {"order": 12}, KWAY, [p[0] for p in PREFS]),
    ("prefs/ranks.jsonl", {"ranks": 12}, KWAY, [p[0] for p in PREFS]),
    ("prefs/scores.json", {"scores": 12}, KWAY, [p[0] for p in PREFS]),
    ("prefs/samples_order.jsonl", {"order": 12}, KWAY, [p[0] for p in PREFS]),
    ("prefs/pairwise.jsonl", {"pairwise": 12}, _pairs_of(PREFS), [p[0] for p in PREFS]),
    ("prefs/pairs_implicit.jsonl", {"pair_messages": 12}, _pairs_of(PREFS), None),
    ("prefs/pairs_explicit.json", {"pair_messages": 12}, _pairs_of(PREFS), None),
    ("prefs/hh.jsonl", {"hh": 10}, _pairs_of(NO_SYSTEM), None),
    ("prefs/ultrafeedback.jsonl", {"ultrafeedback": 9}, [(c, a, r) for _, c, a, r in SINGLE], None),
    ("prefs/ultrafeedback.parquet", {"ultrafeedback": 9}, [(c, a, r) for _, c, a, r in SINGLE], None),
    ("prefs/oasst.jsonl", {"oasst": 10}, TREES, [p[0] for p in NO_SYSTEM]),
    ("prefs_datasets", {"pair_messages": 12}, _pairs_of(PREFS), None),
    ("prefs_datasetdict", {"ranks": 8}, KWAY[:8], [p[0] for p in PREFS[:8]]),
    ("prefs_datasetdict:test", {"ranks": 4}, KWAY[8:], [p[0] for p in PREFS[8:]]),
]


@pytest.mark.parametrize("name, shapes, expected, users", PREF_FIXTURES, ids=[f[0] for f in PREF_FIXTURES])
def test_each_fixture_reads_to_its_rankings(name, shapes, expected, users):
    rankings, report = read_rankings(f"{FIXTURES}/{name}")
    assert [(r.messages, r.answers, r.ranks) for r in rankings] == [tuple(e) for e in expected]
    assert report["shapes"] == shapes and report["skipped"] == 0
    if users is not None:  # the shapes that carry a user
        assert [r.user_id for r in rankings] == users
    assert len({r.user_id for r in rankings}) == len(rankings)  # one user each: a split by user has room
    train, held = split_by_user(rankings, 0.25, seed=1)
    assert train and held


def test_the_fixture_folder_reads_every_file_in_it():
    rankings, report = read_rankings(FIXTURES / "prefs")
    assert report["files"] == 11 and len(rankings) == sum(len(e) for n, _, e, _ in PREF_FIXTURES if n.startswith("prefs/"))


# ---- generated input: every outcome is rankings or a DataError ----

KEYS = ["messages", "prompt", "answers", "order", "ranks", "scores", "chosen", "rejected", "completions", "response",
        "overall_score", "fine-grained_score", "annotations", "Rating", "message_tree_id", "replies", "role", "text",
        "rank", "content", "type", "user_id", "finished", "instruction", "score_chosen", "score_rejected", "deleted"]
WORDS = ["user", "assistant", "system", "prompter", "text", "N/A", "4", "", " ", "Q", "答", "\ud800",
         "\n\nHuman: Q\n\nAssistant: A", "\n\nHuman: Q\n\nAssistant:"]
JSON = json_like(KEYS, WORDS, max_size=5, max_leaves=30)
VALID = [GOOD, RANKS, SCORES, PAIR, HH, UF, TREE, SAMPLE] + [r for rs in build.prefs_records().values() for r in rs[:1]]


@settings(max_examples=500, deadline=None, database=None)
@given(st.one_of(JSON, mutated(VALID, JSON)))
def test_generated_records_give_rankings_or_a_data_error(record):
    try:
        rankings = parse_rankings(record, "f:1")
    except DataError as e:
        assert str(e).startswith("f:1: ") and "\n" not in str(e)
        return
    for ranking in rankings:  # valid: it writes and reads back as itself
        assert parse_ranking(ranking.record(), "w") == ranking


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.one_of(JSON, mutated(VALID, JSON)), min_size=1, max_size=6))
def test_generated_tables_give_rankings_or_a_data_error(tmp_path_factory, records):
    """Records that make a table (pyarrow refuses mixed types) read from Parquet as they do from JSON."""
    path = tmp_path_factory.mktemp("t") / "r.parquet"
    try:
        pq.write_table(pa.Table.from_struct_array(pa.array(records)), path)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return
    try:
        rankings, report = read_rankings(path, skip_invalid=True)
    except DataError as e:
        assert "\n" not in str(e)
        return
    assert report["read"] == len(records) and report["rankings"] == len(rankings)


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
