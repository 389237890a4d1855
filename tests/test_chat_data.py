"""Dialogue files for SFT: every shape and container converts exactly (the fixtures under tests/fixtures/data too),
every bad record names its location and field, and no input, generated ones included, gives anything but
dialogues or a DataError."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_like, mutated

from chatforge.data.chat import FORMATS, LoadReport, format_report, parse_dialogue, read_dialogues
from chatforge.data.containers import records as records_of
from chatforge.errors import DataError
from chatforge.io import read_jsonl

U, A, S = "user", "assistant", "system"
GOOD = {"messages": [{"role": U, "content": "Hi"}, {"role": A, "content": "Hello!"}]}
GOOD_MESSAGES = [{"role": U, "content": "Hi"}, {"role": A, "content": "Hello!"}]


def msg(role, content):
    return {"role": role, "content": content}


def write_jsonl(path: Path, records) -> Path:
    """Records are objects (dumped) or str (written as the raw line)."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def raises_at(where: str, message: str):
    """pytest.raises for a DataError whose whole message is `where: message`."""
    return pytest.raises(DataError, match="^" + re.escape(f"{where}: {message}") + "$")


# ---- the three formats ----


def test_messages_format_keeps_role_and_content_only(tmp_path):
    record = {"kind": "fact", "lang": "en", "messages": [
        {"role": S, "content": "Be brief."}, {"role": U, "content": "Capital of France?", "name": "ann"},
        {"role": A, "content": "Paris."}, {"role": U, "content": "And Japan?"}, {"role": A, "content": "Tokyo."}]}
    dialogues, report = read_dialogues(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert dialogues == [[msg(S, "Be brief."), msg(U, "Capital of France?"), msg(A, "Paris."),
                          msg(U, "And Japan?"), msg(A, "Tokyo.")]]
    assert report == LoadReport(path=tmp_path / "d.jsonl", fmt="messages", num_read=1, num_kept=1)


def test_sharegpt_speakers_map_to_roles(tmp_path):
    records = [
        {"id": "x1", "conversations": [{"from": "system", "value": "Sys"}, {"from": "human", "value": "Q1"},
                                       {"from": "gpt", "value": "A1"}, {"from": "user", "value": "Q2"},
                                       {"from": "chatgpt", "value": "A2"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "assistant", "value": "A", "weight": 1}]},
    ]
    dialogues, report = read_dialogues(write_jsonl(tmp_path / "sg.jsonl", records))
    assert dialogues == [[msg(S, "Sys"), msg(U, "Q1"), msg(A, "A1"), msg(U, "Q2"), msg(A, "A2")],
                         [msg(U, "Q"), msg(A, "A")]]
    assert report.fmt == "sharegpt"


def test_alpaca_appends_a_nonempty_input_after_a_blank_line(tmp_path):
    records = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": "Name a fruit.", "output": "Apple"},
        {"instruction": "Name a city.", "input": None, "output": "Paris"},
        {"instruction": "Count.", "input": "  \n", "output": "One"},
    ]
    dialogues, report = read_dialogues(write_jsonl(tmp_path / "alpaca.jsonl", records))
    assert dialogues == [
        [msg(U, "Translate to French.\n\nGood morning"), msg(A, "Bonjour")],
        [msg(U, "Name a colour."), msg(A, "Blue")],
        [msg(U, "Name a fruit."), msg(A, "Apple")],
        [msg(U, "Name a city."), msg(A, "Paris")],
        [msg(U, "Count."), msg(A, "One")],
    ]
    assert report.fmt == "alpaca"


def test_format_is_detected_per_record(tmp_path):
    records = [GOOD, {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
               {"instruction": "I", "output": "O"}]
    dialogues, report = read_dialogues(write_jsonl(tmp_path / "mixed.jsonl", records))
    assert dialogues == [GOOD_MESSAGES, [msg(U, "Q"), msg(A, "A")], [msg(U, "I"), msg(A, "O")]]
    assert report.fmt == "alpaca+messages+sharegpt"


def test_a_forced_format_rejects_records_of_another(tmp_path):
    assert read_dialogues(write_jsonl(tmp_path / "ok.jsonl", [GOOD]), fmt="messages")[1].fmt == "messages"
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"instruction": "I", "output": "O"}])
    with raises_at(f"{path}:1", "instruction: missing"):
        read_dialogues(path, fmt="alpaca")
    with raises_at(f"{path}:2", "messages: missing"):
        read_dialogues(path, fmt="messages")
    with pytest.raises(DataError, match="unknown dialogue format 'chatml'"):
        read_dialogues(path, fmt="chatml")


def test_a_folder_reads_its_json_files_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "I2", "output": "O2"}])
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    (tmp_path / "c.json").write_text(json.dumps([{"instruction": "I3", "output": "O3"}]), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not data", encoding="utf-8")
    write_jsonl(tmp_path / ".hidden.jsonl", ["{broken"])
    dialogues, report = read_dialogues(tmp_path)
    assert dialogues == [GOOD_MESSAGES, [msg(U, "I2"), msg(A, "O2")], [msg(U, "I3"), msg(A, "O3")]]
    assert (report.path, report.num_read, report.num_kept, report.fmt) == (tmp_path, 3, 3, "alpaca+messages")


def test_an_error_in_a_folder_names_its_own_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [GOOD, GOOD])
    write_jsonl(tmp_path / "b.jsonl", [GOOD, {"messages": [msg(U, "Q")]}])
    with raises_at(f"{tmp_path / 'b.jsonl'}:2", "messages: no assistant turn to learn from"):
        read_dialogues(tmp_path)


def test_a_json_file_of_json_lines_reads_like_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "hf.json", [GOOD, {"messages": []}])
    with raises_at(f"{path}:2", "messages: must be a non-empty list of turns, got an empty list"):
        read_dialogues(path)


def test_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + json.dumps(GOOD).encode() + b"\r\n")
    assert read_dialogues(path)[0] == [GOOD_MESSAGES, GOOD_MESSAGES]


# ---- every malformed record: the exact message, then the same file with skip_invalid ----

CONVERSATION = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
BAD_RECORDS = [  # (line 2 of the file, reason key, message after "file:2: ")
    ("[1, 2]", "not_object", "expected a JSON object (one dialogue), got list"),
    ('"just text"', "not_object", "expected a JSON object (one dialogue), got str"),
    ({"text": "hi", "id": 3}, "unknown_format",
     "unknown format: expected 'messages' (OpenAI), 'conversations' (ShareGPT), 'instruction' and 'output' "
     "(Alpaca), or 'prompt' and 'completion'; got fields: id, text"),
    ({"messages": "hi"}, "bad_dialogue", "messages: must be a non-empty list of turns, got str"),
    ({"messages": None}, "bad_dialogue", "messages: must be a non-empty list of turns, got null"),
    ({"messages": []}, "empty_dialogue", "messages: must be a non-empty list of turns, got an empty list"),
    ({"messages": [msg(U, "Q"), "A"]}, "bad_turn",
     "messages[1]: must be an object with 'role' and 'content', got str"),
    ({"messages": [msg(U, "Q"), {"content": "A"}]}, "missing_role", "messages[1].role: missing"),
    ({"messages": [msg("bot", "Q"), msg(A, "A")]}, "unknown_role",
     "messages[0].role: unknown role 'bot' (expected one of system, user, assistant)"),
    ({"messages": [msg(U, "Q"), msg(["assistant"], "A")]}, "unknown_role",
     "messages[1].role: unknown role ['assistant'] (expected one of system, user, assistant)"),
    ({"messages": [msg(U, "Q"), {"role": A}]}, "missing_content", "messages[1].content: missing"),
    ({"messages": [msg(U, "Q"), msg(A, 42)]}, "bad_content", "messages[1].content: must be a non-empty string, got int"),
    ({"messages": [msg(U, None), msg(A, "A")]}, "bad_content",
     "messages[0].content: must be a non-empty string, got null"),
    ({"messages": [msg(U, "Q"), msg(A, "")]}, "empty_content",
     "messages[1].content: must be a non-empty string, got an empty string"),
    ({"messages": [msg(U, " \n\t"), msg(A, "A")]}, "empty_content",
     "messages[0].content: must be a non-empty string, got only whitespace"),
    ('{"messages": [{"role": "user", "content": "Q\\ud800"}, {"role": "assistant", "content": "A"}]}', "bad_content",
     "messages[0].content: invalid unicode escape '\\ud800' at character 1"),
    ({"messages": [msg(U, "Q"), msg(S, "Sys"), msg(A, "A")]}, "misplaced_system",
     "messages[1].role: a system turn may only come first"),
    ({"messages": [msg(S, "S1"), msg(S, "S2"), msg(U, "Q"), msg(A, "A")]}, "misplaced_system",
     "messages[1].role: a system turn may only come first"),
    ({"messages": [msg(U, "Q"), msg(U, "Q again"), msg(A, "A")]}, "repeated_role",
     "messages[1].role: two user turns in a row"),
    ({"messages": [msg(U, "Q"), msg(A, "A"), msg(A, "A again")]}, "repeated_role",
     "messages[2].role: two assistant turns in a row"),
    ({"messages": [msg(U, "Q")]}, "no_assistant", "messages: no assistant turn to learn from"),
    ({"messages": [msg(S, "Sys")]}, "no_assistant", "messages: no assistant turn to learn from"),
    ({"messages": [msg(A, "A"), msg(U, "Q"), msg(A, "A")]}, "first_not_user",
     "messages[0].role: the first turn must be the user's, got assistant"),
    ({"messages": [msg(S, "Sys"), msg(A, "A")]}, "first_not_user",
     "messages[1].role: the first turn after the system prompt must be the user's, got assistant"),
    ({"messages": [msg(U, "Q"), msg(A, "A"), msg(U, "Q2")]}, "user_turn_last",
     "messages: the last turn must be the assistant's, got user"),
    ({"conversations": [{"from": "bot", "value": "Q"}]}, "unknown_role",
     "conversations[0].from: unknown speaker 'bot' (expected one of system, human, user, gpt, assistant, chatgpt)"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt"}]}, "missing_content",
     "conversations[1].value: missing"),
    ({"conversations": [{"value": "Q"}]}, "missing_role", "conversations[0].from: missing"),
    ({"conversations": CONVERSATION + [{"from": "human", "value": "Q2"}]}, "user_turn_last",
     "conversations: the last turn must be the assistant's, got user"),
    ({"conversations": {"human": "Q"}}, "bad_dialogue", "conversations: must be a non-empty list of turns, got dict"),
    ({"instruction": "", "output": "O"}, "empty_instruction",
     "instruction: must be a non-empty string, got an empty string"),
    ({"instruction": "I", "output": "   "}, "empty_output", "output: must be a non-empty string, got only whitespace"),
    ({"instruction": "I", "input": "x"}, "missing_output", "output: missing"),
    ({"instruction": 5, "output": "O"}, "bad_instruction", "instruction: must be a non-empty string, got int"),
    ({"instruction": "I", "input": ["x"], "output": "O"}, "bad_input", "input: must be a string, got list"),
    ({"conversations": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]}, "unknown_role",
     "conversations[1].role: unknown speaker 'bot' (expected one of system, human, user, gpt, assistant, chatgpt)"),
    ({"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant"}]}, "missing_content",
     "conversations[1].content: missing"),
    ({"prompt": "Q"}, "missing_completion", "completion: missing"),
    ({"completion": "A"}, "missing_prompt", "prompt: missing"),
    ({"prompt": "", "completion": "A"}, "empty_prompt", "prompt: must be a non-empty string, got an empty string"),
    ({"prompt": "Q", "completion": 7}, "bad_completion", "completion: must be a non-empty string, got int"),
    ({"prompt": [msg(U, "Q")], "completion": [msg(U, "A")]}, "repeated_role", "completion[0].role: two user turns in a row"),
    ({"prompt": [msg(U, "Q"), msg(A, "A")], "completion": [msg(A, "A2")]}, "repeated_role",
     "completion[0].role: two assistant turns in a row"),
    ({"prompt": [msg(U, "Q"), msg(A, "A")], "completion": "A2"}, "repeated_role",
     "completion: two assistant turns in a row"),
    ({"prompt": [msg(A, "Hi"), msg(U, "Q")], "completion": "A"}, "first_not_user",
     "prompt[0].role: the first turn must be the user's, got assistant"),
    ({"prompt": [], "completion": "A"}, "empty_dialogue", "prompt: must be a non-empty list of turns, got an empty list"),
    ({"prompt": "Q", "completion": [msg(A, "A"), msg(U, "Q2")]}, "user_turn_last",
     "completion: the last turn must be the assistant's, got user"),
    ({"messages": [msg(U, "Q"), msg(A, [{"type": "image_url", "image_url": {"url": "x"}}])]}, "bad_content",
     "messages[1].content[0].type: only text parts can be trained on, got 'image_url'"),
    ({"messages": [msg(U, "Q"), msg(A, ["A"])]}, "bad_content",
     "messages[1].content[0]: a content part must be an object {'type': 'text', 'text': ...}, got str"),
    ({"messages": [msg(U, "Q"), msg(A, [{"type": "text", "text": 3}])]}, "bad_content",
     "messages[1].content[0].text: must be a string, got int"),
    ({"messages": [msg(U, "Q"), msg(A, [])]}, "empty_content",
     "messages[1].content: must be a non-empty string, got an empty string"),
    ({"messages": [msg(U, [{"type": "text", "text": " "}]), msg(A, "A")]}, "empty_content",
     "messages[0].content: must be a non-empty string, got only whitespace"),
    ('{"messages": [', "broken_json", "broken JSON line (Expecting value at column 15)"),
    ("[" * 50_000, "too_deep", "JSON nested too deeply to parse"),
    ('{"n": ' + "9" * 5000 + "}", "broken_json", "broken JSON line (Exceeds the limit (4300 digits) for integer string conversion)"),
    ("{'messages': []}", "broken_json",
     "broken JSON line (Expecting property name enclosed in double quotes at column 2)"),
]


@pytest.mark.parametrize("bad, reason, message", BAD_RECORDS, ids=[f"{r}-{i}" for i, (_, r, _) in enumerate(BAD_RECORDS)])
def test_a_bad_record_names_file_line_and_field(tmp_path, bad, reason, message):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, bad, GOOD])
    with raises_at(f"{path}:2", message):
        read_dialogues(path)
    dialogues, report = read_dialogues(path, skip_invalid=True)
    assert dialogues == [GOOD_MESSAGES, GOOD_MESSAGES]
    assert (report.num_read, report.num_kept, report.skipped) == (3, 2, {reason: 1})
    assert report.first_errors == [f"{path}:2: {message}"]


@pytest.mark.parametrize("bad_line", [3, 2000])  # 2000: past the first 8 KB a text-mode reader decodes at once
def test_non_utf8_bytes_name_their_line(tmp_path, bad_line):
    lines = [json.dumps(GOOD).encode()] * 2500
    lines[bad_line - 1] = b'{"messages": [{"role": "user", "content": "caf\xff\xfe"}]}'
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with raises_at(f"{path}:{bad_line}", "not UTF-8 text (byte 0xff at column 47)"):
        read_dialogues(path)
    dialogues, report = read_dialogues(path, skip_invalid=True)
    assert len(dialogues) == 2499 and dialogues[-1] == GOOD_MESSAGES
    assert (report.num_read, report.num_kept, report.skipped) == (2500, 2499, {"not_utf8": 1})


def test_skipping_counts_each_reason_and_keeps_the_first_five_messages(tmp_path):
    records = [GOOD, "{broken", {"messages": [msg(U, "Q"), msg(A, "")]}, {"messages": [msg(U, "")]}, GOOD,
               {"messages": [msg(U, "Q")]}, "{broken", {"messages": [{"content": "Q"}]}, "[]", GOOD]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    dialogues, report = read_dialogues(path, skip_invalid=True)
    assert dialogues == [GOOD_MESSAGES] * 3
    assert report.skipped == {"broken_json": 2, "empty_content": 2, "no_assistant": 1, "missing_role": 1,
                              "not_object": 1}
    assert (report.num_read, report.num_kept) == (10, 3)
    assert [e.split(": ")[0] for e in report.first_errors] == [f"{path}:{n}" for n in (2, 3, 4, 6, 7)]
    assert format_report(report) == (
        f"read 3 dialogues from {path} (messages); skipped 7: 2 broken_json, 2 empty_content, 1 missing_role, "
        f"1 no_assistant, 1 not_object\n  first skipped: {path}:2: broken JSON line "
        "(Expecting property name enclosed in double quotes at column 2)")


def test_format_report_without_skips_is_one_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    assert format_report(read_dialogues(path)[1]) == f"read 1 dialogues from {path} (messages)"


def test_no_valid_dialogue_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{broken", {"messages": [msg(U, "Q")]}, {"messages": []}])
    expected = (f"{path}: no valid dialogues (skipped 3: 1 broken_json, 1 empty_dialogue, 1 no_assistant); "
                f"first error: {path}:1: broken JSON line")
    with pytest.raises(DataError, match="^" + re.escape(expected)):
        read_dialogues(path, skip_invalid=True)


# ---- .json arrays ----


def test_a_json_array_of_alpaca_records_names_record_numbers(tmp_path):
    records = [{"instruction": "I1", "input": "", "output": "O1"}, {"instruction": "I2", "input": "ctx", "output": "O2"},
               {"instruction": "I3", "input": "", "output": ""}, {"instruction": "I4", "output": "O4"}]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(records, indent=4), encoding="utf-8")
    with raises_at(f"{path}[record 3]", "output: must be a non-empty string, got an empty string"):
        read_dialogues(path)
    dialogues, report = read_dialogues(path, skip_invalid=True)
    assert dialogues == [[msg(U, "I1"), msg(A, "O1")], [msg(U, "I2\n\nctx"), msg(A, "O2")],
                         [msg(U, "I4"), msg(A, "O4")]]
    assert (report.fmt, report.num_read, report.num_kept, report.skipped) == ("alpaca", 4, 3, {"empty_output": 1})
    assert report.first_errors == [f"{path}[record 3]: output: must be a non-empty string, got an empty string"]


def test_a_broken_json_array_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"instruction": "I", "output": "O"},\n  {"instruction": "I" "output": "O"}\n]\n')
    for skip in (False, True):
        with raises_at(f"{path}:3", "broken JSON (Expecting ',' delimiter at column 23)"):
            read_dialogues(path, skip_invalid=skip)
    path.write_bytes(b'[\n  {"instruction": "I",\n   "output": "\xff"}\n]\n')
    with raises_at(f"{path}:3", "not UTF-8 text (byte 0xff)"):
        read_dialogues(path, skip_invalid=True)


# ---- files and folders that hold nothing to read ----


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("blank.jsonl", "\n  \n\n"), ("e.json", "[]"),
                                           ("e2.json", "")])
def test_an_empty_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    for skip in (False, True):
        with raises_at(str(path), "empty file (no records)"):
            read_dialogues(path, skip_invalid=skip)


def test_missing_paths_and_wrong_file_types_are_errors(tmp_path):
    with raises_at(str(tmp_path / "nope.jsonl"), "file not found"):
        read_dialogues(tmp_path / "nope.jsonl")
    (tmp_path / "d.csv").write_text("role,content\n", encoding="utf-8")
    with raises_at(str(tmp_path / "d.csv"), "expected a .jsonl, .json, .parquet or .arrow file, a datasets folder, "
                                            "or a folder of such files"):
        read_dialogues(tmp_path / "d.csv")
    with raises_at(str(tmp_path), "no .jsonl, .json, .parquet or .arrow files in this folder"):
        read_dialogues(tmp_path)


# ---- the shapes people have ----


def test_sharegpt_turns_may_use_role_and_content(tmp_path):
    record = {"conversations": [{"role": "system", "content": "Sys"}, {"role": "human", "content": "Q"},
                                {"role": "assistant", "content": "A"}]}
    dialogues, report = read_dialogues(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert dialogues == [[msg(S, "Sys"), msg(U, "Q"), msg(A, "A")]] and report.fmt == "sharegpt"


def test_prompt_completion_as_strings_and_as_message_lists(tmp_path):
    records = [{"prompt": "法国的首都是哪里？", "completion": "巴黎。"},
               {"prompt": [msg(S, "Be brief."), msg(U, "Q1"), msg(A, "A1"), msg(U, "Q2")], "completion": [msg(A, "A2")]},
               {"prompt": "Q", "completion": [msg(A, "A")]}]
    dialogues, report = read_dialogues(write_jsonl(tmp_path / "pc.jsonl", records))
    assert dialogues == [[msg(U, "法国的首都是哪里？"), msg(A, "巴黎。")],
                         [msg(S, "Be brief."), msg(U, "Q1"), msg(A, "A1"), msg(U, "Q2"), msg(A, "A2")],
                         [msg(U, "Q"), msg(A, "A")]]
    assert report.fmt == "prompt_completion"
    assert read_dialogues(tmp_path / "pc.jsonl", fmt="prompt_completion")[0] == dialogues


def test_content_parts_are_joined_wherever_a_content_is_accepted(tmp_path):
    parts = [{"type": "text", "text": "Paris is "}, {"type": "output_text", "text": "the capital."}]
    records = [{"messages": [msg(U, [{"type": "text", "text": "Capital of France?"}]), msg(A, parts)]},
               {"conversations": [{"role": "user", "content": [{"text": "Q"}]}, {"role": "assistant", "content": parts}]},
               {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": parts}]},
               {"prompt": [msg(U, [{"type": "input_text", "text": "Q"}])], "completion": [msg(A, parts)]}]
    dialogues, _ = read_dialogues(write_jsonl(tmp_path / "parts.jsonl", records))
    assert dialogues == [[msg(U, "Capital of France?"), msg(A, "Paris is the capital.")]] + \
        [[msg(U, "Q"), msg(A, "Paris is the capital.")]] * 3


# ---- the fixtures: every shape and container reads back to the same dialogues ----

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _load_build():
    spec = importlib.util.spec_from_file_location("fixture_build", FIXTURES / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
ALL = build.DIALOGUES
SINGLE = [d for d in ALL if build.single_turn(d)]
SFT_FIXTURES = [  # (path under tests/fixtures/data, the format found, the dialogues it holds)
    ("sft/messages.jsonl", "messages", ALL), ("sft/sharegpt.json", "sharegpt", ALL),
    ("sft/sharegpt_roles.jsonl", "sharegpt", ALL), ("sft/alpaca.json", "alpaca", SINGLE),
    ("sft/prompt_completion.jsonl", "prompt_completion", SINGLE),
    ("sft/prompt_completion_messages.json", "prompt_completion", ALL), ("sft/content_parts.jsonl", "messages", ALL),
    ("sft/messages.parquet", "messages", ALL), ("sft_datasets", "sharegpt", ALL),
    ("sft_datasetdict", "messages", ALL[:9]), ("sft_datasetdict:test", "messages", ALL[9:]),
]


@pytest.mark.parametrize("name, fmt, expected", SFT_FIXTURES, ids=[f[0] for f in SFT_FIXTURES])
def test_each_fixture_reads_to_its_dialogues(name, fmt, expected):
    dialogues, report = read_dialogues(f"{FIXTURES}/{name}")
    assert dialogues == expected
    assert (report.fmt, report.num_read, report.skipped) == (fmt, len(expected), {})
    assert 6 <= len(expected) <= 20 or name.startswith("sft_datasetdict")
    assert any("\u4e00" <= c <= "\u9fff" for d in expected for t in d for c in t["content"])  # bilingual


def test_the_fixture_folder_reads_every_file_in_it():
    dialogues, report = read_dialogues(FIXTURES / "sft")
    assert report.num_read == len(dialogues) == sum(len(e) for n, _, e in SFT_FIXTURES if n.startswith("sft/"))
    assert report.fmt == "alpaca+messages+prompt_completion+sharegpt"


def test_the_fixtures_are_what_build_py_writes(tmp_path):
    """The committed files and folders equal a fresh build: text byte for byte, tables row for row."""

    build.main(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh == sorted(p.relative_to(FIXTURES) for p in FIXTURES.rglob("*") if p.is_file() and p.suffix != ".py"
                           and p.name != "README.md" and "__pycache__" not in p.parts)
    for rel in fresh:
        if rel.suffix == ".parquet":
            assert pq.read_table(tmp_path / rel).to_pylist() == pq.read_table(FIXTURES / rel).to_pylist(), rel
        elif rel.suffix == ".arrow":
            assert _arrow_rows(tmp_path / rel) == _arrow_rows(FIXTURES / rel), rel
        else:
            assert (tmp_path / rel).read_bytes() == (FIXTURES / rel).read_bytes(), rel


def _arrow_rows(path: Path) -> list[dict]:
    with pa.memory_map(str(path)) as f:
        return pa.ipc.open_stream(f).read_all().to_pylist()


# ---- containers ----


def test_a_parquet_file_reads_like_the_json_it_was_made_from(tmp_path):
    records = [{"id": 1, "messages": [msg(U, "Q"), {"role": A, "content": "A", "name": "bot"}]},
               {"id": 2, "messages": [msg(U, "问题"), msg(A, "回答")], "meta": {"lang": "zh", "tags": ["x"]}}]
    pq.write_table(pa.Table.from_struct_array(pa.array(records)), tmp_path / "d.parquet")  # columns: all keys
    rows = list(records_of(tmp_path / "d.parquet"))
    # the nulls a table fills in (meta of row 0, name of the first message) are left out, as in the JSON
    assert rows == [(f"{tmp_path / 'd.parquet'}[row {i}]", r) for i, r in enumerate(records)]
    bad = [records[0], {"messages": [msg(U, "Q"), msg(A, "")]}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with raises_at(f"{tmp_path / 'bad.parquet'}[row 1]", "messages[1].content: must be a non-empty string, "
                                                          "got an empty string"):
        read_dialogues(tmp_path / "bad.parquet")


def test_a_datasets_folder_reads_its_shards_in_order_and_names_shard_and_row(tmp_path):
    build.write_datasets_folder(tmp_path / "ds", build.sft_records()["messages"][:5] + [{"messages": [msg(U, "Q")]}],
                                num_shards=2)
    with raises_at(f"{tmp_path / 'ds' / 'data-00001-of-00002.arrow'}[row 2]", "messages: no assistant turn to learn from"):
        read_dialogues(tmp_path / "ds")
    dialogues, report = read_dialogues(tmp_path / "ds", skip_invalid=True)
    assert dialogues == ALL[:5] and report.skipped == {"no_assistant": 1}


def test_a_dataset_dict_reads_train_or_the_split_named_after_a_colon(tmp_path):
    folder = FIXTURES / "sft_datasetdict"
    assert read_dialogues(folder)[0] == read_dialogues(f"{folder}:train")[0] == ALL[:9]
    assert read_dialogues(folder / "test")[0] == ALL[9:]  # a split's own folder is a datasets folder
    with raises_at(str(folder), "no split 'validation' (its splits: train, test)"):
        read_dialogues(f"{folder}:validation")
    build.write_dataset_dict(tmp_path / "dd", {"dev": build.sft_records()["messages"][:2],
                                               "test": build.sft_records()["messages"][2:4]})
    with raises_at(str(tmp_path / "dd"), f"a DatasetDict without a 'train' split: name one as {tmp_path / 'dd'}:SPLIT "
                                         "(its splits: dev, test)"):
        read_dialogues(tmp_path / "dd")
    build.write_dataset_dict(tmp_path / "one", {"validation": build.sft_records()["messages"][:2]})
    assert read_dialogues(tmp_path / "one")[0] == ALL[:2]  # the only split is the one to read


def test_datasets_metadata_is_never_read_as_data(tmp_path):
    for name in ("state.json", "dataset_info.json"):
        with raises_at(str(FIXTURES / "sft_datasets" / name), f"datasets metadata, not data: give its folder, "
                                                               f"{FIXTURES / 'sft_datasets'}"):
            read_dialogues(FIXTURES / "sft_datasets" / name)
    shutil.copytree(FIXTURES / "sft_datasets", tmp_path / "shards")
    (tmp_path / "shards" / "state.json").unlink()  # no longer a datasets folder: a folder of .arrow (and .json) files
    dialogues, report = read_dialogues(tmp_path / "shards")
    assert dialogues == ALL and report.num_read == 12


def test_an_arrow_file_of_either_ipc_format_reads(tmp_path):
    table = pa.Table.from_pylist(build.sft_records()["sharegpt"])
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert read_dialogues(tmp_path / "a.arrow")[0] == read_dialogues(tmp_path / "b.arrow")[0] == ALL


def test_gzipped_json_lines_and_an_indented_json_object(tmp_path):
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(GOOD) + "\n" for _ in range(3)).encode()))
    assert read_dialogues(tmp_path / "d.jsonl.gz")[0] == [GOOD_MESSAGES] * 3
    (tmp_path / "one.json").write_text(json.dumps(GOOD, indent=2), encoding="utf-8")
    assert read_dialogues(tmp_path / "one.json")[0] == [GOOD_MESSAGES]
    with raises_at(f"{tmp_path / 'one.json'}[record 1]", "messages[1].content: missing"):
        (tmp_path / "one.json").write_text(json.dumps({"messages": [msg(U, "Q"), {"role": A}]}, indent=1))
        read_dialogues(tmp_path / "one.json")


def test_a_folder_mixes_containers_in_name_order(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    pq.write_table(pa.Table.from_pylist([{"instruction": "I", "output": "O"}]), tmp_path / "b.parquet")
    (tmp_path / "c.json").write_text(json.dumps([{"prompt": "P", "completion": "C"}]), encoding="utf-8")
    dialogues, report = read_dialogues(tmp_path)
    assert dialogues == [GOOD_MESSAGES, [msg(U, "I"), msg(A, "O")], [msg(U, "P"), msg(A, "C")]]
    assert report.fmt == "alpaca+messages+prompt_completion"


# ---- what cannot be read: one DataError naming it, never a traceback ----


def _truncated(name: str):
    def write(path: Path):
        data = (FIXTURES / name).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return write


def _datasets_with(state_change: dict | None = None, drop: str = "", state_text: str = ""):
    def write(path: Path):
        shutil.copytree(FIXTURES / "sft_datasets", path)
        if state_change is not None:
            state = json.loads((path / "state.json").read_text())
            (path / "state.json").write_text(json.dumps({**state, **state_change}))
        if state_text:
            (path / "state.json").write_text(state_text)
        if drop:
            (path / drop).unlink()
    return write


def _dataset_dict_json(text: str):
    def write(path: Path):
        path.mkdir()
        (path / "dataset_dict.json").write_text(text)
    return write


def _zero_rows(path: Path):
    pq.write_table(pa.table({"messages": pa.array([], pa.string())}), path)


UNREADABLE = [  # (name, how to write it, message after "NAME")
    ("t.parquet", _truncated("sft/messages.parquet"), ": not a readable Parquet file (Parquet magic bytes not found "
                                                      "in footer. Either the file is corrupted or this is not a "
                                                      "parquet file.)"),
    ("e.parquet", lambda p: p.write_bytes(b""), ": empty file (no records)"),
    ("z.parquet", _zero_rows, ": empty file (no records)"),
    ("t.arrow", _truncated("sft_datasets/data-00000-of-00002.arrow"), ": not a readable Arrow file ("),
    ("ds", _datasets_with(drop="data-00001-of-00002.arrow"),
     ": missing the shard data-00001-of-00002.arrow that state.json lists"),
    ("ds", _datasets_with(state_text="{broken"),
     "/state.json: unreadable datasets metadata (Expecting property name enclosed in double quotes"),
    ("ds", _datasets_with({"_data_files": [{"filename": "../x.arrow"}]}),
     "/state.json: field '_data_files[0].filename': must be the name of an .arrow file in this folder, "
     'got "../x.arrow"'),
    ("ds", _datasets_with({"_indices_data_files": [{"filename": "indices.arrow"}]}),
     ": saved with an indices mapping (an old datasets version): save it again with a recent version of datasets, "
     "or export it to .parquet or .jsonl"),
    ("dd", _dataset_dict_json('{"splits": []}'),
     "/dataset_dict.json: field 'splits': must be a non-empty list of split names"),
    ("dd", _dataset_dict_json('{"splits": ["train"]}'),
     "/train: not a datasets folder (no state.json)"),
    ("deep.json", lambda p: p.write_text("[" * 100_000), ": JSON nested too deeply to parse"),
    ("n.json", lambda p: p.write_text('[{"n": ' + "1" * 5000 + "}]"),
     ": broken JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
    ("t.jsonl.gz", lambda p: p.write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode() * 500)[:200]),
     ":"),  # cut mid-stream: the line where reading stopped, then why
    ("folder.jsonl", lambda p: p.mkdir(), ": no .jsonl, .json, .parquet or .arrow files in this folder"),
]


@pytest.mark.parametrize("name, write, message", UNREADABLE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(UNREADABLE)])
def test_what_cannot_be_read_is_one_data_error_even_when_skipping(tmp_path, name, write, message):
    write(tmp_path / name)
    for skip in (False, True):
        with pytest.raises(DataError) as e:
            read_dialogues(tmp_path / name, skip_invalid=skip)
        assert str(e.value).startswith(f"{tmp_path / name}{message}"), str(e.value)


def test_a_line_over_the_size_limit_is_refused_unread_and_can_be_skipped(tmp_path):
    path = tmp_path / "big.jsonl"
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (20 * 2**20) + b'"}]}'
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + huge + b"\n" + json.dumps(GOOD).encode() + b"\n")
    with raises_at(f"{path}:2", "line longer than 4,194,304 bytes (refused without parsing: split the record, "
                                "or check the file is JSON lines)"):
        read_dialogues(path)
    dialogues, report = read_dialogues(path, skip_invalid=True)
    assert dialogues == [GOOD_MESSAGES] * 2 and report.skipped == {"line_too_long": 1}


def test_jsonl_on_a_folder_or_a_missing_file_is_a_data_error(tmp_path):
    with raises_at(str(tmp_path), "is a folder, not a file"):
        list(read_jsonl(tmp_path))
    with raises_at(str(tmp_path / "nope.jsonl"), "file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


# ---- generated input: every outcome is dialogues or a DataError ----

KEYS = ["messages", "conversations", "instruction", "input", "output", "prompt", "completion", "role", "content",
        "from", "value", "type", "text"]
WORDS = ["user", "assistant", "system", "human", "gpt", "text", "image_url", "", " ", "Q", "答", "\ud800"]
JSON = json_like(KEYS, WORDS, max_size=4, max_leaves=25)
VALID = [r for records in build.sft_records().values() for r in records[:2]]


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(JSON, mutated(VALID, JSON)), st.sampled_from(("auto",) + FORMATS))
def test_generated_records_give_dialogues_or_a_data_error(record, fmt):
    try:
        dialogue = parse_dialogue(record, "f:1", fmt)
    except DataError as e:
        assert str(e).startswith("f:1: ") and "\n" not in str(e)
        return
    assert dialogue and all(set(t) == {"role", "content"} and t["content"].strip() for t in dialogue)
    assert dialogue[-1]["role"] == "assistant"


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.binary(max_size=40) | JSON.map(lambda v: json.dumps(v).encode()), min_size=0, max_size=4),
       st.sampled_from([".jsonl", ".json"]), st.booleans())
def test_generated_files_give_dialogues_or_a_data_error(lines, suffix, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(b"\n".join(lines))
        try:
            dialogues, report = read_dialogues(path, skip_invalid=skip)
        except DataError as e:
            assert str(e) and "\n" not in str(e)
            return
        assert report.num_kept == len(dialogues) == report.num_read - sum(report.skipped.values())
