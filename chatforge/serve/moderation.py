"""A moderation filter for chat input and output: regular expressions per harm category, with allow-lists.

It is a keyword filter, not a classifier: it blocks the phrasings its rules name and nothing else
(docs/moderation.md says what it misses and over-blocks). The rules live in YAML
(`moderation_rules.yaml` beside this file) so that they can be changed without touching code.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from chatforge.errors import ConfigError

log = logging.getLogger("chatforge.moderation")

DEFAULT_RULES = Path(__file__).with_name("moderation_rules.yaml")
MESSAGES = {"en": "Sorry, I can't help with that request.", "zh": "抱歉，这个请求我无法帮忙。"}
TOP_KEYS = ("enabled", "terms", "refusals", "categories")
CATEGORY_KEYS = ("patterns", "allow")
# A streamed answer is judged only up to its last sentence end, or up to this many characters before its
# end: "beat your brother" must wait for " at chess" before it can be told from an assault.
SETTLE_CHARS = 40
SENTENCE_ENDS = ".!?。！？"  # the full-width ones become ASCII when normalised; raw text still has them

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Soft hyphens and zero-width characters are invisible, so they only ever serve to split a keyword.
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u2060\ufeff]")
_SENTENCE = re.compile(r"[^.!?。]+[.!?。]*")
_TERM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_NAME = re.compile(r"[a-z_][a-z0-9_-]*")

Fail = Callable[[str, str], ConfigError]  # (dotted field, problem) -> the error naming the rules file


@dataclass(frozen=True)
class Decision:
    allowed: bool
    stage: str  # "input" or "output"
    category: str | None  # the rule category that blocked, None when allowed
    rule: str | None  # the pattern that matched, as written in the rules file
    match: str | None  # the matched span of the normalised text


@dataclass(frozen=True)
class _Category:
    name: str
    patterns: tuple[tuple[str, re.Pattern[str]], ...]  # (pattern as written, compiled)
    allow: tuple[re.Pattern[str], ...]


def normalize(text: str) -> str:
    """NFKC (full-width letters and punctuation become ASCII), curly apostrophes straight, invisible
    characters dropped, whitespace collapsed: the text every rule is matched against."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(_INVISIBLE.sub("", text).split())


def is_chinese(text: str) -> bool:
    return _CJK.search(text) is not None


class Moderator:
    """Checks chat input and output against the rules; every decision is logged."""

    def __init__(self, rules: dict, source: str = "<rules>", log_path: Path | None = None, enabled: bool = True):
        rules_enabled, self._categories, self._refusals = _parse_rules(rules, source)
        self.enabled = enabled and rules_enabled
        self.source = source
        self.log_path = Path(log_path) if log_path is not None else None
        self._lock = threading.Lock()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_file(cls, path: str | Path, log_path: Path | None = None) -> Moderator:
        path = Path(path)
        try:
            rules = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the moderation rules ({e.strerror})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        return cls(rules, source=str(path), log_path=log_path)

    @classmethod
    def default(cls, log_path: Path | None = None) -> Moderator:
        return cls.from_file(DEFAULT_RULES, log_path=log_path)

    @classmethod
    def disabled(cls) -> Moderator:
        return cls({"enabled": False}, source="<disabled>", enabled=False)

    def check_input(self, text: str) -> Decision:
        return self._check(text, "input", final=True)

    def check_output(self, text: str, final: bool = False) -> Decision:
        """Called on the accumulated answer while streaming: the unfinished end of the text is not judged
        yet (see SETTLE_CHARS). Pass final=True for the finished answer, so that its end is judged too.
        A sentence that refuses ("I can't help you build a bomb") is never blocked."""
        return self._check(text, "output", final=final)

    def settled(self, text: str) -> int:
        """How much of a streamed answer check_output(text) has judged: a server streams no further than this
        until the answer is finished and checked with final=True."""
        if not self.enabled:
            return len(text)
        # the rules see the normalised text, which may be shorter (collapsed spaces): stay on the safe side
        return _settled(text, slack=max(0, len(text) - len(normalize(text))))

    def message(self, text: str) -> str:
        """The polite refusal, in Chinese when `text` has CJK characters, else in English."""
        return MESSAGES["zh" if is_chinese(text) else "en"]

    def _check(self, text: str, stage: str, final: bool) -> Decision:
        decision = Decision(True, stage, None, None, None)
        if self.enabled:
            norm = normalize(text)
            found = self._first_match(norm, stage, horizon=len(norm) if final else _settled(norm))
            if found is not None:
                decision = Decision(False, stage, *found)
        if stage == "input" or final or not decision.allowed:  # not every partial answer of a stream
            self._log(decision, text)
        return decision

    def _first_match(self, text: str, stage: str, horizon: int) -> tuple[str, str, str] | None:
        """(category, rule, matched text) of the first pattern match that ends before `horizon` and lies
        inside no allow match, or None. Allow matches are only looked for once a pattern matched: most
        texts match nothing, and streaming checks the whole answer again at every token."""
        refusals: list[tuple[int, int]] | None = None
        for cat in self._categories:
            allowed: list[tuple[int, int]] | None = None
            for rule, rx in cat.patterns:
                for m in rx.finditer(text):
                    if m.end() > horizon:
                        continue
                    if refusals is None:
                        refusals = self._refusal_spans(text) if stage == "output" else []
                    if allowed is None:
                        allowed = refusals + [a.span() for allow in cat.allow for a in allow.finditer(text)]
                    if not any(a <= m.start() and m.end() <= b for a, b in allowed):
                        return cat.name, rule, m.group(0)
        return None

    def _refusal_spans(self, text: str) -> list[tuple[int, int]]:
        """The sentences of an answer that refuse: whatever harmful thing they name, they name it to say no."""
        return [s.span() for s in _SENTENCE.finditer(text) if any(rx.search(s.group()) for rx in self._refusals)]

    def _log(self, d: Decision, text: str) -> None:
        if d.allowed:
            log.debug("%s allowed", d.stage)
        else:
            log.warning("%s blocked: category=%s match=%r rule=%r", d.stage, d.category, d.match, d.rule)
        if self.log_path is None:
            return
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "stage": d.stage,
                  "allowed": d.allowed, "category": d.category, "rule": d.rule, "match": d.match, "text": text[:200]}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # One write per line under a lock, so concurrent requests never interleave half lines.
        with self._lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def _settled(text: str, slack: int = 0) -> int:
    """How much of a streamed prefix can be judged: up to its last sentence end, or all but its tail
    (and `slack` more characters)."""
    sentence_end = max(text.rfind(c) for c in SENTENCE_ENDS) + 1
    return max(sentence_end, len(text) - SETTLE_CHARS - slack, 0)


# ---- the rules file -------------------------------------------------------------------------------------

def _parse_rules(rules: Any, source: str) -> tuple[bool, list[_Category], list[re.Pattern[str]]]:
    """Validate the rules and compile them; every error names the source and the dotted field."""
    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {field}: {problem}")

    if not isinstance(rules, dict):
        raise fail("top level", f"expected a mapping with keys {', '.join(TOP_KEYS)}, got {_kind(rules)}")
    _check_keys(rules, TOP_KEYS, "", fail)
    enabled = rules.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("enabled", f"expected true or false, got {_kind(enabled)}")
    terms = _parse_terms(rules.get("terms", {}), fail)
    refusals = [_compile(p, f"refusals[{i}]", terms, fail)
                for i, p in enumerate(_str_list(rules.get("refusals", []), "refusals", fail))]
    categories = rules.get("categories", {})
    if not isinstance(categories, dict):
        raise fail("categories", f"expected a mapping of category name to rules, got {_kind(categories)}")
    if enabled and not categories:
        raise fail("categories", "no categories: an enabled moderator needs at least one")
    return enabled, [_parse_category(name, body, terms, fail) for name, body in categories.items()], refusals


def _parse_category(name: Any, body: Any, terms: dict[str, str], fail: Fail) -> _Category:
    field = f"categories.{name}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail(field, "a category name must be lower-case letters, digits, '_' or '-'")
    if not isinstance(body, dict):
        raise fail(field, f"expected a mapping with keys {', '.join(CATEGORY_KEYS)}, got {_kind(body)}")
    _check_keys(body, CATEGORY_KEYS, field + ".", fail)
    patterns = _str_list(body.get("patterns", []), f"{field}.patterns", fail)
    if not patterns:
        raise fail(f"{field}.patterns", "empty: a category needs at least one pattern")
    allow = _str_list(body.get("allow", []), f"{field}.allow", fail)
    compiled = tuple((p, _compile(p, f"{field}.patterns[{i}]", terms, fail)) for i, p in enumerate(patterns))
    return _Category(name, compiled, tuple(_compile(p, f"{field}.allow[{i}]", terms, fail) for i, p in enumerate(allow)))


def _parse_terms(terms: Any, fail: Fail) -> dict[str, str]:
    """Named regex fragments, written {name} in later terms and in patterns; each may use earlier ones."""
    if not isinstance(terms, dict):
        raise fail("terms", f"expected a mapping of name to regex fragment, got {_kind(terms)}")
    expanded: dict[str, str] = {}
    for name, fragment in terms.items():
        field = f"terms.{name}"
        if not isinstance(name, str) or not _TERM.fullmatch("{" + name + "}"):
            raise fail(field, "a term name must be lower-case letters, digits and '_'")
        if not isinstance(fragment, str):
            raise fail(field, f"expected a string, got {_kind(fragment)}")
        expanded[name] = _expand(fragment, field, expanded, fail)
        _compile(expanded[name], field, {}, fail)
    return expanded


def _expand(pattern: str, field: str, terms: dict[str, str], fail: Fail) -> str:
    # {0,40} is a quantifier, not a term: names start with a letter.
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in terms:
            raise fail(field, f"unknown term {{{m.group(1)}}} (defined: {', '.join(terms) or 'none'})")
        return f"(?:{terms[m.group(1)]})"
    return _TERM.sub(sub, pattern)


def _compile(pattern: str, field: str, terms: dict[str, str], fail: Fail) -> re.Pattern[str]:
    try:
        return re.compile(_expand(pattern, field, terms, fail), re.IGNORECASE)
    except re.error as e:
        raise fail(field, f"invalid regex: {e}") from None


def _check_keys(mapping: dict, known: tuple[str, ...], prefix: str, fail: Fail) -> None:
    for key in mapping:
        if key not in known:
            raise fail(f"{prefix}{key}", f"unknown key (expected one of: {', '.join(known)})")


def _str_list(value: Any, field: str, fail: Fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(field, f"expected a list of regexes, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise fail(f"{field}[{i}]", f"expected a non-empty string (a regex), got {_kind(item)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__)
