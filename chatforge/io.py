"""Atomic writes: a file or a directory either appears whole under its final name, or not at all."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path

from chatforge.errors import DataError


def atomic_write_text(path: Path, text: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one


def atomic_write_json(path: Path, obj):
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_bytes(path: Path, data: bytes):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fresh_dir(path: Path) -> Path:
    """An empty directory at `path`, removing whatever a killed run left there."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class BadLine(Exception):
    """A record that cannot be used: a short reason key (for skip counts) and the message after its location."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# A longer JSON line is refused before it is parsed: a dialogue or ranking of 4 MiB is a file that is not what
# it claims to be far more often than a real record, and parsing it would hold all of it (and more) in memory.
MAX_LINE_BYTES = 4 * 2**20


def open_binary(path: Path):
    """`path` opened for reading bytes (a .gz file decompressed); a path that cannot be opened is a DataError."""
    path = Path(path)
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def jsonl_records(path: Path, max_line_bytes: int = MAX_LINE_BYTES):
    """Yield (line number, object) for each non-blank line; a line that is not UTF-8, not JSON, nested too
    deeply or longer than `max_line_bytes` comes as a BadLine instead, so a reader that skips bad records
    can go on past it.

    Lines are decoded one at a time from bytes: decoding the file as a text stream would report a bad
    byte at the line where its 8 KB chunk began, not where the byte is.
    """
    path = Path(path)
    lineno = 0
    with open_binary(path) as f:
        try:
            for raw in _lines(f, max_line_bytes):
                lineno += 1
                item = _parse_line(raw, lineno, max_line_bytes)
                if item is not _BLANK:
                    yield lineno, item
        except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz file
            raise DataError(f"{path}:{lineno + 1}: cannot read ({e})") from None


_BLANK = object()


def _lines(f, limit: int):
    """The file's lines as bytes; a line longer than `limit` comes as None, and is read past, never kept whole."""
    while raw := f.readline(limit + 1):
        if len(raw) <= limit or raw.endswith(b"\n"):  # at most limit bytes and the newline
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):
            raw = f.readline(2**20)
        yield None


def _parse_line(raw: bytes | None, lineno: int, limit: int):
    """The JSON value of one line, _BLANK for a blank line, or a BadLine saying what is wrong with it."""
    if raw is None:
        return BadLine("line_too_long", f"line longer than {limit:,} bytes (refused without parsing: split "
                                        "the record, or check the file is JSON lines)")
    try:
        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # Windows editors add a BOM
    except UnicodeDecodeError as e:
        return BadLine("not_utf8", f"not UTF-8 text (byte {raw[e.start]:#x} at column {e.start + 1})")
    if not text.strip():
        return _BLANK
    try:
        return json.loads(text.rstrip("\r\n"))  # else a truncated line errs at "column 1" of the next
    except json.JSONDecodeError as e:
        return BadLine("broken_json", f"broken JSON line ({e.msg} at column {e.colno})")
    except RecursionError:
        return BadLine("too_deep", "JSON nested too deeply to parse")
    except ValueError as e:  # an integer of more than 4300 digits
        return BadLine("broken_json", f"broken JSON line ({str(e).split(':')[0]})")


def read_jsonl(path: Path):
    """Yield (line_number, object) for each non-blank line; a broken line is a DataError naming file and line."""
    for lineno, item in jsonl_records(path):
        if isinstance(item, BadLine):
            raise DataError(f"{path}:{lineno}: {item}")
        yield lineno, item


def read_json(path: Path, missing_ok: bool = True):
    """A JSON file's content; None if it is absent (and missing_ok). A file that cannot be read or parsed (torn by a
    kill, damaged, a folder) is a DataError naming it."""
    path = Path(path)
    if missing_ok and not path.exists():
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON file") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON's, or an integer too long
        raise DataError(f"{path}: not readable JSON ({str(e).splitlines()[0][:120]})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks: a stage's summary keeps its model files' digests, and loading checks them."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(stage_dir: Path) -> bool:
    """Whether a stage is complete (summary.json) with its model files as it wrote them: a damaged or replaced file
    is a DataError saying which, not a model that quietly loads wrong."""
    path = Path(stage_dir) / "summary.json"
    if not path.exists():
        return False
    summary = read_json(path)
    files = summary.get("files", {}) if isinstance(summary, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise DataError(f"{Path(stage_dir) / 'summary.json'}: field 'files': not the {{file name: sha256}} this stage "
                        f"wrote: delete {stage_dir} to make the stage again")
    for name, digest in files.items():
        path = Path(stage_dir) / name
        if Path(name).name != name or not path.is_file() or file_digest(path) != digest:
            raise DataError(f"{path}: not the file this stage wrote (its digest in summary.json differs, or it is "
                            f"missing): delete {stage_dir} to make the stage again")
    return True
