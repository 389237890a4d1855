"""Token streams: every document of a source tokenised once, joined by <|endoftext|>, cached on disk.

The cache is plain little-endian integers (`.bin`) plus a JSON note of what made it, so reading it
back never unpickles anything; it is rebuilt whenever the tokenizer or the source files change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from chatforge.data.corpus import Source, source_documents
from chatforge.io import atomic_write_bytes, atomic_write_json


def _fingerprint(src: Source, tokenizer) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).digest())
    for f in src.train_files + src.val_files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
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


def load_streams(sources: dict[str, Source], tokenizer, cache_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{source: {"train": LongTensor, "val": LongTensor}}, from the cache when it is current."""
    cache_dir = Path(cache_dir)
    streams = {}
    for name, src in sources.items():
        fp = _fingerprint(src, tokenizer)
        meta_path = cache_dir / f"{name}.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta.get("fingerprint") != fp:
            train_docs, val_docs = source_documents(src)
            eos = tokenizer.eos_token_id
            arrays = {"train": encode_documents(train_docs, tokenizer, eos), "val": encode_documents(val_docs, tokenizer, eos)}
            for split, arr in arrays.items():
                atomic_write_bytes(cache_dir / f"{name}.{split}.bin", arr.astype(arr.dtype.newbyteorder("<")).tobytes())
            meta = {"fingerprint": fp, "dtype": arrays["train"].dtype.name, "documents": [len(train_docs), len(val_docs)],
                    "tokens": {k: int(v.size) for k, v in arrays.items()}}
            atomic_write_json(meta_path, meta)  # written last: the .bin files are whole when it says so
        streams[name] = {
            split: torch.from_numpy(np.fromfile(cache_dir / f"{name}.{split}.bin", dtype=np.dtype(meta["dtype"]).newbyteorder("<")).astype(np.int64))
            for split in ("train", "val")
        }
    return streams
