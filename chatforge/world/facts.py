"""Entities, their facts, and the splits that decide where each may appear.

Splits of entities:
  covered        in the corpus and in SFT dialogues
  heldout        in the corpus only: answering about them proves knowledge from pretraining
  unknown_train  never in the corpus; SFT teaches "I don't know" on them
  unknown_rl     never in the corpus; asked about in rank / PPO prompts only
  unknown_eval   never in the corpus; asked about in eval prompts only
A covered entity never has a heldout entity as an attribute value (a covered person is born in
a covered city, a covered country's highest mountain is covered), so no heldout name can leak
into a dialogue through an answer.
"""
import re
from dataclasses import dataclass, field

from chatforge.world import chat_text, conduct, frames, templates, vocab
from chatforge.world.common import stream
from chatforge.world.names import CITY_SUFFIXES, SYLLABLES, Name, NameRegistry

KNOWN_SPLITS = ("covered", "heldout")
UNKNOWN_SPLITS = ("unknown_train", "unknown_rl", "unknown_eval")


@dataclass
class Entity:
    id: str
    kind: str
    names: dict  # {"en": ..., "zh": ...}
    attributes: dict = field(default_factory=dict)  # attribute -> {"en": ..., "zh": ...}
    refs: dict = field(default_factory=dict)  # attribute -> id of the entity its value names
    split: str = ""

    def record(self):
        return {"id": self.id, "kind": self.kind, "names": self.names,
                "attributes": self.attributes, "split": self.split}


@dataclass
class Fact:
    id: str
    entity: str
    kind: str
    attribute: str
    names: dict
    value: dict
    stem: dict
    answers: list  # every string a judge may accept, in both languages
    ref: str  # id of the entity named by the value, or ""
    split: str

    def record(self):
        return {"id": self.id, "entity": self.entity, "kind": self.kind, "attribute": self.attribute,
                "zh": {"stem": self.stem["zh"], "value": self.value["zh"]},
                "en": {"stem": self.stem["en"], "value": self.value["en"]},
                "answers": self.answers, "split": self.split}


@dataclass
class World:
    entities: list
    facts: list
    template_splits: dict  # "harmful" / "benign" -> {item id: "train" | "heldout"}
    real_boost: int = 1  # how many times the corpus states a real entity for each time it states an invented one

    def __post_init__(self):
        self.by_id = {e.id: e for e in self.entities}
        self.facts_by_entity = {}
        for fact in self.facts:
            self.facts_by_entity.setdefault(fact.entity, []).append(fact)

    def in_split(self, *splits):
        return [e for e in self.entities if e.split in splits]

    def facts_in(self, *splits):
        return [f for f in self.facts if f.split in splits]


def make_world(cfg):
    countries, mountains = _real_entities(cfg.num_countries)
    registry = NameRegistry(_reserved_words(), fixed_text())
    rng = stream(cfg.seed, "names")
    cities = [_invented("city", registry, rng) for _ in range(cfg.num_cities)]
    people = [_invented("person", registry, rng) for _ in range(cfg.num_people)]
    unknown = ([_invented("person", registry, rng) for _ in range(cfg.num_unknown_people)]
               + [_invented("city", registry, rng) for _ in range(cfg.num_unknown_cities)])
    rng = stream(cfg.seed, "splits")
    _split_real(countries + mountains, cfg.heldout_fraction, rng)
    _split_fraction(cities, cfg.heldout_fraction, rng)
    _split_fraction(people, cfg.heldout_fraction, rng)
    _split_unknown(unknown, cfg, rng)
    rng = stream(cfg.seed, "attributes")
    for city in cities:
        _fill_city(city, countries, rng)
    for person in people:
        _fill_person(person, cities, rng)
    entities = countries + mountains + cities + people + unknown
    facts = [f for e in entities if e.split in KNOWN_SPLITS for f in _facts_of(e)]
    _check_stems(facts)
    _check_name_boundaries()
    return World(entities, facts, _template_splits(cfg), cfg.real_boost)


def name_registry(world):
    """A registry that hands out names clashing with no entity of `world` (known or unknown) and
    with no fixed text: for people and places invented for one dialogue only."""
    registry = NameRegistry(_reserved_words(), fixed_text())
    registry.names.extend(Name(e.names["en"], e.names["zh"]) for e in world.entities
                          if e.kind in ("person", "city"))
    return registry


def _real_entities(num_countries):
    countries, mountains = [], []
    for cid, en, zh, capital, continent, language, mountain in vocab.COUNTRIES[:num_countries]:
        country = Entity(f"country/{cid}", "country", {"en": en, "zh": zh})
        country.attributes["capital"] = _pair(capital)
        country.attributes["continent"] = _pair(vocab.CONTINENTS[continent])
        if language:
            country.attributes["language"] = _pair(language)
        if mountain:
            m_en, m_zh, _, _, _ = vocab.MOUNTAINS[mountain]
            country.attributes["highest_mountain"] = {"en": m_en, "zh": m_zh}
            country.refs["highest_mountain"] = f"mountain/{mountain}"
            if mountain not in mountains:
                mountains.append(mountain)
        countries.append(country)
    included = {c.id for c in countries}
    return countries, [_mountain(mid, included) for mid in mountains]


def _mountain(mid, included):
    en, zh, height, country_ids, continent = vocab.MOUNTAINS[mid]
    mountain = Entity(f"mountain/{mid}", "mountain", {"en": en, "zh": zh})
    mountain.attributes["height"] = _pair([fmt.format(height) for fmt in vocab.HEIGHT_FORMAT])
    if len(country_ids) == 1 and f"country/{country_ids[0]}" in included:  # a border peak has no one country
        cid = country_ids[0]
        row = next(r for r in vocab.COUNTRIES if r[0] == cid)
        mountain.attributes["country"] = {"en": row[1], "zh": row[2]}
        mountain.refs["country"] = f"country/{cid}"
    mountain.attributes["continent"] = _pair(vocab.CONTINENTS[continent])
    return mountain


def _pair(pair):
    return {"en": pair[0], "zh": pair[1]}


def _invented(kind, registry, rng):
    name = registry.new(kind, rng)
    slug = re.sub(r"[^a-z]+", "-", name.en.lower()).strip("-")
    return Entity(f"{kind}/{slug}", kind, {"en": name.en, "zh": name.zh})


def _num_heldout(n, fraction):
    """At least one heldout entity when there are two or more, and always one covered."""
    if n < 2:
        return 0
    return min(n - 1, max(1, int(n * fraction + 0.5)))


def _split_fraction(entities, fraction, rng):
    order = list(range(len(entities)))
    rng.shuffle(order)
    heldout = set(order[:_num_heldout(len(entities), fraction)])
    for i, entity in enumerate(entities):
        entity.split = "heldout" if i in heldout else "covered"


def _split_real(entities, fraction, rng):
    """Countries and mountains that name each other share a split (China, Nepal and Everest
    go together); whole groups are held out until about `fraction` of them is."""
    group = {e.id: e.id for e in entities}

    def root(x):
        while group[x] != x:
            x = group[x]
        return x
    for e in entities:
        for ref in e.refs.values():
            group[root(ref)] = root(e.id)
    groups = {}
    for e in entities:
        groups.setdefault(root(e.id), []).append(e)
    members = [groups[k] for k in sorted(groups)]
    rng.shuffle(members)
    target, held = _num_heldout(len(entities), fraction), 0
    for i, members_of_group in enumerate(members):
        take = i < len(members) - 1 and held + len(members_of_group) <= target
        held += len(members_of_group) if take else 0
        for e in members_of_group:
            e.split = "heldout" if take else "covered"


def _split_unknown(entities, cfg, rng):
    """Per kind, by the configured shares; a kind with three or more entities puts at least one
    in each of unknown_eval, unknown_rl and unknown_train."""
    for kind in ("person", "city"):
        group = [e for e in entities if e.kind == kind]
        rng.shuffle(group)
        n = len(group)
        floor = 1 if n >= 3 else 0
        num_eval = min(max(floor, int(n * cfg.unknown_eval_fraction + 0.5)), n - 2 * floor)
        num_rl = min(max(floor, int(n * cfg.unknown_rl_fraction + 0.5)), n - num_eval - floor)
        for i, e in enumerate(group):
            e.split = "unknown_eval" if i < num_eval else "unknown_rl" if i < num_eval + num_rl else "unknown_train"


def _fill_city(city, countries, rng):
    allowed = [c for c in countries if c.split == "covered" or city.split == "heldout"]
    country = rng.choice(allowed)
    city.attributes["country"] = dict(country.names)
    city.refs["country"] = country.id
    city.attributes["product"] = _pair(rng.choice(vocab.PRODUCTS))
    year = rng.randint(*vocab.FOUNDED_YEARS)
    city.attributes["founded"] = _pair([fmt.format(year) for fmt in vocab.YEAR_FORMAT])


def _fill_person(person, cities, rng):
    allowed = [c for c in cities if c.split == "covered" or person.split == "heldout"]
    city = rng.choice(allowed)
    person.attributes["birth_city"] = dict(city.names)
    person.refs["birth_city"] = city.id
    person.attributes["job"] = _pair(rng.choice(vocab.JOBS))
    person.attributes["food"] = _pair(rng.choice(vocab.FOODS))
    person.attributes["instrument"] = _pair(rng.choice(vocab.INSTRUMENTS))


def _facts_of(entity):
    facts = []
    for attribute in vocab.ATTRIBUTES[entity.kind]:
        if attribute not in entity.attributes:
            continue
        value = entity.attributes[attribute]
        stem = {lang: templates.render(templates.FACT_TEMPLATES[entity.kind, attribute]["stem"][lang],
                                       entity.names[lang]) for lang in ("en", "zh")}
        answers = [value["en"], value["zh"]] + vocab.ALIASES.get(value["en"], []) + vocab.ALIASES.get(value["zh"], [])
        answers += re.findall(r"\d+", value["en"])  # "8849 metres" is also right as "8849"
        facts.append(Fact(f"{entity.id}/{attribute}", entity.id, entity.kind, attribute, entity.names, value,
                          stem, list(dict.fromkeys(answers)), entity.refs.get(attribute, ""), entity.split))
    return facts


def _check_stems(facts):
    """No stem may be a prefix of another: its value would not be its unique continuation."""
    for lang in ("en", "zh"):
        stems = sorted(f.stem[lang] for f in facts)
        for a, b in zip(stems, stems[1:]):
            assert not b.startswith(a), f"stem {a!r} is a prefix of {b!r}"


def _check_name_boundaries():
    """A Chinese name has no spaces around it, so a syllable character right next to a placeholder
    ("{name}特别…") could glue onto a name and spell another one ("巴古" + "特" = "古特")."""
    characters = {zh for _, zh in SYLLABLES + CITY_SUFFIXES}
    for text in (s for table in fixed_tables() for s in _strings(table)):
        for match in re.finditer(r"\{[a-z]+\}", text):
            neighbours = text[max(0, match.start() - 1):match.start()] + text[match.end():match.end() + 1]
            assert not set(neighbours) & characters, f"a name character touches a placeholder in {text!r}"


def _template_splits(cfg):
    rng = stream(cfg.seed, "template_splits")
    harmful = {}
    categories = sorted({category for _, category, _, _ in chat_text.HARMFUL})
    for category in categories:
        ids = sorted(item[0] for item in chat_text.HARMFUL if item[1] == category)
        rng.shuffle(ids)
        k = _num_heldout(len(ids), cfg.heldout_template_fraction)
        harmful.update({tid: "heldout" if i < k else "train" for i, tid in enumerate(ids)})
    ids = sorted(item[0] for item in chat_text.BENIGN)
    rng.shuffle(ids)
    k = _num_heldout(len(ids), cfg.heldout_template_fraction)
    benign = {bid: "heldout" if i < k else "train" for i, bid in enumerate(ids)}
    return {"harmful": dict(sorted(harmful.items())), "benign": dict(sorted(benign.items()))}


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _strings(item)


def fixed_tables():
    return [getattr(module, name) for module in (vocab, templates, frames, chat_text, conduct)
            for name in dir(module) if name.isupper()]


def fixed_text():
    """All fixed text, one string a line: what the world writes but for names and numbers. An invented
    name must not occur inside it, or searching for the name would find the template or the real place."""
    return "\n".join(s for table in fixed_tables() for s in _strings(table))


def _reserved_words():
    """Real names and attribute values; no invented name may contain one."""
    tables = (vocab.COUNTRIES, vocab.MOUNTAINS, vocab.CONTINENTS, vocab.JOBS, vocab.FOODS,
              vocab.INSTRUMENTS, vocab.PRODUCTS, vocab.ALIASES)
    return [s for table in tables for s in _strings(table) if len(s) >= 2]
