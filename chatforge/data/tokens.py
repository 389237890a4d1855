"""Token streams: every document of a source tokenised once, joined by <|endoftext|>, cached on disk.

The cache is plain little-endian integers (`.bin`) plus a JSON note of what made it, so reading it
back never unpickles anything; it is rebuilt whenever the tokenizer or the source files change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from chatforge.data.corpus import Source, source_documents
from chatforge.io import atomic_write_bytes, atomic_write_json


def _fingerprint(src: Source, tokenizer) -> str:
    # Files by their names in the source, not their absolute paths: a run folder copied or moved keeps its cache.
    h = hashlib.sha256()
    h.update(hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).digest())
    for f in src.train_files + src.val_files:
        st = f.stat()
        h.update(f"{src.name}/{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def encode_documents(docs: list[str], tokenizer, eos_id: int) -> np.ndarray:
    """One stream: doc0 <eos> doc1 <eos> ...; each document learns to start after an <eos>."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.int32
    out = np.empty(sum(len(x) + 1 for x in ids), dtype=dtype)
    pos = 0
    for seq in ids:
        out[pos : pos + len(seq)] = seq
        out[pos + len(seq)] = eos_id
        pos += len(seq) + 1
    return out


def load_streams(sources: dict[str, Source], tokenizer, cache_dir: Path,
                 check: Callable[[dict[str, int]], None] = lambda counts: None) -> dict[str, dict[str, torch.Tensor]]:
    """{source: {"train": LongTensor, "val": LongTensor}}, from the cache when it is current. The sources whose cache
    is not are all read and tokenised, and `check` is given every source's count of training tokens, before any is
    written: a bad file, or a corpus `check` refuses, leaves the cache as it was."""
    cache_dir = Path(cache_dir)
    metas, fresh = {}, {}
    for name, src in sources.items():
        fp = _fingerprint(src, tokenizer)
        metas[name] = _current_meta(cache_dir, name, fp)
        if metas[name] is None:
            train_docs, val_docs = source_documents(src)
            eos = tokenizer.eos_token_id
            arrays = {"train": encode_documents(train_docs, tokenizer, eos), "val": encode_documents(val_docs, tokenizer, eos)}
            metas[name] = {"fingerprint": fp, "dtype": arrays["train"].dtype.name,
                           "documents": [len(train_docs), len(val_docs)],
                           "tokens": {k: int(v.size) for k, v in arrays.items()}}
            fresh[name] = arrays
    check({name: meta["tokens"]["train"] for name, meta in metas.items()})
    for name, arrays in fresh.items():
        for split, arr in arrays.items():
            atomic_write_bytes(cache_dir / f"{name}.{split}.bin", arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        atomic_write_json(cache_dir / f"{name}.json", metas[name])  # written last: the .bin files are whole when it says so
    return {name: {split: torch.from_numpy(np.fromfile(cache_dir / f"{name}.{split}.bin",
                                                       dtype=np.dtype(meta["dtype"]).newbyteorder("<")).astype(np.int64))
                   for split in ("train", "val")}
            for name, meta in metas.items()}


def _current_meta(cache_dir: Path, name: str, fingerprint: str) -> dict | None:
    """The cache note of a source if the cache is current and whole (its .bin files the sizes it says), else None:
    a cache that is stale, torn or edited is made again."""
    try:
        meta = json.loads((cache_dir / f"{name}.json").read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        whole = all((cache_dir / f"{name}.{split}.bin").stat().st_size == meta["tokens"][split] * itemsize
                    for split in ("train", "val"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if whole and meta.get("fingerprint") == fingerprint else None
