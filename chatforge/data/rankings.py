"""Rankings for the reward model: for one prompt, K >= 2 answers ranked by one annotator (docs/rankings.md),
read from the shapes preference data comes in (docs/data-formats.md) and normalised to `Ranking`.

Shapes, detected per record from its keys:
  order          {"messages" | "prompt", "answers": [K strings], "order": [best, ..., worst]}; an element of
                 "order" is an answer index or a list of indices that tie
  ranks          ... "answers" and "ranks": [K integers >= 0], lower is better (0- or 1-based alike), equal ties
  scores         ... "answers" and "scores": [K numbers], higher is better, equal scores tie
  pairwise       {"messages" | "prompt", "chosen": "...", "rejected": "..."}  (K = 2)
  pair_messages  "chosen" and "rejected" as message lists (TRL): the conversation is what they share before
                 their answers, or an explicit "prompt" (then each holds only its answer)
  hh             "chosen" and "rejected" as whole "\n\nHuman: ...\n\nAssistant: ..." transcripts (HH-RLHF)
  ultrafeedback  "instruction" (or "prompt"), "completions": [{"response", a score}, ...], ranked by score
  oasst          an OpenAssistant message tree: a ranking for each prompter message with >= 2 ranked replies
Every bad record is a DataError "LOCATION: field 'x': problem"; unknown top-level fields are errors too, so a
typo is never silently ignored. The world's judge, annotators' exports and users' files all go through
`parse_rankings`, so the reward stage sees one validated shape. Files and folders are those of
`chatforge.data.containers`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from chatforge.data.chat import PartError, join_text_parts
from chatforge.data.containers import source_records, sources
from chatforge.errors import DataError
from chatforge.io import BadLine, atomic_write_text

ROLES = ("system", "user", "assistant")
RATING_KEYS = ("correctness", "appropriateness", "safety", "completeness", "fluency")
RATING_MIN, RATING_MAX = 1, 7
OPTIONAL_KEYS = ("prompt_id", "user_id", "annotator_id", "kind", "ratings", "flags")
SAMPLE_KEYS = ("finished", "lang", "gold", "source")  # samples.jsonl's: a sample line with an order added reads
RANK_KEYS = ("order", "ranks", "scores")  # how K answers are ranked: exactly one of them
KWAY_KEYS = ("messages", "prompt", "answers") + RANK_KEYS + OPTIONAL_KEYS + SAMPLE_KEYS
PAIR_SCORES = ("score_chosen", "score_rejected")  # UltraFeedback binarized: equal scores are a tie
PAIRWISE_KEYS = ("messages", "prompt", "chosen", "rejected") + PAIR_SCORES + OPTIONAL_KEYS
UF_PROMPT_KEYS = ("instruction", "prompt", "messages")
UF_KEYS = UF_PROMPT_KEYS + ("completions", "source", "models", "correct_answers", "incorrect_answers") + OPTIONAL_KEYS
# The first score every completion has ranks them. UltraFeedback's overall_score comes from a critique that was
# found to disagree with its per-aspect ratings, so their mean (fine-grained_score, or computed) comes first.
UF_SCORES = ("fine-grained_score", "annotations", "overall_score")
TREE_KEYS = ("message_tree_id", "tree_state", "prompt", "origin")
TREE_ROLES = {"prompter": "user", "assistant": "assistant"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
MAX_FIRST_ERRORS = 5


@dataclass(frozen=True)
class Ranking:
    prompt_id: str
    user_id: str
    annotator_id: str
    messages: list  # [{"role", "content"}], the last one the user's
    answers: list  # K >= 2 strings
    ranks: list  # per answer, 0 = best; tied answers share their group's position in "order"
    kind: str = ""
    ratings: list | None = None  # K dicts of RATING_KEYS -> 1..7
    flags: list | None = None  # K lists of strings

    def __post_init__(self):
        # Our own invariant (parse_ranking guarantees it): ranks are group positions 0..G-1, so that
        # record() -> parse_ranking gives back equal ranks.
        assert len(self.answers) >= 2 and len(self.ranks) == len(self.answers), (self.answers, self.ranks)
        assert sorted(set(self.ranks)) == list(range(max(self.ranks) + 1)), self.ranks

    def record(self) -> dict:
        """The JSON-lines form; "order" is rebuilt from ranks, tied answers as one group."""
        groups = [[i for i, r in enumerate(self.ranks) if r == rank] for rank in range(max(self.ranks) + 1)]
        record = {"prompt_id": self.prompt_id, "user_id": self.user_id, "annotator_id": self.annotator_id,
                  "messages": self.messages, "answers": self.answers,
                  "order": [g[0] if len(g) == 1 else g for g in groups]}
        if self.ratings is not None:
            record["ratings"] = self.ratings
        if self.flags is not None:
            record["flags"] = self.flags
        record["kind"] = self.kind
        return record


class _Bad(Exception):
    """One bad field, or (field None) a bad record: the reader puts the location in front. `reason` is the key
    a skipped record is counted under: by default "bad_" and the top-level field."""

    def __init__(self, field: str | None, problem: str, reason: str = ""):
        super().__init__(problem if field is None else f"field '{field}': {problem}")
        self.reason = reason or ("bad_" + re.split(r"[\[.]", field)[0] if field else "bad_record")


# ---- one record ----


def parse_rankings(obj, where: str) -> list[Ranking]:
    """The validated rankings of one parsed record, in any shape: one, or for a message tree none or several.
    `where` ("FILE:LINE") starts every error message."""
    try:
        return _parse(obj)[1]
    except (_Bad, BadLine) as e:
        raise DataError(f"{where}: {e}") from None


def parse_ranking(obj, where: str) -> Ranking:
    """The one validated Ranking of a record; `where` ("FILE:LINE") starts every error message."""
    found = parse_rankings(obj, where)
    if len(found) != 1:
        raise DataError(f"{where}: a message tree holding {len(found)} rankings, not one (read it with read_rankings)")
    return found[0]


def parse_prompt(obj, where: str) -> tuple[list[dict], str]:
    """(messages, stable id) of a prompt line: "messages" (ending with the user's turn) or a "prompt" string;
    the same rules, and errors, as the prompt part of a ranking. Other keys are the caller's business."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object (one prompt), got {_type(obj)}")
    try:
        messages = _messages(obj)
    except _Bad as e:
        raise DataError(f"{where}: {e}") from None
    return messages, _hash_id(messages)


def _parse(obj) -> tuple[str, list[Ranking]]:
    """(shape, rankings) of one record."""
    if isinstance(obj, BadLine):  # a line that did not parse: its own reason and message
        raise obj
    if not isinstance(obj, dict):
        raise _Bad(None, f"expected a JSON object (one ranking), got {_type(obj)}", "not_object")
    shape = _shape(obj)
    if shape == "oasst":
        return shape, _tree(obj)
    parse = {"ultrafeedback": _ultrafeedback, "pairwise": _pairwise, "pair_messages": _pair_messages,
             "hh": _hh}.get(shape, _kway)
    return shape, [parse(obj)]


def _shape(obj: dict) -> str:
    if "message_tree_id" in obj or "replies" in obj:
        return "oasst"
    if "completions" in obj:
        return "ultrafeedback"
    if "chosen" in obj or "rejected" in obj:
        if isinstance(obj.get("chosen"), list) or isinstance(obj.get("rejected"), list):
            return "pair_messages"
        if "prompt" not in obj and "messages" not in obj and _is_transcript(obj.get("chosen")):
            return "hh"
        return "pairwise"
    if {"answers", "messages", "prompt", *RANK_KEYS} & obj.keys():
        return next((key for key in RANK_KEYS if key in obj), "order")
    if {"parent_id", "role", "text"} <= obj.keys():
        raise _Bad(None, "one message of OpenAssistant's flat export: give its message-tree export instead "
                         "(one tree per line)", "unknown_shape")
    keys = ", ".join(sorted(map(_key, obj))[:8]) or "none"
    raise _Bad(None, f"unknown shape (fields: {keys}): expected 'answers' with 'order', 'ranks' or 'scores'; "
                     "'chosen' and 'rejected'; 'completions' (UltraFeedback); or an OpenAssistant message tree",
               "unknown_shape")


def _check_keys(obj: dict, allowed: tuple, pairwise: bool = False):
    for key in obj:
        if key not in allowed:
            raise _Bad(_key(key), _unknown_key(str(key), pairwise, allowed), "unknown_field")


def _unknown_key(key: str, pairwise: bool, allowed: tuple) -> str:
    if pairwise and key in ("answers",) + RANK_KEYS:
        return "a line has either 'chosen' and 'rejected' (pairwise) or 'answers' and 'order', not both"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(allowed)}"
    return f"unknown field ({hint})"


def _ranking(obj: dict, messages: list[dict], answers: list[str], ranks: list[int]) -> Ranking:
    """A Ranking with the optional fields every shape may carry, validated."""
    k = len(answers)
    ratings = _per_answer(obj, "ratings", k, _rating)
    flags = _per_answer(obj, "flags", k, _flag_list)
    _per_answer(obj, "finished", k, _bool)
    for key in ("lang", "source"):
        _optional_str(obj, key)
    prompt_id = _id(obj, "prompt_id") or _hash_id(messages)
    user_id = _id(obj, "user_id") or prompt_id  # a prompt without a user is its own user for the split
    annotator_id = _optional_str(obj, "annotator_id")
    kind = _optional_str(obj, "kind")
    return Ranking(prompt_id, user_id, annotator_id, messages, answers, ranks, kind, ratings, flags)


# ---- K answers: order, ranks or scores ----


def _kway(obj: dict) -> Ranking:
    _check_keys(obj, KWAY_KEYS)
    messages = _messages(obj)
    answers = _answers(obj)
    given = [key for key in RANK_KEYS if key in obj]
    if not given:
        raise _Bad("order", "missing (best first: answer indices, tied ones in a list; or per answer "
                            "'ranks' or 'scores')")
    if len(given) > 1:
        raise _Bad(given[1], f"give one of 'order', 'ranks' or 'scores', not both '{given[0]}' and '{given[1]}'")
    if given[0] == "order":
        ranks = _order_ranks(obj, len(answers))
    elif given[0] == "ranks":
        ranks = _dense(_per_answer(obj, "ranks", len(answers), _rank_value), higher_is_better=False)
    else:
        ranks = _dense(_per_answer(obj, "scores", len(answers), _score), higher_is_better=True)
    return _ranking(obj, messages, answers, ranks)


def _answers(obj: dict) -> list[str]:
    if "answers" not in obj:
        raise _Bad("answers", "missing (or give 'chosen' and 'rejected' for a pair)")
    answers = obj["answers"]
    if not isinstance(answers, list):
        raise _Bad("answers", f"must be a list of strings, got {_type(answers)}")
    if len(answers) < 2:
        raise _Bad("answers", f"K = {len(answers)}: a ranking needs at least two answers")
    # Identical answers are allowed: annotators may be shown the same sample twice; they are tied or ordered.
    return [_string(a, f"answers[{i}]") for i, a in enumerate(answers)]


def _order_ranks(obj: dict, k: int) -> list[int]:
    return _ranks(obj["order"], k)


class BadOrder(ValueError):
    """An "order" that is no ordering of the answers; its text says why, as "field 'order': ..."."""


def ranks_of_order(order, k: int) -> list[int]:
    """Per answer, the position of its group in `order` (0 = best): [2, [0, 3], 1] -> [1, 2, 0, 1]; every index
    0..k-1 exactly once, else BadOrder (the rankings reader and the labelling app's submit both take orders)."""
    try:
        return _ranks(order, k)
    except _Bad as e:
        raise BadOrder(str(e)) from None


def _ranks(order, k: int) -> list[int]:
    if not isinstance(order, list) or not order:
        got = "an empty list" if order == [] else _type(order)
        raise _Bad("order", f"must be a non-empty list of answer indices and tie groups, got {got}")
    ranks = [None] * k
    for position, element in enumerate(order):
        # A group of one is the same as its index; exporters that always write groups stay readable.
        if isinstance(element, list) and not element:
            raise _Bad("order", f"element {position} is an empty tie group")
        for index in element if isinstance(element, list) else [element]:
            if not _is_int(index):
                raise _Bad("order", f"element {position}: an answer index must be an integer, got {_type(index)}"
                           if isinstance(element, list) else
                           f"element {position} must be an answer index or a list of tied indices, "
                           f"got {_type(index)}")
            if not 0 <= index < k:
                raise _Bad("order", f"index {index} is out of range for {k} answers")
            if ranks[index] is not None:
                raise _Bad("order", f"index {index} appears twice")
            ranks[index] = position
    missing = [i for i, r in enumerate(ranks) if r is None]
    if missing:
        raise _Bad("order", f"index {missing[0]} is missing (every answer must be ranked)")
    return ranks


def _dense(values: list, higher_is_better: bool) -> list[int]:
    """Ranks 0..G-1 (0 = best) from per-answer values; equal values share a rank: [3, 1, 3] -> [1, 0, 1] (lower
    better), or [0, 1, 0] (higher better). Only the order of the values matters, so 0- and 1-based ranks agree."""
    levels = sorted(set(values), reverse=higher_is_better)
    position = {value: i for i, value in enumerate(levels)}
    return [position[value] for value in values]


def _rank_value(value, at: str) -> int:
    if not _is_int(value) or value < 0:
        raise _Bad(at, f"must be an integer >= 0 (lower is better), got {_show(value)}")
    return value


def _score(value, at: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Bad(at, f"must be a number, got {_type(value)}")
    if not math.isfinite(value):
        raise _Bad(at, f"must be a finite number, got {value}")
    return value


# ---- pairs: chosen and rejected ----


def _pairwise(obj: dict) -> Ranking:
    """Two answers as strings, the conversation in "messages" or "prompt"."""
    _check_keys(obj, PAIRWISE_KEYS, pairwise=True)
    messages = _messages(obj)
    return _ranking(obj, messages, [_text(obj, "chosen"), _text(obj, "rejected")], _pair_ranks(obj))


def _pair_ranks(obj: dict) -> list[int]:
    """[0, 1]; [0, 0] when score_chosen and score_rejected are given and equal."""
    given = [key for key in PAIR_SCORES if key in obj]
    if not given:
        return [0, 1]
    if len(given) == 1:
        other = PAIR_SCORES[1 - PAIR_SCORES.index(given[0])]
        raise _Bad(other, f"missing (give both '{PAIR_SCORES[0]}' and '{PAIR_SCORES[1]}', or neither)")
    chosen, rejected = (_score(obj[key], key) for key in PAIR_SCORES)
    if chosen < rejected:
        raise _Bad("score_rejected", f"{rejected} is above score_chosen ({chosen}): the chosen answer must not "
                                     "score lower")
    return [0, 0] if chosen == rejected else [0, 1]


def _pair_messages(obj: dict) -> Ranking:
    """TRL's preference pairs: chosen and rejected are message lists ending with their answers. The messages
    before the answers are the conversation, the same in both; if there are none, "prompt" holds it."""
    _check_keys(obj, PAIRWISE_KEYS, pairwise=True)
    chosen, rejected = _message_list_of(obj, "chosen", "rejected"), _message_list_of(obj, "rejected", "chosen")
    answers = [_answer_of(chosen, "chosen"), _answer_of(rejected, "rejected")]
    differ = _first_difference(chosen[:-1], rejected[:-1])
    if differ is not None:
        raise _Bad(f"rejected[{differ}]", f"differs from chosen[{differ}]: the two must share every message "
                                          "before their answers")
    if not chosen[:-1]:
        if "prompt" not in obj and "messages" not in obj:
            raise _Bad("prompt", "missing: 'chosen' and 'rejected' hold only their answers, so give the "
                                 "conversation as 'prompt'")
        return _ranking(obj, _messages(obj), answers, _pair_ranks(obj))
    messages = _conversation(chosen[:-1], "chosen")
    _check_agrees(obj, messages, chosen)
    return _ranking(obj, messages, answers, _pair_ranks(obj))


def _message_list_of(obj: dict, key: str, other: str) -> list[dict]:
    if key not in obj:
        raise _Bad(key, "missing")
    if not isinstance(obj[key], list):
        raise _Bad(key, f"must be a message list like '{other}', got {_type(obj[key])}")
    return _message_list(obj[key], key)


def _answer_of(messages: list[dict], key: str) -> str:
    last = messages[-1]["role"]
    if last != "assistant":
        raise _Bad(f"{key}[{len(messages) - 1}].role", f"the last message must be the assistant's answer, got {last}")
    return messages[-1]["content"]


def _first_difference(a: list, b: list) -> int | None:
    """The first index where two lists differ (a shorter list differs at its end), or None if they are equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _check_agrees(obj: dict, messages: list[dict], chosen: list[dict]):
    """A "prompt" or "messages" beside conversations in chosen/rejected (UltraFeedback binarized has both) must
    say the same: the conversation, the text of its last user message, or (messages) the chosen conversation."""
    for key in ("prompt", "messages"):
        if key not in obj:
            continue
        value = obj[key]
        same = value == messages or value == chosen or (isinstance(value, str) and
                                                       value.strip() == messages[-1]["content"].strip())
        if not same:
            raise _Bad(key, "differs from the conversation that 'chosen' and 'rejected' share")


def _hh(obj: dict) -> Ranking:
    """Anthropic HH-RLHF: chosen and rejected are whole transcripts that differ in their last Assistant turn."""
    _check_keys(obj, PAIRWISE_KEYS, pairwise=True)
    chosen, rejected = _transcript_of(obj, "chosen"), _transcript_of(obj, "rejected")
    differ = _first_difference(chosen[:-1], rejected[:-1])
    if differ is not None:
        raise _Bad("rejected", f"turn {differ + 1} differs from chosen's: the two transcripts must share every turn "
                               "before their last Assistant turn")
    messages = chosen[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise _Bad("chosen", "the turn before the last Assistant turn must be the Human's")
    answers = [_transcript_answer(chosen, "chosen"), _transcript_answer(rejected, "rejected")]
    return _ranking(obj, messages, answers, _pair_ranks(obj))


def _transcript_answer(turns: list[dict], key: str) -> str:
    if not turns[-1]["content"]:
        raise _Bad(key, "the last Assistant turn (the answer) is empty")
    return _string(turns[-1]["content"], key)


def _is_transcript(value) -> bool:
    return isinstance(value, str) and re.match(r"\s*Human:", value) is not None and "\n\nAssistant:" in value


def _transcript_of(obj: dict, key: str) -> list[dict]:
    """The turns of an HH transcript, the last one the Assistant's answer; every earlier turn non-empty."""
    if key not in obj:
        raise _Bad(key, "missing")
    if not _is_transcript(obj[key]):
        raise _Bad(key, "must be a transcript like 'chosen' (\"\\n\\nHuman: ...\\n\\nAssistant: ...\"), got "
                        + (_show(obj[key]) if isinstance(obj[key], str) else _type(obj[key])))
    turns = _transcript_turns(obj[key])
    if turns[-1]["role"] != "assistant":
        raise _Bad(key, "the last turn must be the Assistant's answer")
    for i, turn in enumerate(turns[:-1]):
        if not turn["content"]:
            raise _Bad(key, f"turn {i + 1} ({'Human' if turn['role'] == 'user' else 'Assistant'}) is empty")
        _string(turn["content"], key)  # a lone surrogate
    return turns


def _transcript_turns(text: str) -> list[dict]:
    """"\n\nHuman: Hi\n\nAssistant: Hello" -> [user "Hi", assistant "Hello"] (text before the first turn dropped)."""
    parts = HH_TURN.split("\n\n" + text.lstrip())
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
            for who, said in zip(parts[1::2], parts[2::2])]


# ---- UltraFeedback: completions with scores ----


def _ultrafeedback(obj: dict) -> Ranking:
    _check_keys(obj, UF_KEYS)
    messages = _messages(obj, UF_PROMPT_KEYS)
    completions = obj["completions"]
    if not isinstance(completions, list):
        raise _Bad("completions", f"must be a list of {{'response', score}} objects, got {_type(completions)}")
    if len(completions) < 2:
        raise _Bad("completions", f"K = {len(completions)}: a ranking needs at least two answers")
    for i, c in enumerate(completions):
        if not isinstance(c, dict):
            raise _Bad(f"completions[{i}]", f"must be an object with 'response' and a score, got {_type(c)}")
    answers = [_text(c, "response", f"completions[{i}].response") for i, c in enumerate(completions)]
    return _ranking(obj, messages, answers, _dense(_completion_scores(completions), higher_is_better=True))


def _completion_scores(completions: list[dict]) -> list[float]:
    """Each completion's score under the first of UF_SCORES that every completion has."""
    for key in UF_SCORES:
        if all(c.get(key) is not None for c in completions):
            read = _mean_rating if key == "annotations" else _score
            return [read(c[key], f"completions[{i}].{key}") for i, c in enumerate(completions)]
    unscored = [i for i, c in enumerate(completions) if all(c.get(key) is None for key in UF_SCORES)]
    wanted = "give every completion 'fine-grained_score', 'annotations' ratings or 'overall_score'"
    if unscored:
        raise _Bad(f"completions[{unscored[0]}]", f"no score ({wanted})")
    raise _Bad("completions", f"no score that every completion has ({wanted})")


def _mean_rating(annotations, at: str) -> float:
    """The mean of UltraFeedback's per-aspect ratings, {"helpfulness": {"Rating": "4", ...}, ...} (an aspect
    may also hold a list of such objects); "N/A" ratings are left out."""
    if not isinstance(annotations, dict):
        raise _Bad(at, f"must be an object of aspects, each with a 'Rating', got {_type(annotations)}")
    ratings = []
    for aspect, value in annotations.items():
        entries = value if isinstance(value, list) else [value]
        for j, entry in enumerate(entries):
            where = f"{at}.{_key(aspect)}" + (f"[{j}]" if isinstance(value, list) else "")
            if not isinstance(entry, dict) or "Rating" not in entry:
                raise _Bad(where, f"must be an object with a 'Rating', got {_show(entry)}")
            rating = _rating_number(entry["Rating"], f"{where}.Rating")
            if rating is not None:
                ratings.append(rating)
    if not ratings:
        raise _Bad(at, "no rating to score by (every 'Rating' is N/A)")
    return sum(ratings) / len(ratings)


def _rating_number(value, at: str) -> float | None:
    """A rating as a number: UltraFeedback writes them as strings ("4"), and "N/A" (None) where an aspect
    does not apply."""
    if isinstance(value, str) and value.strip().upper() == "N/A":
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Bad(at, f"must be a number or \"N/A\", got {_show(value)}") from None
        return _score(number, at)
    return _score(value, at)


# ---- OpenAssistant message trees ----


def _tree(obj: dict) -> list[Ranking]:
    """A ranking for each prompter message whose (not deleted) assistant replies carry >= 2 ranks, its
    conversation the path from the root. The record is the export's {"message_tree_id", "prompt": root}, or
    the root message itself. The tree's rankings share one user, its first prompter's, so that a split by user
    keeps the tree whole."""
    if "message_tree_id" in obj:
        _check_keys(obj, TREE_KEYS)
        if "prompt" not in obj:
            raise _Bad("prompt", "missing (the tree's first message)")
        root, at = obj["prompt"], "prompt"
    else:
        root, at = obj, ""
    first = _tree_message(root, at)
    if first["role"] != "user":
        raise _Bad(_sub(at, "role"), "the tree's first message must be the prompter's")
    user_id = _first_id(root.get("user_id"), obj.get("message_tree_id"), root.get("message_id")) or _hash_id([first])
    rankings, stack = [], [(root, at, [first])]
    while stack:  # depth first, in order; a loop, not recursion, however deep the tree
        node, at, conversation = stack.pop()
        replies = _replies(node, at, conversation[-1]["role"])
        if conversation[-1]["role"] == "user":
            ranking = _tree_ranking(node, conversation, replies, user_id)
            rankings += [ranking] if ranking else []
        stack += [(reply, reply_at, conversation + [message]) for reply, reply_at, message in reversed(replies)]
    return rankings


def _sub(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


def _tree_message(node, at: str) -> dict:
    if not isinstance(node, dict):
        raise _Bad(at, f"must be a message object ('role', 'text', 'replies'), got {_type(node)}")
    role = node.get("role")
    if not isinstance(role, str) or role not in TREE_ROLES:
        raise _Bad(_sub(at, "role"), f"must be 'prompter' or 'assistant', got {_show(role)}")
    return {"role": TREE_ROLES[role], "content": _text(node, "text", _sub(at, "text"))}


def _replies(node: dict, at: str, role: str) -> list[tuple[dict, str, dict]]:
    """(reply, its field, its message) for each reply that is not deleted."""
    replies = node.get("replies")
    if replies is None:
        return []
    if not isinstance(replies, list):
        raise _Bad(_sub(at, "replies"), f"must be a list of messages, got {_type(replies)}")
    out = []
    for i, reply in enumerate(replies):
        reply_at = f"{_sub(at, 'replies')}[{i}]"
        if isinstance(reply, dict) and reply.get("deleted") is True:
            continue
        message = _tree_message(reply, reply_at)
        if message["role"] == role:
            raise _Bad(f"{reply_at}.role", "a reply must come from the other side (prompter, assistant, ...)")
        out.append((reply, reply_at, message))
    return out


def _tree_ranking(node: dict, conversation: list[dict], replies: list, user_id: str) -> Ranking | None:
    ranked = [(reply, reply_at, message) for reply, reply_at, message in replies if reply.get("rank") is not None]
    ranks = [_rank_value(reply["rank"], f"{reply_at}.rank") for reply, reply_at, _ in ranked]
    if len(ranked) < 2:
        return None
    prompt_id = _first_id(node.get("message_id")) or _hash_id(conversation)
    return Ranking(prompt_id, user_id, "", conversation, [message["content"] for _, _, message in ranked],
                   _dense(ranks, higher_is_better=False))


def _first_id(*values) -> str:
    """The first non-blank string among the values, or ""."""
    return next((v for v in values if isinstance(v, str) and v.strip()), "")


# ---- conversations ----


def _messages(obj: dict, keys: tuple = ("prompt", "messages")) -> list[dict]:
    """The conversation the answers reply to, from whichever of `keys` the record has: a message list ending with
    the user's turn, a string (the user's one message), or an HH prompt ("\\n\\nHuman: ...\\n\\nAssistant:")."""
    given = [key for key in keys if key in obj]
    if len(given) > 1:
        both = f"either '{keys[0]}' or '{keys[1]}', not both" if len(keys) == 2 else \
            "only one of " + ", ".join(f"'{k}'" for k in keys)
        raise _Bad(given[0], f"give {both}")
    if not given:
        if keys == ("prompt", "messages"):
            raise _Bad("messages", "missing (give 'messages', or 'prompt' for a single user message)")
        raise _Bad(keys[0], "missing (give " + ", ".join(f"'{k}'" for k in keys) + ")")
    key, value = given[0], obj[given[0]]
    if isinstance(value, list) or key == "messages":
        return _conversation(_message_list(value, key), key)
    if _is_transcript(value):
        return _transcript_prompt(value, key)
    return [{"role": "user", "content": _string(value, key)}]


def _message_list(value, field: str) -> list[dict]:
    """Validated {"role", "content"} messages (other keys inside a message are ignored)."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else _type(value)
        raise _Bad(field, f"must be a non-empty list of {{'role', 'content'}} objects, got {got}")
    messages = []
    for i, turn in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(at, f"must be an object with 'role' and 'content', got {_type(turn)}")
        if "role" not in turn:
            raise _Bad(f"{at}.role", "missing")
        role = turn["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise _Bad(f"{at}.role", f"must be one of system, user, assistant, got {_show(role)}")
        messages.append({"role": role, "content": _content(turn, f"{at}.content")})
    return messages


def _content(turn: dict, field: str) -> str:
    """A message's content: a string, or a list of text parts joined (see chat.join_text_parts)."""
    if "content" not in turn:
        raise _Bad(field, "missing")
    value = turn["content"]
    if isinstance(value, list):
        try:
            value = join_text_parts(value)
        except PartError as e:
            raise _Bad(field + e.at, str(e)) from None
    return _string(value, field)


def _conversation(messages: list[dict], field: str) -> list[dict]:
    """The messages, checked as a prompt: a system message only first, the user's message last."""
    for i, message in enumerate(messages):
        if message["role"] == "system" and i > 0:
            raise _Bad(f"{field}[{i}].role", "a system message may only come first")
    if messages[-1]["role"] != "user":
        # The answers continue the conversation, so the prompt must end with what they answer.
        raise _Bad(f"{field}[{len(messages) - 1}].role", f"the last message must be the user's, "
                                                         f"got {messages[-1]['role']}")
    return messages


def _transcript_prompt(text: str, field: str) -> list[dict]:
    """An HH prompt, "\\n\\nHuman: ...\\n\\nAssistant:", as messages ending with the Human's turn."""
    turns = _transcript_turns(text)
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns = turns[:-1]  # the empty Assistant turn the answers were sampled after
    for i, turn in enumerate(turns):
        if not turn["content"]:
            raise _Bad(field, f"turn {i + 1} of the transcript is empty")
        _string(turn["content"], field)  # a lone surrogate
    if not turns or turns[-1]["role"] != "user":
        raise _Bad(field, "a transcript prompt must end with the Human's turn (and an empty 'Assistant:')")
    return turns


# ---- fields ----


def _per_answer(obj: dict, key: str, k: int, check) -> list | None:
    if key not in obj:
        return None
    values = obj[key]
    if not isinstance(values, list):
        raise _Bad(key, f"must be a list with one entry per answer, got {_type(values)}")
    if len(values) != k:
        entries = "1 entry" if len(values) == 1 else f"{len(values)} entries"
        raise _Bad(key, f"mismatched lengths: {entries} for {k} answers")
    return [check(v, f"{key}[{i}]") for i, v in enumerate(values)]


def _rating(value, at: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(at, f"must be an object of scores ({', '.join(RATING_KEYS)}), got {_type(value)}")
    for name, score in value.items():
        if name not in RATING_KEYS:
            raise _Bad(f"{at}.{_key(name)}", f"unknown rating (expected one of {', '.join(RATING_KEYS)})")
        if not _is_int(score) or not RATING_MIN <= score <= RATING_MAX:
            raise _Bad(f"{at}.{name}", f"must be an integer from {RATING_MIN} to {RATING_MAX}, got {_show(score)}")
    return dict(value)


def _flag_list(value, at: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise _Bad(at, f"must be a list of strings, got {_show(value)}")
    return list(value)


def _bool(value, at: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(at, f"must be true or false, got {_show(value)}")
    return value


def _id(obj: dict, key: str) -> str:
    """A non-empty string, or "" when absent (the caller picks the default)."""
    if key not in obj:
        return ""
    return _string(obj[key], key)


def _optional_str(obj: dict, key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise _Bad(key, f"must be a string, got {_type(value)}")
    return value


def _text(obj: dict, key: str, field: str | None = None) -> str:
    field = field or key
    if key not in obj:
        raise _Bad(field, "missing")
    return _string(obj[key], field)


def _string(value, field: str) -> str:
    if not isinstance(value, str):
        raise _Bad(field, f"must be a non-empty string, got {_type(value)}")
    if not value.strip():
        raise _Bad(field, "must be a non-empty string, got " + ("an empty string" if not value else "only whitespace"))
    try:
        value.encode("utf-8")  # a lone surrogate ("\ud800") parses, then breaks the tokenizer and the writer
    except UnicodeEncodeError as e:
        raise _Bad(field, f"invalid unicode escape {value[e.start]!r} at character {e.start}") from None
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not answer 1


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def _key(key) -> str:
    """A record's key as an error message shows it: escaped, so that a newline in it cannot break the line."""
    return json.dumps(str(key), ensure_ascii=False)[1:-1]


def _show(value) -> str:
    """A value as JSON, cut to 60 characters; one that JSON cannot show (too deep, or bytes from a table) by its type."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return _type(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hash_id(messages: list[dict]) -> str:
    # Stable across runs and machines (never Python's hash()), and the same for "prompt" and its messages form.
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- files ----


def read_rankings(path, skip_invalid: bool = False) -> tuple[list[Ranking], dict]:
    """Every valid ranking under `path` (a file, a datasets folder, or a folder of files in name order), and a
    report: {"path", "files", "read": records seen (skipped ones included), "rankings", "shapes": records per
    shape, "unranked": records holding no ranking (message trees without ranked replies), "all_tied": rankings
    whose answers all tie (no pair to learn from), "skipped", "skipped_by": reason -> count, "first_errors": up to
    5 messages}. Without skip_invalid the first bad record raises; an empty file, nothing valid, or nothing but
    ties always does."""
    path = Path(path)
    report = {"path": str(path), "files": 0, "read": 0, "rankings": 0, "shapes": {}, "unranked": 0, "all_tied": 0,
              "skipped": 0, "skipped_by": {}, "first_errors": []}
    rankings = []
    for source in sources(path):
        report["files"] += 1
        for where, item in source_records(source):
            report["read"] += 1
            try:
                shape, found = _parse(item)
            except (_Bad, BadLine) as e:
                _skip_or_raise(report, f"{where}: {e}", e.reason, skip_invalid)
                continue
            report["shapes"][shape] = report["shapes"].get(shape, 0) + 1
            report["unranked"] += not found
            rankings += found
    report["rankings"] = len(rankings)
    report["all_tied"] = sum(1 for r in rankings if max(r.ranks) == 0)
    _check_trainable(path, rankings, report)
    return rankings, report


def _skip_or_raise(report: dict, message: str, reason: str, skip_invalid: bool):
    if not skip_invalid:
        raise DataError(message)
    report["skipped"] += 1
    report["skipped_by"][reason] = report["skipped_by"].get(reason, 0) + 1
    if len(report["first_errors"]) < MAX_FIRST_ERRORS:
        report["first_errors"].append(message)


def _check_trainable(path: Path, rankings: list[Ranking], report: dict):
    """Nothing to train on is an error, never a silent "loss 0"."""
    if not rankings and report["skipped"]:
        raise DataError(f"{path}: no valid rankings (skipped {report['skipped']}); "
                        f"first error: {report['first_errors'][0]}")
    if not rankings:
        raise DataError(f"{path}: no rankings: none of its {report['read']} records has two ranked answers to one "
                        "message (message trees without ranked replies)")
    if report["all_tied"] == len(rankings):
        raise DataError(f"{path}: every one of its {len(rankings)} rankings ties all its answers, so there is no "
                        "(better, worse) pair to learn from")


def format_report(report: dict) -> str:
    """One line for the log, and a second with the first skipped record when there was one."""
    shapes = ", ".join(f"{n} {shape}" for shape, n in sorted(report["shapes"].items()))
    line = f"read {report['rankings']} rankings from {report['path']} ({shapes})"
    if report["all_tied"]:
        line += f"; {report['all_tied']} tie all their answers (no pair to learn from)"
    if report["unranked"]:
        line += f"; {report['unranked']} records hold no ranking"
    if not report["skipped"]:
        return line
    counts = sorted(report["skipped_by"].items(), key=lambda kv: (-kv[1], kv[0]))
    line += f"; skipped {report['skipped']}: " + ", ".join(f"{n} {reason}" for reason, n in counts)
    return f"{line}\n  first skipped: {report['first_errors'][0]}"


def write_rankings(path, rankings: list[Ranking]):
    """One JSON line per ranking, UTF-8 and readable (not \\u-escaped), written atomically."""
    path = Path(path)
    lines = []
    for i, ranking in enumerate(rankings):
        record = ranking.record()
        # Validate what we write (an empty sampled answer, say) now, rather than when a later stage reads it.
        parse_ranking(record, f"{path}: ranking {i}")
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


# ---- splitting and pairs ----


def split_by_user(rankings: list[Ranking], heldout_fraction: float, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    """(train, heldout), each in input order. A user's rankings all go to one side, so a held-out score
    measures generalisation to new people, as in InstructGPT. Users who share a prompt_id (two people
    asking the same default-hashed question) move together, so no prompt is on both sides either.
    A group's side depends only on (seed, its smallest user_id), so adding users leaves the others where
    they were. With >= 2 such groups and 0 < heldout_fraction, each side gets at least one."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    # Union-find over users linked by a shared prompt_id; the root is the smallest user_id.
    parent = {r.user_id: r.user_id for r in rankings}

    def root(u):
        while parent[u] != u:
            u = parent[u]
        return u

    first_user = {}
    for r in rankings:
        a, b = root(r.user_id), root(first_user.setdefault(r.prompt_id, r.user_id))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups = sorted({root(u) for u in parent}, key=lambda g: _unit_hash(seed, g))
    heldout = {g for g in groups if _unit_hash(seed, g) < heldout_fraction}
    if heldout_fraction > 0 and len(groups) >= 2:
        if not heldout:  # the lowest hashes are the ones a slightly larger fraction would take first
            heldout = {groups[0]}
        elif len(heldout) == len(groups):
            heldout.discard(groups[-1])
    train = [r for r in rankings if root(r.user_id) not in heldout]
    held = [r for r in rankings if root(r.user_id) in heldout]
    return train, held


def _unit_hash(seed: int, user_id: str) -> float:
    """A number in [0, 1) from sha256: the same on every machine and run (Python's hash() is salted)."""
    digest = hashlib.sha256(f"{seed}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """All (better, worse) answer-index pairs, ties skipped: [0, 1, 1] -> [(0, 1), (0, 2)]."""
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
