"""Where records come from: the files and folders that both data readers (dialogues and rankings) accept.

  .jsonl, .jsonl.gz   one JSON value per line                                  location FILE:LINE
  .json               a JSON array of records (or one indented record), or     FILE[record N] (from 1)
                      JSON lines                                               FILE:LINE
  .parquet            one record per row                                       FILE[row N] (from 0, as pandas counts)
  .arrow              Arrow IPC, stream or file format, one record per row      FILE[row N]
  datasets folder     what `datasets.save_to_disk` writes: state.json and       SHARD[row N]
                      data-*.arrow shards (dataset_info.json is not needed)
  DatasetDict folder  dataset_dict.json and one datasets folder per split: the `train` split (or the only
                      one), or the split named as PATH:SPLIT
  any other folder    its data files of the kinds above, in name order (names starting with "." skipped)

`records(path)` yields (location, record) pairs. A record that cannot be parsed (a broken JSON line, bytes
that are not UTF-8) comes as a BadLine, so a reader that skips bad records goes on past it; what cannot be
read at all (a missing path, a truncated Parquet file, a broken JSON array, an empty file) is a DataError.
Table rows come back as the dicts and lists JSON would give: structs as dicts, a null cell (a column the
record did not have) left out, so a row reads exactly like the JSON record it was made from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from chatforge.errors import DataError
from chatforge.io import jsonl_records, open_binary

KINDS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
ACCEPTED = ".jsonl, .json, .parquet or .arrow"
STATE = "state.json"  # marks a folder written by datasets' save_to_disk
SPLITS = "dataset_dict.json"  # marks a DatasetDict folder: one such folder per split
INFO = "dataset_info.json"  # the features, beside state.json: not needed to read the rows
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class Source:
    """One thing to read records from: a file, or a datasets folder and its shards."""

    path: Path  # what "empty" errors name
    kind: str  # jsonl | json | parquet | arrow | datasets
    shards: tuple[Path, ...] = ()  # a datasets folder's Arrow files, in order


def records(path) -> Iterator[tuple[str, object]]:
    """(location, record or BadLine) for every record under `path`, in order."""
    for source in sources(path):
        yield from source_records(source)


def sources(path) -> list[Source]:
    """What `path` names, resolved: a file, a datasets folder (a DatasetDict's split), or a folder's data files."""
    path, split = _split_suffix(Path(path))
    if split is not None or (path / SPLITS).is_file():
        return [_datasets(_split_folder(path, split))]
    if (path / STATE).is_file():
        return [_datasets(path)]
    if path.is_dir():
        return _folder(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.name in (STATE, SPLITS, INFO) and ((path.parent / STATE).is_file() or (path.parent / SPLITS).is_file()):
        raise DataError(f"{path}: datasets metadata, not data: give its folder, {path.parent}")
    kind = _kind(path)
    if kind is None:
        raise DataError(f"{path}: expected a {ACCEPTED} file, a datasets folder, or a folder of such files")
    return [Source(path, kind)]


def source_records(source: Source) -> Iterator[tuple[str, object]]:
    """(location, record or BadLine) for each record of one source; a source without any is a DataError."""
    if source.kind != "datasets" and source.path.is_file() and source.path.stat().st_size == 0:
        raise DataError(f"{source.path}: empty file (no records)")
    read = {"jsonl": _jsonl, "json": _json, "parquet": _parquet, "arrow": _arrow, "datasets": _dataset_rows}
    count = 0
    for item in read[source.kind](source):
        count += 1
        yield item
    if not count:  # almost always a failed export, not a wish to train on nothing
        what = "empty dataset (no rows)" if source.kind == "datasets" else "empty file (no records)"
        raise DataError(f"{source.path}: {what}")


# ---- resolving a path ----


def _kind(path: Path) -> str | None:
    return "jsonl" if path.name.endswith(".jsonl.gz") else KINDS.get(path.suffix)


def _split_suffix(path: Path) -> tuple[Path, str | None]:
    """PATH:SPLIT -> (PATH, SPLIT) when PATH:SPLIT is not itself an existing path."""
    if path.exists() or ":" not in path.name:
        return path, None
    base, split = str(path).rsplit(":", 1)
    if not Path(base).exists():
        raise DataError(f"{path}: file not found")
    return Path(base), split


def _split_folder(path: Path, split: str | None) -> Path:
    """The folder of the split to read in a DatasetDict folder."""
    if not (path / SPLITS).is_file():
        raise DataError(f"{path}:{split}: ':{split}' names a split, but {path} is not a DatasetDict folder "
                        f"(no {SPLITS})")
    splits = _metadata(path / SPLITS).get("splits")
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{path / SPLITS}: field 'splits': must be a non-empty list of split names")
    if split is None:
        if DEFAULT_SPLIT not in splits and len(splits) > 1:
            raise DataError(f"{path}: a DatasetDict without a '{DEFAULT_SPLIT}' split: name one as "
                            f"{path}:SPLIT (its splits: {', '.join(splits)})")
        split = DEFAULT_SPLIT if DEFAULT_SPLIT in splits else splits[0]
    if split not in splits:
        raise DataError(f"{path}: no split {split!r} (its splits: {', '.join(splits)})")
    return path / split


def _datasets(folder: Path) -> Source:
    """A save_to_disk folder: its shards as state.json lists them."""
    if not (folder / STATE).is_file():
        raise DataError(f"{folder}: not a datasets folder (no {STATE})")
    state = _metadata(folder / STATE)
    if state.get("_indices_data_files"):  # rows are a selection of the shards': reading them raw would be wrong
        raise DataError(f"{folder}: saved with an indices mapping (an old datasets version): save it again with "
                        "a recent version of datasets, or export it to .parquet or .jsonl")
    files = state.get("_data_files")
    if not isinstance(files, list) or not files:
        raise DataError(f"{folder / STATE}: field '_data_files': must be a non-empty list of {{'filename'}} objects")
    shards = []
    for i, entry in enumerate(files):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[^/\\]+\.arrow", name) or name.startswith("."):
            raise DataError(f"{folder / STATE}: field '_data_files[{i}].filename': must be the name of an "
                            f".arrow file in this folder, got {json.dumps(name)[:80]}")
        if not (folder / name).is_file():
            raise DataError(f"{folder}: missing the shard {name} that {STATE} lists")
        shards.append(folder / name)
    return Source(folder, "datasets", tuple(shards))


def _metadata(path: Path) -> dict:
    """A datasets metadata file (state.json, dataset_dict.json) as a dict."""
    with open_binary(path) as f:
        data = f.read()
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: unreadable datasets metadata ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: unreadable datasets metadata (expected a JSON object, got {type(obj).__name__})")
    return obj


def _folder(path: Path) -> list[Source]:
    try:
        # Names starting with "." are skipped: atomic writes leave their temporary files under such names. So are
        # datasets' metadata files, in case a folder holds the shards without the state.json that marks it.
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _kind(p)
                       and p.name not in (STATE, SPLITS, INFO))
    except OSError as e:
        raise DataError(f"{path}: cannot read this folder ({e.strerror or e})") from None
    if not files:
        raise DataError(f"{path}: no {ACCEPTED} files in this folder")
    return [Source(p, _kind(p)) for p in files]


# ---- text files ----


def _jsonl(source: Source) -> Iterator[tuple[str, object]]:
    return ((f"{source.path}:{lineno}", item) for lineno, item in jsonl_records(source.path))


def _json(source: Source) -> Iterator[tuple[str, object]]:
    """A JSON array of records, one record written over several lines, or JSON lines."""
    with open_binary(source.path) as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    # An indented object starts with a line that is only "{": one record, not a line of JSON lines.
    if head.startswith(b"[") or head.split(b"\n", 1)[0].strip() == b"{":
        return _json_document(source.path)
    return _jsonl(source)


def _json_document(path: Path) -> Iterator[tuple[str, object]]:
    # One document: a broken array cannot be resumed past its fault, so this is an error even when skipping.
    with open_binary(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {data[e.start]:#x})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: broken JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to parse") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise DataError(f"{path}: broken JSON ({str(e).split(':')[0]})") from None
    for i, record in enumerate(document if isinstance(document, list) else [document], 1):
        yield f"{path}[record {i}]", record


# ---- tables ----


def _pyarrow():
    # Deferred: pyarrow (and the numpy it loads) costs a fifth of a second, and only tables need it.
    import pyarrow
    import pyarrow.parquet  # noqa: F401  (registers pyarrow.parquet)

    return pyarrow


def _parquet(source: Source) -> Iterator[tuple[str, object]]:
    pa = _pyarrow()
    return _rows(source.path, "Parquet", lambda: pa.parquet.ParquetFile(source.path).iter_batches())


def _arrow(source: Source) -> Iterator[tuple[str, object]]:
    return _rows(source.path, "Arrow", lambda: _ipc_batches(source.path))


def _dataset_rows(source: Source) -> Iterator[tuple[str, object]]:
    for shard in source.shards:
        yield from _rows(shard, "Arrow", lambda s=shard: _ipc_batches(s))


def _ipc_batches(path: Path):
    """The record batches of an Arrow IPC file: the stream format datasets writes, or the file format."""
    pa = _pyarrow()
    with pa.memory_map(str(path)) as f:
        is_file_format = f.read(6) == b"ARROW1"
        f.seek(0)
        if is_file_format:
            reader = pa.ipc.open_file(f)
            yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            yield from pa.ipc.open_stream(f)


def _rows(path: Path, what: str, batches) -> Iterator[tuple[str, object]]:
    """(FILE[row N], record) for each row of the batches; a file that cannot be read is a DataError."""
    pa = _pyarrow()
    row = 0
    try:
        for batch in batches():
            for record in batch.to_pylist(maps_as_pydicts="lossy"):
                yield f"{path}[row {row}]", _as_json(record)
                row += 1
    except (pa.ArrowException, OSError, ValueError) as e:
        after = f" after row {row - 1}" if row else ""
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable {what} file{after} ({message})") from None


def _as_json(value):
    """A row's value as JSON would give it: dict keys as strings, null struct fields left out."""
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value
