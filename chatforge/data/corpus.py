"""The pretraining corpus: a folder of sources, each a folder of .jsonl (one {"text": ...} per line) or .txt files.

    corpus/
      encyclopedia/train-00000.jsonl  val.jsonl
      news/...
Files whose name starts with "val" are the source's held-out set. A source without one gives
every 50th document to held-out instead, so every source always has a held-out loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatforge.errors import DataError
from chatforge.io import open_binary, read_jsonl

HOLDOUT_EVERY = 50  # a source with no val file holds out one document in this many


@dataclass
class Source:
    name: str
    train_files: list[Path] = field(default_factory=list)
    val_files: list[Path] = field(default_factory=list)


def corpus_dir(run_dir: Path, own: str) -> Path:
    """The user's corpus folder `own`, else the run's (the built-in world's) data/corpus."""
    return Path(own) if own else Path(run_dir) / "data" / "corpus"


def token_cache(run_dir: Path) -> Path:
    """Where the tokenised corpus streams of a run are cached."""
    return Path(run_dir) / "data" / "tokens"


def discover_sources(corpus_dir: Path) -> dict[str, Source]:
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise DataError(f"{corpus_dir}: corpus folder not found (expected one subfolder per source)")
    sources = {}
    for sub in sorted(p for p in corpus_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.suffix in (".jsonl", ".txt") and not p.name.startswith("."))
        if not files:
            continue
        src = Source(sub.name)
        for f in files:
            (src.val_files if f.name.startswith("val") else src.train_files).append(f)
        if not src.train_files:
            raise DataError(f"{sub}: source {sub.name!r} has held-out files but no training files")
        sources[sub.name] = src
    if not sources:
        raise DataError(f"{corpus_dir}: empty corpus (no <source>/ folder with .jsonl or .txt files)")
    return sources


def read_documents(path: Path) -> list[str]:
    """Every document of one file; a bad line is a DataError naming the file, the line and the field."""
    path = Path(path)
    if path.suffix == ".txt":
        with open_binary(path) as f:  # a folder, a file that cannot be read: a DataError naming it
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#x} at offset {e.start})") from None
        return [text] if text.strip() else []
    docs = []
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a 'text' field, got {type(obj).__name__}")
        if "text" not in obj:
            raise DataError(f"{path}:{lineno}: field 'text' is missing")
        if not isinstance(obj["text"], str):
            raise DataError(f"{path}:{lineno}: field 'text' must be a string, got {type(obj['text']).__name__}")
        if obj["text"].strip():
            docs.append(obj["text"])
    return docs


def source_documents(src: Source) -> tuple[list[str], list[str]]:
    """(train, held-out) documents of one source."""
    train = [d for f in src.train_files for d in read_documents(f)]
    if src.val_files:
        val = [d for f in src.val_files for d in read_documents(f)]
    else:
        val = train[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]
        train = [d for i, d in enumerate(train) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    if not train:
        raise DataError(f"{src.train_files[0].parent}: source {src.name!r} has no non-empty documents")
    if not val:  # a tiny source: evaluate on its last training document rather than on nothing
        val = train[-1:]
    return train, val
