"""Questions and answers about facts, shared by SFT dialogues and prompt sets, so that both
use one family of wordings (evaluation tests generalisation across entities, not wordings)."""
from chatforge.world import chat_text, templates, vocab
from chatforge.world.common import upper_first

LANGS = ("en", "zh")


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def system(lang, rng):
    return {"role": "system", "content": rng.choice(chat_text.SYSTEM_PROMPTS[lang])}


def decorate(text, lang, rng):
    """Wrap a request the way users do ("Hi! …", "…谢谢！"); most requests stay bare."""
    return rng.choice(chat_text.PREFIXES[lang]) + text + rng.choice(chat_text.SUFFIXES[lang])


def question(kind, attribute, name, lang, rng, referring=False):
    """A user question about one attribute. `referring` uses the first template, which reads
    well with "that city" / "那座城市" in place of a name."""
    options = templates.FACT_TEMPLATES[kind, attribute]["question"][lang]
    text = templates.render(options[0] if referring else rng.choice(options), name)
    return upper_first(text)


def ask(fact, lang, rng):
    return question(fact.kind, fact.attribute, fact.names[lang], lang, rng)


def answer(fact, lang):
    template = templates.FACT_TEMPLATES[fact.kind, fact.attribute]["answer"][lang]
    text = templates.render(template, fact.names[lang], fact.value[lang])
    return upper_first(text)


def dont_know(entity, lang, rng):
    return templates.render(rng.choice(chat_text.DONT_KNOW[entity.kind][lang]), entity.names[lang])


def followup_chain(world, fact, lang, rng, splits, num_turns):
    """Follow-up questions after a first exchange about `fact`, each referring back to the
    entity just discussed: another attribute ("And which continent is it in?"), the same
    attribute of another entity ("What about Japan?"), or the entity named by the last answer
    ("Which country is that city in?"). No fact is asked twice. Returns [(question, fact answered)],
    possibly shorter than num_turns."""
    turns, current, asked = [], fact, {fact.id}
    for _ in range(num_turns):
        same_entity = [f for f in world.facts_by_entity[current.entity] if f.id not in asked]
        other_entity = [f for f in world.facts if f.kind == current.kind and f.attribute == current.attribute
                        and f.id not in asked and f.split in splits]
        chained = world.facts_by_entity.get(current.ref, []) if current.ref else []
        chained = [f for f in chained if f.split in splits and f.id not in asked]
        moves = [m for m, pool in (("same", same_entity), ("other", other_entity), ("chain", chained)) if pool]
        if not moves:
            break
        move = rng.choice(moves)
        if move == "same":
            current = rng.choice(same_entity)
            text = templates.FACT_TEMPLATES[current.kind, current.attribute]["followup"][lang]
        elif move == "other":
            current = rng.choice(other_entity)
            text = templates.render(rng.choice(templates.OTHER_ENTITY[lang]), current.names[lang])
        else:
            current = rng.choice(chained)
            pointer = vocab.KIND_WORDS[current.kind][0 if lang == "en" else 1]
            text = question(current.kind, current.attribute, pointer, lang, rng, referring=True)
        turns.append((text, current))
        asked.add(current.id)
    return turns


def fact_gold(fact, lang):
    return {"behaviour": "answer", "lang": lang, "entity": fact.entity, "attribute": fact.attribute,
            "entity_split": fact.split, "fact_id": fact.id, "answers": fact.answers}
