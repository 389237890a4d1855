"""Dialogue files for SFT: the three formats convert exactly, and every bad record names its file, line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatforge.data.chat import LoadReport, format_report, read_dialogues
from chatforge.errors import DataError

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
     "unknown format: expected a 'messages', 'conversations' or 'instruction' field, got fields: id, text"),
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
    ('{"messages": [', "broken_json", "broken JSON line (Expecting value at column 15)"),
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
    expected = (f"no valid dialogues in {path}: skipped 3: 1 broken_json, 1 empty_dialogue, 1 no_assistant; "
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
    with raises_at(str(tmp_path / "d.csv"), "expected a .jsonl or .json file, or a folder of them"):
        read_dialogues(tmp_path / "d.csv")
    with raises_at(str(tmp_path), "no .jsonl or .json files in this folder"):
        read_dialogues(tmp_path)
