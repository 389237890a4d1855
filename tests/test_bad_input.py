"""The bad-input corpus: every reader of the user's input and of the run folder, fed what people and kills bring
(a folder where a file belongs, bytes that are not UTF-8, JSON nested too deep, a torn line, a 20 MB line, a
truncated weights file, a checkpoint or summary edited by hand, values that pass a type check and crash later),
through the real command line. Every case must end the same way: exit code 2, one line on stderr that starts
with the place (file and line, `--set ...`, `--stage ...`) and names the field, no traceback, and the run folder
byte for byte as it was, its recipe included.

The cases run on small run folders made once per session (the tiny recipe), each copied before a case damages it.
Each command runs in a process of its own, forked from one that imported the CLI once (tests/forkcli.py): the
import costs seconds, a fork milliseconds. The generated cases (hypothesis) feed the run folder's JSON readers,
the prompts and corpus readers, recipes and `--set` values in-process, where a hundred inputs cost a second.

`python tests/bad_input_counts.py` runs this file and prints the counts (cases, clean one-line errors, tracebacks,
run folders changed) as JSON.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import RECIPES, kill_at_first_checkpoint, top_level
from forkcli import ForkCLI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatforge.config import Recipe, load_recipe, shown, to_dict
from chatforge.data.corpus import read_documents
from chatforge.data.prompts import read_prompts
from chatforge.errors import UserError
from chatforge.io import verified
from chatforge.report import render
from chatforge.train.loop import Checkpointer, MetricsLog, read_metrics

pytestmark = pytest.mark.slow

COUNTS_FILE = os.environ.get("CHATFORGE_BAD_INPUT_COUNTS")  # tests/bad_input_counts.py reads the counts here
RESULTS: dict[str, list] = {"cases": [], "generated": []}
TEMPLATES: dict[str, Path] = {}  # the run folders of the session (`runs`), for the cases that copy from them

# ----------------------------------------------------------------------------- the run folders, made once


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_base, tiny_rm) -> dict[str, Path]:
    """The run folders the cases copy: what each kind of command needs to get as far as the bad input.

    base: world, tokenizer, base/          pre: world, tokenizer (pretraining not started)
    world: the world alone                 partial: pre, and base/ stopped at its first checkpoint
    rm: base/, sft/, rankings, reward/     sft: rm without reward/ (the reward stage not started)
    sample: sft without rankings/ (sampling not started)
    """
    root = tmp_path_factory.mktemp("templates")
    out = {"base": tiny_base, "rm": tiny_rm}
    for name, source, drop in (("pre", tiny_base, ("base",)), ("world", tiny_base, ("base", "tokenizer")),
                               ("sft", tiny_rm, ("reward", "eval")), ("sample", tiny_rm, ("rankings", "reward", "eval"))):
        shutil.copytree(source, root / name, ignore=top_level(source, *drop))
        out[name] = root / name
    shutil.copytree(out["pre"], root / "partial")
    kill_at_first_checkpoint(root / "partial" / "base", "pretrain", "--run", str(root / "partial"))
    out["partial"] = root / "partial"
    TEMPLATES.update(out)
    return out


@pytest.fixture(scope="session")
def forked(tmp_path_factory):
    server = ForkCLI(tmp_path_factory.mktemp("streams"))
    yield server
    server.close()


@pytest.fixture(scope="session", autouse=True)
def counts():
    """After the session: how the corpus ended, as JSON (tests/bad_input_counts.py prints it)."""
    yield
    cases = RESULTS["cases"]
    summary = {
        "cases": len(cases),
        "clean_one_line_error": sum(c["clean"] and not c.get("tolerated") for c in cases),
        "tolerated_as_designed": sum(c["clean"] and c.get("tolerated", False) for c in cases),
        "traceback": sum(c["traceback"] for c in cases),
        "other_failure": sum(not c["clean"] and not c["traceback"] for c in cases),
        "run_folder_changed": sum(c["changed"] for c in cases),
        "generated_examples": len(RESULTS["generated"]),
        "generated_refused_cleanly": sum(g == "refused" for g in RESULTS["generated"]),
        "generated_accepted": sum(g == "accepted" for g in RESULTS["generated"]),
        "failing_cases": [c["id"] for c in cases if not c["clean"] or c["changed"]],
    }
    if COUNTS_FILE:
        Path(COUNTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")


# ----------------------------------------------------------------------------- what a case is, and how it runs


@dataclass(frozen=True)
class Case:
    id: str
    template: str | None  # the run folder to copy (None: a run folder that does not exist yet)
    argv: Callable[[Path, Path], list]  # (run folder, inputs folder) -> the command line
    where: Callable[[Path, Path], str]  # what the message must start with: the place
    also: tuple[str, ...] = ()  # and what else it must say (the field, the reason)
    prepare: Callable[[Path, Path], None] = lambda run, inputs: None  # write the inputs, damage the run
    stdin: str = ""
    timeout: float = 120
    # A case that is not an error: what a kill leaves behind, which the command must read past (exit 0), changing
    # nothing but the files under `may_change` and saying `says` on stdout.
    expect: int = 2
    may_change: tuple[str, ...] = ()
    says: str = ""


def snapshot(run: Path) -> dict[str, str] | None:
    """sha256 of every file and the name of every folder under `run` (None: no such folder)."""
    if not run.exists():
        return None
    out = {}
    for p in sorted(run.rglob("*")):
        rel = str(p.relative_to(run))
        out[rel] = "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, runs: dict, forked: ForkCLI, tmp: Path):
    run, inputs = tmp / "run", tmp / "inputs"
    inputs.mkdir()
    if case.template:
        shutil.copytree(runs[case.template], run)  # copy2: times kept, so the token caches stay current
    case.prepare(run, inputs)
    before = snapshot(run)
    rc, out, err, timed_out = forked.run(case.argv(run, inputs), stdin=case.stdin, timeout=case.timeout)
    after = snapshot(run)
    lines = err.strip().splitlines()
    traceback = "Traceback (most recent call last)" in err
    changed = _changed(before, after, case.may_change)
    if case.expect == 0:
        tolerated = rc == 0 and not traceback and not timed_out and case.says in out and not changed
        RESULTS["cases"].append({"id": case.id, "clean": tolerated, "traceback": traceback, "changed": bool(changed),
                                 "tolerated": True})
        assert tolerated, f"exit {rc}, changed {changed[:10]}, stderr:\n{err[-3000:]}\nstdout:\n{out[-3000:]}"
        return
    clean = rc == 2 and len(lines) == 1 and not traceback and not timed_out
    RESULTS["cases"].append({"id": case.id, "clean": clean, "traceback": traceback, "changed": bool(changed)})
    command = case.argv(run, inputs)[0]
    assert not timed_out, f"still running after {case.timeout} s:\n{out[-2000:]}\n{err[-2000:]}"
    assert not traceback and rc == 2 and len(lines) == 1, f"exit {rc}, stderr:\n{err[-4000:]}\nstdout:\n{out[-1500:]}"
    prefix = f"chatforge {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    message = lines[0][len(prefix):]
    where = str(case.where(run, inputs))
    assert message.startswith(where), f"the message does not start with {where!r}:\n{message}"
    for word in case.also:
        assert word in message, f"{word!r} not in:\n{message}"
    assert not changed, f"the run folder changed: {changed[:10]} (before: {before is not None}, after: " \
                        f"{after is not None})"


def _changed(before: dict | None, after: dict | None, allowed: tuple[str, ...]) -> list[str]:
    """The paths that differ between two snapshots (a folder that appeared or went: "."), but those under `allowed`."""
    if (before is None) != (after is None):
        return ["."]
    before, after = before or {}, after or {}
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                  and not any(k == a or k.startswith(a + "/") for a in allowed))


# ----------------------------------------------------------------------------- writing inputs


def put(path: Path, content) -> Path:
    """Write `content` at `path`: bytes or text as they are; any other value as one JSON document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(content, (bytes, str)):
        content = json.dumps(content, ensure_ascii=False)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def lines(*records) -> bytes:
    """JSON lines: a record is dumped; str and bytes are written as the raw line."""
    raw = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode()
           for r in records]
    return b"\n".join(raw) + b"\n"


def truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def folder_instead(path: Path):
    """A folder where a file belongs."""
    if path.exists():
        path.unlink()
    path.mkdir(parents=True)
    (path / "inside.txt").write_text("a folder, not a file")


def parquet_bytes(records: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records), sink)
    return sink.getvalue().to_pybytes()


USER, ASSISTANT = {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}
DIALOGUE = {"messages": [USER, ASSISTANT]}
RANKING = {"prompt": "What is the capital of France?", "answers": ["Paris.", "Rome."], "order": [0, 1]}
PROMPT = {"prompt": "What is the capital of France?"}
DEEP = "[" * 100_000 + "]" * 100_000  # past any recursion limit
DEEP_RECORD = '{"messages": ' + DEEP + "}"
NOT_UTF8 = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
HUGE_LINE = json.dumps({"messages": [USER, {"role": "assistant", "content": "a" * (20 * 2**20)}]})


def rankings_of(n_users: int, **extra) -> bytes:
    return lines(*[{**RANKING, "user_id": f"u{i}", **extra} for i in range(n_users)])


# ----------------------------------------------------------------------------- the cases, reader by reader


def sft_case(id: str, name: str, content, where: str = "", also=(), extra=(), template="base") -> Case:
    """`chatforge sft --data inputs/NAME`: the dialogues reader (and SFT's checks of what it read)."""
    return Case(f"sft-data/{id}", template, lambda r, i: ["sft", "--run", r, "--data", i / name, *extra],
                lambda r, i: f"{i / name}{where}", tuple(also),
                lambda r, i: content(i / name) if callable(content) else put(i / name, content))


def prefs_case(id: str, name: str, content, where: str = "", also=(), extra=()) -> Case:
    """`chatforge reward --preferences inputs/NAME`: the rankings reader."""
    return Case(f"rankings/{id}", "sft", lambda r, i: ["reward", "--run", r, "--preferences", i / name, *extra],
                lambda r, i: f"{i / name}{where}", tuple(also),
                lambda r, i: content(i / name) if callable(content) else put(i / name, content))


def prompts_case(id: str, name: str, content, where: str = "", also=(), command="ppo", extra=()) -> Case:
    """`chatforge ppo|sample --prompts inputs/NAME`: the prompts reader."""
    template = "rm" if command == "ppo" else "sample"
    return Case(f"prompts/{command}-{id}", template,
                lambda r, i: [command, "--run", r, "--prompts", i / name, *extra],
                lambda r, i: f"{i / name}{where}", tuple(also),
                lambda r, i: content(i / name) if callable(content) else put(i / name, content))


def corpus_case(id: str, files: dict, where: Callable[[Path], str], also=(), command="pretrain") -> Case:
    """`chatforge pretrain|tokenizer --set pretrain.corpus=inputs/corpus`: the corpus reader."""
    def prepare(run, inputs):
        (inputs / "corpus").mkdir()
        for rel, content in files.items():
            content(inputs / "corpus" / rel) if callable(content) else put(inputs / "corpus" / rel, content)

    return Case(f"corpus/{command}-{id}", "pre" if command == "pretrain" else "world",
                lambda r, i: [command, "--run", r, "--set", f"pretrain.corpus={i / 'corpus'}"],
                lambda r, i: where(i / "corpus"), tuple(also), prepare)


def recipe_case(id: str, text, where: str = "", also=()) -> Case:
    """`chatforge world --recipe inputs/recipe.yaml` (the world is complete: only the recipe is read)."""
    return Case(f"recipe/{id}", "base", lambda r, i: ["world", "--run", r, "--recipe", i / "recipe.yaml"],
                lambda r, i: f"{i / 'recipe.yaml'}{where}", tuple(also),
                lambda r, i: text(i / "recipe.yaml") if callable(text) else put(i / "recipe.yaml", text))


def set_case(id: str, override: str, also=(), command="world", template="base", recipe=False) -> Case:
    """`chatforge COMMAND --set OVERRIDE` (with a valid --recipe too, when `recipe`): the error names the --set."""
    extra = ["--recipe", str(RECIPES / "tiny.yaml")] if recipe else []
    return Case(f"set/{id}", template, lambda r, i: [command, "--run", r, *extra, "--set", override],
                lambda r, i: f"--set {override}", tuple(also))


def damage_case(id: str, template: str, rel: str, damage, argv, where_rel: str | None = None, also=(),
                stdin="", timeout=120) -> Case:
    """Damage the file `rel` of the run (`damage(path)`), then run `argv(run)`; the message starts with the path
    `where_rel` (default: `rel`) in the run."""
    return Case(f"run-folder/{id}", template, lambda r, i: argv(r), lambda r, i: r / (where_rel or rel), tuple(also),
                lambda r, i: damage(r / rel), stdin=stdin, timeout=timeout)


def _gz(path: Path):
    data = gzip.compress(lines(*[DIALOGUE] * 200))
    put(path, data[: len(data) // 2])


def _datasets_garbage_state(path: Path):
    put(path / "state.json", b"\x00\xffnot json")
    put(path / "data-00000-of-00001.arrow", b"ARROW")


def _datasets_missing_shard(path: Path):
    put(path / "state.json", {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})


def _truncated_parquet(path: Path):
    data = parquet_bytes([DIALOGUE] * 50)
    put(path, data[: len(data) // 2])


def _one_long_dialogue(path: Path):
    """One dialogue (3 MB, under the line limit): SFT needs two, and must not tokenise 3 MB to find that out."""
    put(path, lines({"messages": [USER, {"role": "assistant", "content": "Paris. " * 450_000}]}))


SFT_CASES = [
    sft_case("missing", "none.jsonl", lambda p: None, also=("not found",)),
    sft_case("empty-folder", "dir", lambda p: p.mkdir(), also=("no .jsonl",)),
    sft_case("empty-file", "d.jsonl", b"", also=("empty",)),
    sft_case("torn-line", "d.jsonl", lines(DIALOGUE, '{"messages": [{"role": "user", "cont'), ":2",
             ("broken JSON",)),
    sft_case("not-utf8", "d.jsonl", lines(DIALOGUE, NOT_UTF8), ":2", ("UTF-8",)),
    sft_case("deep-json", "d.jsonl", lines(DEEP_RECORD, DIALOGUE), ":1", ("nested too deeply",)),
    sft_case("line-of-20MB", "d.jsonl", lines(HUGE_LINE, DIALOGUE), ":1", ("longer than",)),
    sft_case("not-an-object", "d.jsonl", lines([1, 2], DIALOGUE), ":1", ("JSON object",)),
    sft_case("unknown-role", "d.jsonl", lines({"messages": [{"role": "human", "content": "Hi"}, ASSISTANT]}), ":1",
             ("messages[0].role",)),
    sft_case("content-a-number", "d.jsonl", lines({"messages": [USER, {"role": "assistant", "content": 5}]}), ":1",
             ("messages[1].content",)),
    sft_case("lone-surrogate", "d.jsonl", lines('{"messages": [{"role": "user", "content": "\\ud800"}, '
                                                '{"role": "assistant", "content": "x"}]}'), ":1",
             ("messages[0].content",)),
    sft_case("integer-of-5000-digits", "d.jsonl", lines('{"messages": ' + "1" * 5000 + "}"), ":1"),
    sft_case("single-dialogue", "d.jsonl", lines(DIALOGUE), also=("one dialogue",)),
    sft_case("single-dialogue-of-3MB", "d.jsonl", _one_long_dialogue, also=("one dialogue",)),
    sft_case("no-answer-within-max-len", "d.jsonl",
             lines(*[{"messages": [{"role": "user", "content": "word " * 200}, ASSISTANT]}] * 3),
             also=("sft.max_len",)),
    sft_case("skip-invalid-all-invalid", "d.jsonl", lines({"messages": []}, [1]), also=(":1",),
             extra=("--skip-invalid",)),
    sft_case("broken-json-array", "d.json", b'[\n{"messages": [\n', ":3", ("broken JSON",)),
    sft_case("deep-json-array", "d.json", DEEP, also=("nested too deeply",)),
    sft_case("truncated-parquet", "d.parquet", _truncated_parquet, also=("Parquet",)),
    sft_case("garbage-arrow", "d.arrow", b"ARROW1 this is not arrow", also=("Arrow",)),
    sft_case("truncated-gz", "d.jsonl.gz", _gz),
    sft_case("datasets-garbage-state", "ds", _datasets_garbage_state, "/state.json"),
    sft_case("datasets-missing-shard", "ds", _datasets_missing_shard, also=("data-00000-of-00001.arrow",)),
    sft_case("csv-file", "d.csv", "a,b\n1,2\n", also=(".jsonl",)),
    sft_case("missing-split", "d.jsonl:test", lambda p: put(p.with_name("d.jsonl"), lines(DIALOGUE, DIALOGUE))),
    Case("sft-data/val-data-empty-folder", "base",
         lambda r, i: ["sft", "--run", r, "--data", i / "d.jsonl", "--set", f"sft.val_data={i / 'val'}"],
         lambda r, i: i / "val", (), lambda r, i: (put(i / "d.jsonl", lines(DIALOGUE, DIALOGUE)), (i / "val").mkdir())),
    Case("sft-data/world-dialogues-torn", "base", lambda r, i: ["sft", "--run", r],
         lambda r, i: r / "data" / "dialogues" / "train.jsonl", (),
         lambda r, i: put(r / "data" / "dialogues" / "train.jsonl", lines(DIALOGUE, '{"messages": ['))),
]

PREFS_CASES = [
    prefs_case("ties-only", "r.jsonl", rankings_of(4, order=[[0, 1]]), also=("tie",)),
    prefs_case("empty-file", "r.jsonl", b"", also=("empty",)),
    prefs_case("empty-folder", "dir", lambda p: p.mkdir()),
    prefs_case("torn-line", "r.jsonl", lines(RANKING, '{"prompt": "Q?", "answ'), ":2", ("broken JSON",)),
    prefs_case("not-utf8", "r.jsonl", lines(b'{"prompt": "caf\xe9", "answers": ["a", "b"], "order": [0, 1]}'), ":1",
               ("UTF-8",)),
    prefs_case("deep-json", "r.jsonl", lines('{"prompt": ' + DEEP + "}"), ":1", ("nested too deeply",)),
    prefs_case("line-of-20MB", "r.jsonl", lines({**RANKING, "answers": ["a" * (20 * 2**20), "b"]}), ":1",
               ("longer than",)),
    prefs_case("one-answer", "r.jsonl", lines({**RANKING, "answers": ["a"], "order": [0]}), ":1", ("answers",)),
    prefs_case("order-out-of-range", "r.jsonl", lines({**RANKING, "order": [0, 5]}), ":1", ("order",)),
    prefs_case("misspelt-field", "r.jsonl", lines({**RANKING, "ordr": [0, 1]}), ":1", ("ordr",)),
    prefs_case("score-nan", "r.jsonl", lines('{"prompt": "Q?", "answers": ["a", "b"], "scores": [NaN, 1]}'), ":1",
               ("scores[0]",)),
    prefs_case("one-user", "r.jsonl", lines(*[{**RANKING, "user_id": "u1"}] * 6), also=("users",)),
    prefs_case("empty-chosen", "r.jsonl", lines({"prompt": "Q?", "chosen": "", "rejected": "b"}), ":1", ("chosen",)),
    prefs_case("broken-json-array", "r.json", b'[{"prompt": "Q?",\n"answers": [', ":2"),
    prefs_case("skip-invalid-all-invalid", "r.jsonl", lines([1], {"prompt": ""}), also=(":1",),
               extra=("--skip-invalid",)),
    prefs_case("oasst-negative-rank", "r.jsonl", lines({
        "message_tree_id": "t", "prompt": {"message_id": "m", "role": "prompter", "text": "Q?", "replies": [
            {"role": "assistant", "text": "a", "rank": -1, "replies": []},
            {"role": "assistant", "text": "b", "rank": 0, "replies": []}]}}), ":1", ("rank",)),
]

PROMPTS_CASES = [
    prompts_case("empty-file", "p.jsonl", b"", also=("empty",)),
    prompts_case("torn-line", "p.jsonl", lines(PROMPT, '{"prompt": "Wh'), ":2", ("broken JSON",)),
    prompts_case("ends-with-assistant", "p.jsonl", lines({"messages": [USER, ASSISTANT]}), ":1",
                 ("messages[1].role",)),
    prompts_case("too-long", "p.jsonl", lines({"prompt": "word " * 300}), ":1", ("tokens",)),
    prompts_case("not-an-object", "p.jsonl", lines("[1]"), ":1", ("JSON object",)),
    prompts_case("deep-json", "p.jsonl", lines('{"prompt": ' + DEEP + "}"), ":1", ("nested too deeply",)),
    prompts_case("skip-invalid-all-invalid", "p.jsonl", lines({"prompt": ""}, "[1]"), extra=("--skip-invalid",)),
    prompts_case("empty-prompt", "p.jsonl", lines({"prompt": " "}), ":1", ("prompt",), command="sample"),
    prompts_case("empty-folder", "dir", lambda p: p.mkdir(), command="sample"),
    prompts_case("line-of-20MB", "p.jsonl", lines({"prompt": "a" * (20 * 2**20)}), ":1", ("longer than",),
                 command="sample"),
    prompts_case("not-utf8", "p.jsonl", lines(b'{"prompt": "caf\xe9?"}'), ":1", ("UTF-8",), command="sample"),
]

GOOD_SOURCE = lines(*[{"text": f"The capital of country {i} is city {i}. " * 4} for i in range(60)])
CORPUS_CASES = [
    Case("corpus/pretrain-missing-folder", "pre",
         lambda r, i: ["pretrain", "--run", r, "--set", f"pretrain.corpus={i / 'nothing'}"],
         lambda r, i: i / "nothing", ("not found",)),
    corpus_case("empty-folder", {}, lambda c: str(c), ("empty corpus",)),
    corpus_case("only-val-files", {"news/val.jsonl": GOOD_SOURCE}, lambda c: str(c / "news"), ("training files",)),
    corpus_case("txt-not-utf8", {"news/a.txt": b"caf\xe9 " * 100}, lambda c: str(c / "news" / "a.txt"), ("UTF-8",)),
    corpus_case("line-without-text", {"news/a.jsonl": lines({"text": "x"}, {"body": "y"})},
                lambda c: f"{c / 'news' / 'a.jsonl'}:2", ("text",)),
    corpus_case("text-not-a-string", {"news/a.jsonl": lines({"text": ["x"]})}, lambda c: f"{c / 'news' / 'a.jsonl'}:1",
                ("text",)),
    corpus_case("torn-line", {"news/a.jsonl": GOOD_SOURCE + b'{"text": "The cap'},
                lambda c: f"{c / 'news' / 'a.jsonl'}:61", ("broken JSON",)),
    corpus_case("deep-json", {"news/a.jsonl": lines('{"text": ' + DEEP + "}")}, lambda c: f"{c / 'news' / 'a.jsonl'}:1",
                ("nested too deeply",)),
    corpus_case("line-of-20MB", {"news/a.jsonl": lines({"text": "a" * (20 * 2**20)})},
                lambda c: f"{c / 'news' / 'a.jsonl'}:1", ("longer than",)),
    corpus_case("txt-is-a-folder", {"news/a.txt": folder_instead}, lambda c: str(c / "news" / "a.txt"), ("folder",)),
    corpus_case("jsonl-is-a-folder", {"news/a.jsonl": folder_instead}, lambda c: str(c / "news" / "a.jsonl"),
                ("folder",)),
    corpus_case("second-source-bad", {"a/a.jsonl": GOOD_SOURCE, "b/b.jsonl": lines({"text": 5})},
                lambda c: f"{c / 'b' / 'b.jsonl'}:1", ("text",)),
    corpus_case("source-shorter-than-a-sequence", {"news/a.jsonl": lines({"text": "tiny"})},
                lambda c: str(c / "news"), ("tokens",)),
    corpus_case("tokenizer-torn-line", {"news/a.jsonl": GOOD_SOURCE + b'{"text": "The cap'},
                lambda c: f"{c / 'news' / 'a.jsonl'}:61", ("broken JSON",), command="tokenizer"),
    Case("corpus/tokenizer-world-corpus-torn", "world", lambda r, i: ["tokenizer", "--run", r],
         lambda r, i: f"{r / 'data' / 'tokenizer_corpus.jsonl'}:2", ("broken JSON",),
         lambda r, i: put(r / "data" / "tokenizer_corpus.jsonl", lines({"text": "x"}, '{"te'))),
    Case("corpus/mixture-names-an-unknown-source", "pre",
         lambda r, i: ["pretrain", "--run", r, "--set", "pretrain.mixture={nosuch: 1.0}"],
         lambda r, i: "--set pretrain.mixture={nosuch: 1.0}", ("pretrain.mixture", "nosuch")),
]

RECIPE_CASES = [
    recipe_case("not-utf8", b"model:\n  d_model: 64\n  # caf\xe9\n", also=("UTF-8",)),
    recipe_case("a-folder", folder_instead, also=("folder",)),
    Case("recipe/missing", "base", lambda r, i: ["world", "--run", r, "--recipe", i / "none.yaml"],
         lambda r, i: i / "none.yaml", ("not found",)),
    recipe_case("key-given-twice", "model:\n  d_model: 64\n  d_model: 128\n", ":3", ("d_model",)),
    recipe_case("deep-yaml", "model: " + DEEP + "\n"),
    recipe_case("a-list", "- model\n- sft\n", also=("mapping",)),
    recipe_case("broken-yaml", "model:\n  d_model: [64\n", ":3"),
    recipe_case("unknown-key", "model:\n  d_modle: 64\n", ":2", ("model.d_modle",)),
    recipe_case("unknown-section", "world:\n  seed: 1\nmodle:\n  d_model: 64\n", ":3", ("modle",)),
    recipe_case("wrong-type", "model:\n  n_layers: two\n", ":2", ("model.n_layers",)),
    recipe_case("section-a-number", "model: 5\n", ":1", ("model",)),
    recipe_case("complex-key", "? [a, b]\n: 1\n", ":1"),
    recipe_case("integer-of-5000-digits", "model:\n  d_model: " + "1" * 5000 + "\n", ":2", ("digits",)),
    recipe_case("n-heads-0", "model:\n  n_heads: 0\n", ":2", ("model.n_heads",)),
    recipe_case("d-model-negative", "model:\n  d_model: -64\n", ":2", ("model.d_model",)),
    recipe_case("n-layers-0", "model:\n  n_layers: 0\n", ":2", ("model.n_layers",)),
    recipe_case("max-seq-len-0", "model:\n  max_seq_len: 0\n", ":2", ("model.max_seq_len",)),
    recipe_case("lr-nan", "pretrain:\n  optim:\n    lr: .nan\n", ":3", ("pretrain.optim.lr",)),
    recipe_case("mixture-nan", "pretrain:\n  mixture: {news: .nan}\n", ":2", ("pretrain.mixture.news",)),
    recipe_case("mixture-inf", "pretrain:\n  mixture: {news: .inf}\n", ":2", ("pretrain.mixture.news",)),
    recipe_case("epochs-inf", "reward:\n  epochs: .inf\n", ":2", ("reward.epochs",)),
    recipe_case("seq-len-past-the-context", "model:\n  max_seq_len: 64\npretrain:\n  seq_len: 128\n", ":4",
                ("pretrain.seq_len",)),
    Case("recipe/run-recipe-not-utf8", "base", lambda r, i: ["world", "--run", r], lambda r, i: r / "recipe.yaml",
         ("UTF-8",), lambda r, i: put(r / "recipe.yaml", (r / "recipe.yaml").read_bytes() + b"# caf\xe9\n")),
    Case("recipe/run-recipe-a-folder", "base", lambda r, i: ["world", "--run", r], lambda r, i: r / "recipe.yaml",
         ("folder",), lambda r, i: folder_instead(r / "recipe.yaml")),
    Case("recipe/run-recipe-unknown-key", "base", lambda r, i: ["sft", "--run", r], lambda r, i: r / "recipe.yaml",
         ("sft.stepz",), lambda r, i: put(r / "recipe.yaml", (r / "recipe.yaml").read_text().replace(
             "\nsft:\n", "\nsft:\n  stepz: 3\n"))),
    Case("recipe/run-is-a-file", None, lambda r, i: ["eval", "--run", i / "file", "--stage", "base"],
         lambda r, i: i / "file", (), lambda r, i: put(i / "file", "not a folder")),
]

SET_CASES = [
    set_case("n-heads-0", "model.n_heads=0", ("model.n_heads",)),
    set_case("d-model-negative", "model.d_model=-64", ("model.d_model",)),
    set_case("lr-nan", "pretrain.optim.lr=nan", ("pretrain.optim.lr",)),
    set_case("mixture-inf", "pretrain.mixture.news=inf", ("pretrain.mixture.news",)),
    set_case("mixture-nan", "pretrain.mixture.news=nan", ("pretrain.mixture.news",)),
    set_case("n-layers-0", "model.n_layers=0", ("model.n_layers",)),
    set_case("max-seq-len-0", "model.max_seq_len=0", ("model.max_seq_len",)),
    set_case("no-equals-sign", "model.d_model", ("section.key=value",)),
    set_case("below-a-value", "model.d_model.x=1", ("model.d_model is a value",)),
    set_case("unknown-section", "nosuch.key=1", ("nosuch",)),
    set_case("section-a-number", "model=5", ("model",)),
    set_case("empty-value", "model.d_model=", ("model.d_model",)),
    set_case("named-not-the-recipe", "model.n_heads=0", ("model.n_heads",), recipe=True),
    set_case("ppo-kl-inf", "ppo.kl_coef=inf", ("ppo.kl_coef",)),
    set_case("value-lr-inf", "ppo.value_lr=1e400", ("ppo.value_lr",)),
    set_case("epochs-inf", "reward.epochs=inf", ("reward.epochs",)),
    set_case("rope-theta-inf", "model.rope_theta=inf", ("model.rope_theta",)),
    set_case("sample-temperature-inf", "sample.temperature=inf", ("sample.temperature",)),
    *([] if torch.cuda.is_available() else [set_case("device-cuda-without-a-gpu", "compute.device=cuda",
                                                     ("compute.device",))]),
    set_case("seq-len-past-the-context", "pretrain.seq_len=128", ("pretrain.seq_len",), command="pretrain",
             template="pre"),
    set_case("sft-max-len-past-the-context", "sft.max_len=1000", ("sft.max_len",), command="sft"),
    set_case("replay-len-past-the-context", "sft.replay_len=1000", ("sft.replay_len",), command="sft"),
    set_case("reward-max-len-past-the-context", "reward.max_len=1000", ("reward.max_len",), command="reward",
             template="sft"),
    set_case("ptx-len-past-the-context", "ppo.ptx_len=1000", ("ppo.ptx_len",), command="ppo", template="rm"),
]


def _run(*args):
    return lambda r: [*args[:1], "--run", r, *args[1:]]


def _chat(stage: str, *flags):
    return lambda r: ["chat", r / stage, *flags]


def _serve(stage: str):
    return lambda r: ["serve", r / stage, "--port", "0"]


def _empty(path: Path):
    path.write_bytes(b"")


def _garbage(path: Path):
    path.write_bytes(b"\x00\xff garbage \x80" * 10)


def _torn(path: Path):
    truncate(path, 0.5)


def _json(value):
    return lambda path: put(path, value)


def _without(*names):
    """Remove these top-level folders of the run, then damage nothing else."""
    def prepare(path: Path):
        for name in names:
            shutil.rmtree(path.parent / name, ignore_errors=True)
    return prepare


def _own_model(dst: Path, damage):
    """A model folder of the user's own (the run's SFT model without its summary.json: no digest to check its
    weights against), damaged."""
    shutil.copytree(TEMPLATES["rm"] / "sft", dst, ignore=shutil.ignore_patterns("summary.json", "metrics.jsonl"))
    damage(dst)


def _append(line: bytes):
    return lambda path: path.write_bytes((path.read_bytes() if path.exists() else b"") + line)  # a kill in its first line


def _unranked(line: bytes):
    """Append `line` to the run's samples.jsonl and take its rankings away, so that `chatforge rank` reads it."""
    def damage(path: Path):
        _append(line)(path)
        (path.parent / "rankings.jsonl").unlink()
    return damage


CKPT = "base/checkpoints/step-0000010"

RUN_FOLDER_CASES = [
    # the weights, config and tokenizer of a stage, read by each command that loads them
    damage_case("base-weights-truncated-eval", "rm", "base/model.safetensors", _torn, _run("eval", "--stage", "base")),
    damage_case("base-weights-empty-chat", "rm", "base/model.safetensors", _empty, _chat("base")),
    damage_case("sft-weights-truncated-serve", "rm", "sft/model.safetensors", _torn, _serve("sft"), timeout=60),
    damage_case("sft-weights-truncated-run", "rm", "sft/model.safetensors", _torn, _run("run")),
    damage_case("sft-weights-a-folder-reward", "sft", "sft/model.safetensors", folder_instead, _run("reward")),
    damage_case("base-config-a-list-eval", "rm", "base/config.json", _json([1, 2]), _run("eval", "--stage", "base")),
    damage_case("base-config-wrong-shape-chat", "rm", "base/config.json",
                _json({"model_type": "llama", "hidden_size": 96, "num_attention_heads": 4}), _chat("base"),
                where_rel="base"),
    damage_case("sft-config-garbage-serve", "rm", "sft/config.json", _garbage, _serve("sft"), timeout=60),
    damage_case("sft-config-garbage-reward", "sft", "sft/config.json", _garbage, _run("reward")),
    damage_case("sft-config-garbage-ppo", "rm", "sft/config.json", _garbage, _run("ppo")),
    damage_case("base-tokenizer-garbage-chat", "rm", "base/tokenizer.json", _garbage, _chat("base")),
    damage_case("sft-tokenizer-garbage-reward", "sft", "sft/tokenizer.json", _garbage, _run("reward")),
    damage_case("run-tokenizer-garbage-pretrain", "pre", "tokenizer/tokenizer.json", _garbage, _run("pretrain")),
    damage_case("sft-tokenizer-config-garbage-chat", "rm", "sft/tokenizer_config.json", _garbage, _chat("sft"),
                where_rel="sft"),
    damage_case("sft-summary-torn-run", "rm", "sft/summary.json", _torn, _run("run")),
    damage_case("sft-summary-a-list-run", "rm", "sft/summary.json", _json([1]), _run("run")),
    damage_case("sft-summary-files-a-list-eval", "rm", "sft/summary.json", _json({"files": ["model.safetensors"]}),
                _run("eval", "--stage", "sft")),
    damage_case("sft-summary-a-folder-sample", "sample", "sft/summary.json", folder_instead, _run("sample")),
    # what the evaluation and the report read back
    damage_case("eval-json-torn-report", "rm", "eval/sft.json", _json('{"stage": "sft", "qa": {'), _run("report")),
    damage_case("eval-json-a-list-report", "rm", "eval/sft.json", _json([]), _run("report")),
    damage_case("eval-json-wrong-shape-report", "rm", "eval/sft.json", _json({"stage": "sft", "qa": 5}),
                _run("report")),
    damage_case("eval-json-empty-object-card", "rm", "eval/sft.json", _json({}), _run("report", "--card")),
    damage_case("reward-eval-wrong-shape-report", "rm", "eval/reward.json", _json({"pairwise_accuracy": 5}),
                _run("report")),
    damage_case("metrics-a-folder-report", "rm", "sft/metrics.jsonl", folder_instead, _run("report")),
    damage_case("samples-torn-rank", "rm", "rankings/samples.jsonl", _unranked(b'{"prompt_id": "x", "messa'),
                _run("rank"), also=("broken JSON",)),
    damage_case("samples-record-wrong-shape-rank", "rm", "rankings/samples.jsonl", _unranked(b'{"answers": 5}\n'),
                _run("rank"), also=("answers",)),
    damage_case("samples-record-without-gold-rank", "rm", "rankings/samples.jsonl",
                _unranked(json.dumps({"prompt_id": "x", "user_id": "u", "messages": [USER], "answers": ["a", "b"],
                                      "finished": [True, True]}).encode() + b"\n"), _run("rank"), also=("gold",)),
    damage_case("world-prompts-torn-ppo", "rm", "data/prompts/ppo.jsonl", _append(b'{"prompt": "x'), _run("ppo")),
    damage_case("world-eval-set-torn-eval", "rm", "data/eval/qa.jsonl", _append(b'{"id": "x'),
                _run("eval", "--stage", "base")),
    damage_case("world-facts-torn-rank", "rm", "data/facts.jsonl", lambda p: (
        _append(b'{"entity": "x')(p), (p.parents[1] / "rankings" / "rankings.jsonl").unlink()), _run("rank"),
                also=("JSON",)),
    Case("run-folder/eval-ppo-with-sft-eval-torn", "rm", lambda r, i: ["eval", "--run", r, "--stage", "ppo"],
         lambda r, i: r / "eval" / "sft.json", ("JSON",),
         lambda r, i: (shutil.copytree(r / "sft", r / "ppo"), put(r / "eval" / "sft.json", '{"stage": "sft", "qa'))),
    # a checkpoint damaged, read when the stage resumes
    damage_case("checkpoint-state-torn", "partial", f"{CKPT}/state.json", _torn, _run("pretrain"), CKPT),
    damage_case("checkpoint-state-empty-object", "partial", f"{CKPT}/state.json", _json({}), _run("pretrain"), CKPT),
    damage_case("checkpoint-state-step-a-string", "partial", f"{CKPT}/state.json", _json({"step": "x"}),
                _run("pretrain"), CKPT),
    damage_case("checkpoint-state-without-tokens", "partial", f"{CKPT}/state.json", _json({"step": 10}),
                _run("pretrain"), CKPT, ("tokens",)),
    damage_case("checkpoint-state-a-list", "partial", f"{CKPT}/state.json", _json([10]), _run("pretrain"), CKPT),
    damage_case("checkpoint-state-a-folder", "partial", f"{CKPT}/state.json", folder_instead, _run("pretrain"), CKPT),
    damage_case("checkpoint-weights-truncated", "partial", f"{CKPT}/model.safetensors", _torn, _run("pretrain"), CKPT),
    damage_case("checkpoint-weights-empty", "partial", f"{CKPT}/model.safetensors", _empty, _run("pretrain"), CKPT),
    damage_case("checkpoint-optimizer-garbage", "partial", f"{CKPT}/optimizer.safetensors", _garbage,
                _run("pretrain"), CKPT),
    damage_case("checkpoint-optimizer-json-a-list", "partial", f"{CKPT}/optimizer.json", _json([]), _run("pretrain"),
                CKPT),
    damage_case("checkpoint-optimizer-json-wrong-shape", "partial", f"{CKPT}/optimizer.json",
                _json({"adamw": {"__dict__": "x"}}), _run("pretrain"), CKPT),
    damage_case("checkpoint-latest-names-nothing", "partial", "base/checkpoints/LATEST", _json("step-0000099\n"),
                _run("pretrain"), "base/checkpoints/LATEST"),
    damage_case("checkpoint-latest-not-utf8", "partial", "base/checkpoints/LATEST", _garbage, _run("pretrain")),
    damage_case("checkpoint-latest-a-folder", "partial", "base/checkpoints/LATEST", folder_instead, _run("pretrain")),
    damage_case("checkpoint-latest-climbs-out", "partial", "base/checkpoints/LATEST", _json("../../tokenizer\n"),
                _run("pretrain")),
    # the command line's own places
    Case("run-folder/eval-stage-absolute", "rm", lambda r, i: ["eval", "--run", r, "--stage", r / "sft"],
         lambda r, i: f"--stage {str(r / 'sft')!r}"),
    Case("run-folder/eval-stage-parent", "rm", lambda r, i: ["eval", "--run", r, "--stage", ".."],
         lambda r, i: "--stage '..'"),
    Case("run-folder/eval-stage-empty", "rm", lambda r, i: ["eval", "--run", r, "--stage", ""],
         lambda r, i: "--stage ''"),
    Case("run-folder/eval-stage-unknown", "rm", lambda r, i: ["eval", "--run", r, "--stage", "nosuch"],
         lambda r, i: "--stage 'nosuch'"),
    Case("run-folder/chat-a-file", None, lambda r, i: ["chat", i / "model.txt"], lambda r, i: i / "model.txt", (),
         lambda r, i: put(i / "model.txt", "x")),
    Case("run-folder/chat-an-empty-folder", None, lambda r, i: ["chat", i], lambda r, i: i, ("config.json",)),
    Case("run-folder/own-model-weights-truncated-sft", None,
         lambda r, i: ["sft", "--run", r, "--base-model", i / "model", "--data", i / "d.jsonl", "--set", "sft.max_len=64"],
         lambda r, i: i / "model", ("cannot be loaded",),
         lambda r, i: (_own_model(i / "model", lambda m: truncate(m / "model.safetensors")),
                       put(i / "d.jsonl", lines(DIALOGUE, DIALOGUE)))),
    Case("run-folder/own-model-config-garbage-sft", None,
         lambda r, i: ["sft", "--run", r, "--base-model", i / "model", "--data", i / "d.jsonl", "--set", "sft.max_len=64"],
         lambda r, i: i / "model" / "config.json", (),
         lambda r, i: (_own_model(i / "model", lambda m: _garbage(m / "config.json")),
                       put(i / "d.jsonl", lines(DIALOGUE, DIALOGUE)))),
    Case("run-folder/own-model-weights-empty-chat", None, lambda r, i: ["chat", i / "model"],
         lambda r, i: i / "model", ("cannot be loaded",),
         lambda r, i: _own_model(i / "model", lambda m: _empty(m / "model.safetensors"))),
]

def chat_flag_case(id: str, *flags) -> Case:
    return Case(f"chat/{id}", "rm", lambda r, i: ["chat", r / "sft", *flags], lambda r, i: f"argument {flags[0]}",
                stdin="Hello\n")


CHAT_CASES = [
    chat_flag_case("temperature-negative", "--temperature", "-5"),
    chat_flag_case("temperature-nan", "--temperature", "nan"),
    chat_flag_case("top-p-7", "--top-p", "7"),
    chat_flag_case("top-p-0", "--top-p", "0"),
    chat_flag_case("max-tokens-0", "--max-tokens", "0"),
    chat_flag_case("temperature-a-word", "--temperature", "warm"),
    damage_case("chat-template-broken", "rm", "sft/chat_template.jinja", _json("{% for m in messages %}{{ m"),
                _chat("sft"), where_rel="sft", stdin="Hello\n"),
]

# What a kill leaves behind is not bad input: the command reads past it, as it was made to.
TORN_SAMPLE = b'{"step": 11, "samples": {"\xe4\xb8\xad\xe5'  # a kill in the middle of a Chinese character
TOLERATED_CASES = [
    Case("tolerated/metrics-line-of-another-shape-report", "rm", lambda r, i: ["report", "--run", r],
         lambda r, i: "", prepare=lambda r, i: _append(b'{"foo": 1}\n[2]\n{"step": "x", "loss": 1}\n')(
             r / "base" / "metrics.jsonl"), expect=0, may_change=("report.html",), says="report:"),
    Case("tolerated/torn-lines-on-resume", "partial", lambda r, i: ["pretrain", "--run", r, "--set", "pretrain.steps=12"],
         lambda r, i: "", prepare=lambda r, i: (_append(TORN_SAMPLE)(r / "base" / "samples.jsonl"),
                                                _append(b'{"step": 11, "lo')(r / "base" / "metrics.jsonl")),
         expect=0, may_change=("base", "recipe.yaml"), says="resuming from step 10"),
]

CASES = SFT_CASES + PREFS_CASES + PROMPTS_CASES + CORPUS_CASES + RECIPE_CASES + SET_CASES + RUN_FOLDER_CASES + CHAT_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_its_place_and_changes_nothing(case, runs, forked, tmp_path):
    run_case(case, runs, forked, tmp_path)


@pytest.mark.parametrize("case", TOLERATED_CASES, ids=[c.id for c in TOLERATED_CASES])
def test_what_a_kill_leaves_behind_is_read_past(case, runs, forked, tmp_path):
    run_case(case, runs, forked, tmp_path)


def test_the_fork_server_runs_a_command_as_python_m_does(runs, forked, tmp_path):
    """The same bad command, through `python -m chatforge.cli` and through the fork server: the same exit code and
    the same stderr."""
    from conftest import cli

    put(tmp_path / "d.jsonl", lines(DIALOGUE, '{"mess'))
    run = tmp_path / "run"
    shutil.copytree(runs["base"], run)
    argv = ["sft", "--run", str(run), "--data", str(tmp_path / "d.jsonl")]
    direct = cli(*argv, check=False)
    rc, _, err, _ = forked.run(argv)
    assert (direct.returncode, direct.stderr) == (rc, err) and rc == 2, (direct.stderr, err)


# ----------------------------------------------------------------------------- generated input, in-process


def _record(kind: str):
    """JSON values and near-misses of a valid record: any JSON, or the valid one with a field dropped or replaced."""
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    any_json = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                                   inner, max_size=3),
                            max_leaves=8)
    valid = {"step": {"step": 10, "tokens": 0, "seconds": 0.0}, "summary": {"stage": "x", "files": {}},
             "metrics": {"step": 1, "loss": 1.0}, "prompt": PROMPT, "corpus": {"text": "x"}}[kind]
    mutated = st.builds(lambda key, value, drop: {k: v for k, v in {**valid, key: value}.items() if k != drop},
                        st.sampled_from(sorted(valid)) | st.text(max_size=4), any_json,
                        st.sampled_from(sorted(valid)) | st.none())
    return any_json | mutated


def _judged(outcome: str):
    RESULTS["generated"].append(outcome)


def _one_line_at(error: Exception, place: str):
    assert isinstance(error, UserError) and "\n" not in str(error) and str(error).startswith(place), repr(error)
    _judged("refused")


GENERATED = settings(max_examples=100, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@GENERATED
@given(st.lists(_record("prompt"), min_size=1, max_size=3), st.booleans())
def test_generated_prompt_files_give_prompts_or_one_line_naming_the_line(records, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = put(Path(tmp) / "p.jsonl", lines(*[json.dumps(r) for r in records]))
        try:
            prompts, _ = read_prompts(path, skip_invalid=skip)
        except UserError as e:
            return _one_line_at(e, str(path))
        assert prompts and all(p["messages"][-1]["role"] == "user" for p in prompts)
        _judged("accepted")


@GENERATED
@given(st.lists(_record("corpus"), min_size=1, max_size=3))
def test_generated_corpus_files_give_documents_or_one_line_naming_the_line(records):
    with tempfile.TemporaryDirectory() as tmp:
        path = put(Path(tmp) / "a.jsonl", lines(*[json.dumps(r) for r in records]))
        try:
            docs = read_documents(path)
        except UserError as e:
            return _one_line_at(e, f"{path}:")
        assert all(isinstance(d, str) and d.strip() for d in docs)
        _judged("accepted")


@GENERATED
@given(_record("summary"))
def test_generated_summaries_are_a_complete_stage_or_one_line_naming_the_file(summary):
    with tempfile.TemporaryDirectory() as tmp:
        put(Path(tmp) / "summary.json", summary)
        try:
            assert verified(Path(tmp)) is True
        except UserError as e:
            return _one_line_at(e, tmp)
        _judged("accepted")


@GENERATED
@given(_record("step"), _record("step"))
def test_generated_checkpoint_state_resumes_or_is_one_line_naming_the_checkpoint(state, skeleton):
    with tempfile.TemporaryDirectory() as tmp:
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(model.parameters())
        ckpt = Checkpointer(Path(tmp))
        ckpt.save(3, model, {"adamw": optimizer}, {"step": 3})
        path = ckpt.latest()
        put(path / "state.json", state)
        if not isinstance(skeleton, dict) or "step" not in skeleton:  # one in two: the optimizer's skeleton too
            put(path / "optimizer.json", skeleton)
        try:
            resumed = ckpt.load(model, {"adamw": optimizer})
        except UserError as e:
            return _one_line_at(e, str(path))
        assert isinstance(resumed["step"], int) and resumed["step"] >= 0
        _judged("accepted")


@GENERATED
@given(st.lists(_record("metrics") | st.binary(max_size=12), min_size=1, max_size=4), st.integers(0, 3))
def test_generated_metrics_lines_are_read_or_left_out_never_a_crash(records, resume_step):
    """A torn or damaged metrics.jsonl is what a kill leaves: the records that make sense are kept, the rest dropped,
    on resume (MetricsLog) and in the report (read_metrics)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = put(Path(tmp) / "metrics.jsonl", lines(*[r if isinstance(r, bytes) else json.dumps(r) for r in records]))
        kept = read_metrics(path)
        assert all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in kept)
        MetricsLog(path, resume_step=resume_step)
        assert all(r["step"] <= resume_step for r in read_metrics(path))
        _judged("accepted")


@GENERATED
@given(_record("metrics"), st.sampled_from(["sft", "reward", "base"]))
def test_generated_eval_results_render_or_are_one_line_naming_the_file(result, stage):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        put(run / "recipe.yaml", "model: {}\n")
        put(run / "eval" / f"{stage}.json", result)
        try:
            render(run)
        except UserError as e:
            return _one_line_at(e, str(run / "eval" / f"{stage}.json"))
        _judged("accepted")


def _fields(cls=Recipe, prefix="") -> list[str]:
    """Every dotted field of the recipe."""
    out = []
    for key, value in to_dict(cls()).items():
        out += [f"{prefix}{key}.{k}" for k in _leaves(value)] if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


def _leaves(d: dict, prefix="") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v and not k.endswith("mixture") else [f"{prefix}{k}"]
    return out


VALUES = st.sampled_from(["0", "-1", "nan", ".nan", "inf", "-inf", ".inf", "1e400", "", "[", "{}", "[1, 2]", "true",
                          "null", "~", "'x'", "1" * 5000, "0x10", "2**10", "a: b", "- 1", "!!binary aGk=", "&a [*a]",
                          "\ud800", "\x00", "1_000", "3.5", "64", "yes"]) | st.text(max_size=10)


@GENERATED
@given(st.sampled_from(_fields()) | st.text(max_size=12), VALUES)
def test_generated_set_values_give_a_recipe_or_one_line_naming_the_set(key, value):
    text = f"{key}={value}"
    try:
        recipe = load_recipe(None, [text])
    except UserError as e:
        return _one_line_at(e, f"--set {shown(text)}")  # a newline in the value is shown escaped: one line
    assert isinstance(recipe, Recipe)
    _judged("accepted")


@GENERATED
@given(st.sampled_from(_fields()), VALUES)
def test_generated_recipe_files_give_a_recipe_or_one_line_naming_the_file(key, value):
    *sections, leaf = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections)) + f"{'  ' * len(sections)}{leaf}: {value}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            recipe = load_recipe(path)
        except UserError as e:
            return _one_line_at(e, str(path))
        assert isinstance(recipe, Recipe)
        _judged("accepted")


def test_the_corpus_is_large_and_its_names_unique():
    every = CASES + TOLERATED_CASES
    assert len(CASES) >= 100 and len({c.id for c in every}) == len(every)
