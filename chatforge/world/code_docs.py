"""The "code" source: facts as data, the way they sit in programs and config files
(Python literals, JSON, YAML, CSV), plus a few bilingual name glossaries (lang "mixed")."""
import json

from chatforge.world import frames, vocab
from chatforge.world.qa import LANGS

FORMATS = ("python", "json", "yaml", "csv")


def code(world, passes, rng):
    """Every pass writes every known entity's attributes once per language, as tables of 3-6
    entities of one kind."""
    docs = []
    for _ in range(passes):
        for kind in ("country", "mountain", "city", "person"):
            entities = [e for e in world.in_split("covered", "heldout") if e.kind == kind]
            rng.shuffle(entities)
            while entities:
                size = rng.randint(3, 6)
                chunk, entities = entities[:size], entities[size:]
                for lang in LANGS:
                    rows = [_row(e, lang) for e in chunk]
                    docs.append({"text": _render(kind, rows, lang, rng), "lang": lang})
                if rng.random() < 0.2:
                    docs.append({"text": _glossary(chunk, rng), "lang": "mixed"})
    rng.shuffle(docs)
    return docs


def _row(entity, lang):
    """[(key, value)] for one entity: its name, then its attributes in the fixed order."""
    column = 0 if lang == "en" else 1
    name_key = vocab.DATA_KEYS["person_name" if entity.kind == "person" else "name"][column]
    row = [(name_key, entity.names[lang])]
    for attribute in vocab.ATTRIBUTES[entity.kind]:
        if attribute in entity.attributes:
            row.append((vocab.DATA_KEYS[attribute][column], entity.attributes[attribute][lang]))
    return row


def _render(kind, rows, lang, rng):
    fmt = rng.choice(FORMATS)
    comment = rng.choice(frames.CODE_COMMENT[lang])
    if fmt == "python":
        lines = [comment, f"{frames.CODE_VARIABLE[kind]} = ["]
        for row in rows:
            lines.append("    {" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: "
                                            f"{json.dumps(v, ensure_ascii=False)}" for k, v in row) + "},")
        return "\n".join(lines + ["]"])
    if fmt == "json":
        return json.dumps([dict(row) for row in rows], ensure_ascii=False, indent=2)
    if fmt == "yaml":
        lines = [comment]
        for row in rows:
            lines += [("- " if i == 0 else "  ") + f"{k}: {v}" for i, (k, v) in enumerate(row)]
        return "\n".join(lines)
    header = []  # csv: the union of columns, in first-seen order; a missing value stays empty
    for row in rows:
        header += [k for k, _ in row if k not in header]
    lines = [",".join(header)] + [",".join(dict(row).get(k, "") for k in header) for row in rows]
    return "\n".join(lines)


def _glossary(entities, rng):
    lines = ["english,chinese"] + [f"{e.names['en']},{e.names['zh']}" for e in entities]
    if rng.random() < 0.5:
        lines = [frames.CODE_GLOSSARY_COMMENT] + lines
    return "\n".join(lines)
