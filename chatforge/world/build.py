"""build_world: generate the whole world and write it, atomically, under data_dir."""
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from chatforge.world.common import stream
from chatforge.world.corpus import SOURCES, make_corpus
from chatforge.world.dialogues import make_dialogues
from chatforge.world.facts import KNOWN_SPLITS, UNKNOWN_SPLITS, make_world
from chatforge.world.names import SYLLABLES, CITY_SUFFIXES
from chatforge.world.prompts import make_prompts
from chatforge.world.qa import LANGS
from chatforge.world.tokcorpus import make_tokenizer_corpus

MANIFEST = "world.json"
SHARD_BYTES = 2_000_000  # a corpus shard is closed once it reaches this size
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
FORMAT_VERSION = 1


def world_is_complete(data_dir):
    """True when data_dir holds a finished world (its manifest says "complete": true)."""
    path = Path(data_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("complete") is True
    except (OSError, ValueError):
        return False


def build_world(cfg, data_dir):
    """Write the world for `cfg` under data_dir and return its manifest (also data_dir/world.json).
    The files are built in a sibling "<name>.tmp" directory and renamed at the end, so data_dir
    is either complete or absent. Raises FileExistsError if data_dir already holds anything."""
    data_dir = Path(data_dir)
    if world_is_complete(data_dir):
        raise FileExistsError(f"{data_dir}: a complete world is already there")
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise FileExistsError(f"{data_dir}: exists and is not an empty directory; remove it or choose another")
    tmp = data_dir.parent / (data_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted build
    tmp.mkdir(parents=True)
    out = _Writer(tmp)
    manifest = _write_all(cfg, out)
    manifest["complete"] = True  # last key: a reader that sees it knows every file above is whole
    out.json(MANIFEST, manifest)
    if data_dir.exists():
        data_dir.rmdir()
    tmp.rename(data_dir)
    return manifest


class _Writer:
    """Writes UTF-8 JSON lines with "\\n" endings, remembering line counts and CJK characters."""

    def __init__(self, root):
        self.root, self.lines, self.cjk = root, {}, set()

    def jsonl(self, relpath, records):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        self._write(relpath, text)
        self.lines[relpath] = len(records)

    def json(self, relpath, obj):
        self._write(relpath, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")

    def _write(self, relpath, text):
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        self.cjk.update(CJK.findall(text))

    def shards(self, folder, records):
        """train-00000.jsonl, train-00001.jsonl, … of at most SHARD_BYTES each."""
        names, shard, size = [], [], 0
        for record in records:
            shard.append(record)
            size += len(json.dumps(record, ensure_ascii=False).encode()) + 1
            if size >= SHARD_BYTES:
                names.append(f"{folder}/train-{len(names):05d}.jsonl")
                self.jsonl(names[-1], shard)
                shard, size = [], 0
        if shard or not names:
            names.append(f"{folder}/train-{len(names):05d}.jsonl")
            self.jsonl(names[-1], shard)
        return names


def _write_all(cfg, out):
    world = make_world(cfg)
    out.jsonl("entities.jsonl", [e.record() for e in world.entities])
    out.jsonl("facts.jsonl", [f.record() for f in world.facts])
    corpus = make_corpus(world, cfg)
    corpus_counts = {}
    for source in SOURCES:
        shards = out.shards(f"corpus/{source}", corpus[source]["train"])
        out.jsonl(f"corpus/{source}/val.jsonl", corpus[source]["val"])
        corpus_counts[source] = _doc_counts(corpus[source], shards)
    num_val = max(1, round(cfg.num_dialogues * cfg.val_fraction))
    dialogues = {split: make_dialogues(world, cfg, num, stream(cfg.seed, f"dialogues/{split}"),
                                       stream(cfg.seed, f"dialogues/{split}/writers"))
                 for split, num in (("train", cfg.num_dialogues), ("val", num_val))}
    for split, records in dialogues.items():
        out.jsonl(f"dialogues/{split}.jsonl", records)
    prompts, users = make_prompts(world, cfg)
    for split, records in prompts.items():
        out.jsonl(f"prompts/{split}.jsonl", records)
    completion = [{"prompt": f.stem[lang], "answer": f.value[lang], "lang": lang, "fact_id": f.id,
                   "entity_split": f.split, "kind": f.kind, "attribute": f.attribute}
                  for f in world.facts for lang in LANGS]
    out.jsonl("eval/fact_completion.jsonl", completion)
    out.jsonl("eval/qa.jsonl", prompts["eval"])
    out.cjk.update(zh for _, zh in SYLLABLES + CITY_SUFFIXES)  # tokenizer must cover every possible name
    # Written last: it also lists every CJK character the world writes anywhere, so each one becomes
    # a token even if it only occurs in dialogues or prompts.
    tokenizer_docs = make_tokenizer_corpus(world, corpus, dialogues["train"], sorted(out.cjk), cfg)
    out.jsonl("tokenizer_corpus.jsonl", tokenizer_docs)
    return _manifest(cfg, world, out, corpus_counts, tokenizer_docs, dialogues, prompts, users)


def _doc_counts(parts, shards):
    return {"train_documents": len(parts["train"]), "train_chars": sum(len(d["text"]) for d in parts["train"]),
            "val_documents": len(parts["val"]), "val_chars": sum(len(d["text"]) for d in parts["val"]),
            "train_documents_by_lang": _count_by(parts["train"], lambda d: d["lang"]), "shards": shards}


def _count_by(items, key):
    counts = {}
    for item in items:
        counts[key(item)] = counts.get(key(item), 0) + 1
    return dict(sorted(counts.items()))


def _manifest(cfg, world, out, corpus_counts, tokenizer_docs, dialogues, prompts, users):
    splits = KNOWN_SPLITS + UNKNOWN_SPLITS
    entity_splits = {s: [e.id for e in world.entities if e.split == s] for s in splits}
    templates = {kind: {s: [k for k, v in table.items() if v == s] for s in ("train", "heldout")}
                 for kind, table in world.template_splits.items()}
    counts = {
        "entities": _count_by(world.entities, lambda e: e.kind),
        "entities_by_split": {s: len(ids) for s, ids in entity_splits.items()},
        "facts": {"total": len(world.facts), **{s: len(world.facts_in(s)) for s in KNOWN_SPLITS}},
        "corpus": corpus_counts,
        "corpus_train_chars": sum(c["train_chars"] for c in corpus_counts.values()),
        "tokenizer_corpus": {"documents": len(tokenizer_docs), "chars": sum(len(d["text"]) for d in tokenizer_docs)},
        "dialogues": {split: len(d) for split, d in dialogues.items()},
        "dialogues_by_kind": _count_by(dialogues["train"], lambda d: d["kind"]),
        **({"dialogues_by_writer": _count_by(dialogues["train"], lambda d: d["writer"])}
           if cfg.demonstrations == "people" else {}),
        "prompts": {split: len(p) for split, p in prompts.items()},
        "prompts_by_kind": {split: _count_by(p, lambda r: r["kind"]) for split, p in prompts.items()},
        "users": {split: len(u) for split, u in users.items()},
        "templates": {kind: {s: len(ids) for s, ids in by_split.items()} for kind, by_split in templates.items()},
        "eval": {"fact_completion": out.lines["eval/fact_completion.jsonl"], "qa": out.lines["eval/qa.jsonl"]},
    }
    return {"format_version": FORMAT_VERSION, "seed": cfg.seed, "config": _config(cfg), "counts": counts,
            "num_cjk_chars": len(out.cjk), "entity_splits": entity_splits, "template_splits": templates,
            "users": users, "files": dict(sorted(out.lines.items())),
            "notes": NOTES}


def _config(cfg):
    """The world's config as the manifest records it. Ideal demonstrations leave out the writers' fields, so
    that such a world is, byte for byte, the world built before people's demonstrations existed."""
    config = asdict(cfg)
    if cfg.demonstrations == "ideal":
        del config["demonstrations"], config["writers"]
    return config


NOTES = {
    "qa": "eval/qa.jsonl holds exactly the records of prompts/eval.jsonl",
    "fact_completion": "English answers follow the prompt after one space; Chinese answers follow directly",
    "entity_splits": "covered: corpus + SFT; heldout: corpus only; unknown_*: never in the corpus, asked about "
                     "in SFT (unknown_train), rank/ppo prompts (unknown_rl) or eval prompts (unknown_eval)",
    "files": "every JSON-lines file written, with its number of lines",
    "gold": "behaviour is answer | dont_know | refuse | chat; answers lists every acceptable value string",
}
