"""Invented names, built from a fixed table of paired syllables.

A name is a sequence of syllables; its English form concatenates the Latin syllables
(capitalised) and its Chinese form the matching characters, so "Karo Linmei" is "卡罗·林梅".
Each syllable has its own character, which keeps the set of Chinese characters used by
names small (about 80) and lets a tokenizer split every name, known or unknown, the same way.
"""
from dataclasses import dataclass

SYLLABLES = [
    ("ka", "卡"), ("ko", "科"), ("ki", "基"), ("ku", "库"), ("ke", "珂"),
    ("ra", "拉"), ("ro", "罗"), ("ri", "里"), ("ru", "鲁"), ("re", "蕾"),
    ("la", "兰"), ("lo", "洛"), ("li", "莉"), ("lu", "露"), ("le", "勒"),
    ("ma", "玛"), ("mo", "莫"), ("mi", "米"), ("mu", "穆"), ("me", "梅"),
    ("na", "娜"), ("no", "诺"), ("ni", "妮"), ("nu", "努"), ("ne", "内"),
    ("ta", "塔"), ("to", "托"), ("ti", "蒂"), ("tu", "图"), ("te", "特"),
    ("sa", "萨"), ("so", "索"), ("si", "希"), ("su", "苏"), ("se", "瑟"),
    ("da", "达"), ("do", "多"), ("di", "迪"), ("du", "杜"), ("de", "德"),
    ("va", "瓦"), ("vo", "沃"), ("vi", "维"), ("ve", "薇"),
    ("ba", "巴"), ("bo", "波"), ("bi", "比"), ("bu", "布"), ("be", "贝"),
    ("pa", "帕"), ("po", "珀"), ("pi", "皮"), ("pe", "佩"),
    ("za", "扎"), ("zo", "佐"), ("ze", "泽"), ("zi", "齐"),
    ("fe", "菲"), ("fo", "弗"),
    ("ga", "加"), ("go", "戈"), ("gu", "古"),
    ("ha", "哈"), ("ho", "霍"),
    ("lin", "林"), ("mar", "马"), ("dan", "丹"), ("sen", "森"), ("len", "伦"),
    ("min", "敏"), ("kan", "坎"), ("tan", "坦"), ("ban", "班"), ("ves", "韦"),
    ("ron", "荣"), ("nel", "奈"), ("kor", "寇"), ("tor", "陶"),
]
CITY_SUFFIXES = [("burg", "堡"), ("port", "港"), ("dale", "谷")]
KINDS = ("person", "city")


@dataclass(frozen=True)
class Name:
    en: str
    zh: str


def _syllables(rng, count):
    picked = [rng.choice(SYLLABLES) for _ in range(count)]
    return "".join(en for en, _ in picked).capitalize(), "".join(zh for _, zh in picked)


def random_name(kind, rng):
    """A fresh name of a kind: a person has a 2-syllable given name and a 2-3-syllable
    family name; a city has 2-3 syllables and, one time in four, a suffix (…burg / …堡)."""
    if kind == "person":
        given_en, given_zh = _syllables(rng, 2)
        family_en, family_zh = _syllables(rng, rng.choice((2, 2, 3)))
        return Name(f"{given_en} {family_en}", f"{given_zh}·{family_zh}")
    assert kind == "city", kind
    en, zh = _syllables(rng, rng.choice((2, 3, 3)))
    if rng.random() < 0.25:
        suffix_en, suffix_zh = rng.choice(CITY_SUFFIXES)
        en, zh = en + suffix_en, zh + suffix_zh
    return Name(en, zh)


class NameRegistry:
    """Hands out names that can be found in text without ambiguity: no name contains another
    (in either language, so none is a prefix of another), none contains a reserved word
    (a real place, an attribute value) and none occurs inside the fixed template text."""

    def __init__(self, reserved_words, reserved_text):
        self.names = []
        self._reserved_words = sorted({w.lower() for w in reserved_words if w})
        self._reserved_text = reserved_text.lower()

    def _clashes(self, text, other):
        a, b = text.lower(), other.lower()
        return a in b or b in a

    def acceptable(self, name):
        for text in (name.en, name.zh):
            if text.lower() in self._reserved_text:
                return False
            if any(word in text.lower() for word in self._reserved_words):
                return False
        return not any(self._clashes(name.en, n.en) or self._clashes(name.zh, n.zh) for n in self.names)

    def new(self, kind, rng):
        for _ in range(1000):
            name = random_name(kind, rng)
            if self.acceptable(name):
                self.names.append(name)
                return name
        raise RuntimeError(f"could not find a fresh {kind} name; the syllable table is too small")
