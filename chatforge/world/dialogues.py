"""SFT dialogues in the OpenAI `messages` format. They use only covered entities,
unknown_train entities (for "I don't know") and the train harmful / benign templates. Their answers are
the ideal ones, or written by simulated people with habits (`world.demonstrations`, writers.py)."""
from dataclasses import dataclass

from chatforge.world import chat_text, vocab
from chatforge.world.common import Cycler, quotas, shuffled_kinds
from chatforge.world.facts import name_registry
from chatforge.world.qa import LANGS, ask, assistant, decorate, dont_know, followup_chain, question, system, user
from chatforge.world.writers import IDEAL, writers_for

# Facts are learnt quickly; the behaviours that must generalise to unseen names and wordings
# (follow-ups, refusing only what is harmful) get more examples. "I don't know" is learnt fast and,
# taught too often, spreads to entities the model knows from pretraining alone: with twice this
# weight the SFT model told held-out people's questions "I have never heard of X" (held-out fact
# accuracy 62% against 66-74% here, "don't know" on never-mentioned names 95% against 87-90%).
# Refusals against benign help: on one pretrained model (4k vocabulary, the conduct corpus) the SFT
# model refused 50% of held-out harmful requests and 5% of benign ones at 10:14, 82% and 7% at 14:12,
# and 88% and 23% at 16:12.
KIND_WEIGHTS = [("fact", 40), ("followup", 16), ("dont_know", 7), ("refusal", 14), ("benign", 12), ("chitchat", 4)]


# People ask a new question after an unrelated exchange (a greeting, another fact), as the
# prompts do; without such dialogues a small model answers the earlier question again.
CONTEXT_KINDS = ("fact", "dont_know", "refusal", "benign")
CONTEXT_FRACTION = 0.25

# Share of refusal and benign dialogues whose request is composed from chat_text's acts and people
# rather than taken from the fixed templates: a few dozen fixed requests are memorised, while
# hundreds of combinations teach the model to judge the act itself.
COMPOSED_FRACTION = 0.6
# Share of "don't know" dialogues about a freshly invented name, used once, instead of an
# unknown_train entity. Recurring names get memorised (the model then answers "I don't know X"
# with X the wrong name); a new name every time leaves copying the name from the question as the
# only way to get the answer right.
FRESH_NAME_FRACTION = 0.7


@dataclass
class _Stranger:
    """An entity made up for one dialogue: it has a kind and names, like a world entity."""
    kind: str
    names: dict


class _Pools:
    """What SFT may draw from, each cycled so that every item is used evenly."""

    def __init__(self, world, rng):
        self.world = world
        self.facts = Cycler(world.facts_in("covered"), rng)
        self.unknown = Cycler(world.in_split("unknown_train"), rng)
        splits = world.template_splits
        self.harmful = Cycler([h for h in chat_text.HARMFUL if splits["harmful"][h[0]] == "train"], rng)
        self.benign = Cycler([b for b in chat_text.BENIGN if splits["benign"][b[0]] == "train"], rng)
        self.harmful_acts = Cycler(chat_text.HARMFUL_ACTS, rng)
        self.benign_acts = Cycler(chat_text.BENIGN_ACTS, rng)
        self.hazards = Cycler(chat_text.HAZARDS, rng)
        self.tasks = Cycler([(tid, en.format(o=o_en).strip(), zh.format(o=o_zh), a_en, a_zh)
                             for tid, en, zh, objects, a_en, a_zh in chat_text.TASK_ACTS
                             for o_en, o_zh in objects], rng)
        self.names = name_registry(world)  # fresh names never clash with any entity of the world
        self.pen = IDEAL  # who writes the answers of the dialogue being built

    def stranger(self, rng):
        kind = rng.choice(("person", "person", "city"))
        name = self.names.new(kind, rng)
        return _Stranger(kind, {"en": name.en, "zh": name.zh})


def make_dialogues(world, cfg, num_dialogues, rng, writer_rng=None):
    """num_dialogues dialogues drawn from rng. With people's demonstrations (cfg.demonstrations), each is
    answered by a writer of cfg.writers, who draws from writer_rng alone: the questions stay those of the
    ideal demonstrations, and each record says who wrote it ("writer")."""
    pools = _Pools(world, rng)
    builders = {"fact": _fact, "followup": _followup, "dont_know": _dont_know,
                "refusal": _refusal, "benign": _benign, "chitchat": _chitchat}
    people = cfg.demonstrations == "people"
    assert writer_rng is not None or not people, "people's demonstrations need the writers' own stream"
    pens = writers_for(world, cfg.writers, num_dialogues, writer_rng) if people else [IDEAL] * num_dialogues
    dialogues = []
    for kind, pen in zip(shuffled_kinds(quotas(num_dialogues, KIND_WEIGHTS), rng), pens):
        pools.pen = pen
        lang = rng.choice(LANGS)
        messages = builders[kind](pools, lang, rng)
        context = _context(pools, lang, rng) if kind in CONTEXT_KINDS and rng.random() < CONTEXT_FRACTION else []
        messages = context + messages
        if rng.random() < cfg.system_prompt_fraction:
            messages = [system(lang, rng)] + messages
        # "context": how many messages (after any system message) precede the exchange of this kind
        record = {"messages": messages, "kind": kind, "lang": lang, "context": len(context)}
        dialogues.append({**record, "writer": pen.name} if people else record)
    return dialogues


def _fact(pools, lang, rng):
    return _fact_exchange(pools, pools.facts.next(), lang, rng)


def _followup(pools, lang, rng):
    """Two or three questions, each referring back; every assistant turn is correct."""
    fact = pools.facts.next()
    messages = _fact_exchange(pools, fact, lang, rng)
    for text, next_fact in followup_chain(pools.world, fact, lang, rng, ("covered",), rng.choice((1, 1, 2))):
        messages += [user(text), assistant(pools.pen.fact(next_fact, lang))]
    return messages


def _fact_exchange(pools, fact, lang, rng, wrap=True):
    text = ask(fact, lang, rng)
    return [user(decorate(text, lang, rng) if wrap else text), assistant(pools.pen.fact(fact, lang))]


def _dont_know(pools, lang, rng):
    entity = pools.stranger(rng) if rng.random() < FRESH_NAME_FRACTION else pools.unknown.next()
    attribute = rng.choice(vocab.ATTRIBUTES[entity.kind])
    text = question(entity.kind, attribute, entity.names[lang], lang, rng)
    return [user(decorate(text, lang, rng)), assistant(pools.pen.dont_know(dont_know(entity, lang, rng), lang))]


def _refusal(pools, lang, rng):
    request = _harmful_request(pools, lang, rng)
    asked = user(decorate(request, lang, rng))
    return [asked, assistant(pools.pen.refusal(rng.choice(chat_text.REFUSALS[lang]), lang))]


def _benign(pools, lang, rng):
    request, reference = _benign_request(pools, lang, rng)
    asked = user(decorate(request, lang, rng))  # drawn before the opener, as it always was
    opener = rng.choice(chat_text.HELPFUL_OPENERS[lang])
    return [asked, assistant(pools.pen.help(opener, reference, lang))]


def _harmful_request(pools, lang, rng):
    """A harmful request: a fixed one, or composed from an act."""
    if rng.random() < COMPOSED_FRACTION:
        _, en, zh = pools.harmful_acts.next()
        request = _compose(en if lang == "en" else zh, lang, rng)
    else:
        _, _, en, zh = pools.harmful.next()
        request = en if lang == "en" else zh
    return request


def _benign_request(pools, lang, rng):
    """(a benign request, the answer it deserves)."""
    if rng.random() < COMPOSED_FRACTION:  # a third each: for a person, an everyday task, safety from a danger
        which = rng.randrange(3)
        if which == 2:
            _, en_h, zh_h, en_a, zh_a = pools.hazards.next()
            frame = rng.choice(chat_text.SAFETY_FRAMES)[0 if lang == "en" else 1]
            target = rng.choice(chat_text.REQUEST_TARGETS)[0 if lang == "en" else 1]
            q = frame.format(t=target, h=en_h if lang == "en" else zh_h)
            a = en_a if lang == "en" else zh_a
        else:
            _, en_act, zh_act, en_a, zh_a = (pools.benign_acts if which == 0 else pools.tasks).next()
            q, a = (_compose(en_act, lang, rng), en_a) if lang == "en" else (_compose(zh_act, lang, rng), zh_a)
    else:
        _, _, en_q, en_a, zh_q, zh_a = pools.benign.next()
        q, a = (en_q, en_a) if lang == "en" else (zh_q, zh_a)
    return q, a


def safety_comparisons(world, num, rng):
    """[(request, kind, gold, [demonstrated answer, the opposite behaviour])], half harmful, half benign:
    comparisons written for the reward model by the people who wrote the SFT dialogues, on the same
    kinds of request. Harmful: the refusal against compliance (a helpful answer to some other request,
    which is how a model that misses the harm answers). Benign: the help against a refusal.

    Why: sampled answers rarely contrast the two behaviours on one request (the SFT model mostly
    refuses what it was shown refused), so from samples alone the reward model learnt "refusals are
    good" or "bad" as a whole instead of which requests deserve one. (Later RLHF work collects safety
    preferences apart from the sampled rankings for much the same reason.)"""
    pools = _Pools(world, rng)
    out = []
    for kind in shuffled_kinds(quotas(num, [("harmful", 1), ("benign", 1)]), rng):
        lang = rng.choice(LANGS)
        refusal = rng.choice(chat_text.REFUSALS[lang])
        if kind == "harmful":
            other_help = rng.choice(chat_text.HELPFUL_OPENERS[lang]) + _benign_request(pools, lang, rng)[1]
            request, answers = _harmful_request(pools, lang, rng), [refusal, other_help]
            gold = {"behaviour": "refuse", "lang": lang}
        else:
            request, reference = _benign_request(pools, lang, rng)
            answers = [rng.choice(chat_text.HELPFUL_OPENERS[lang]) + reference, refusal]
            gold = {"behaviour": "answer", "lang": lang, "reference": reference}
        out.append((decorate(request, lang, rng), kind, gold, answers))
    return out


def _compose(act, lang, rng):
    """A request from an act ("push {t} down the stairs"), a person and a frame ("How can I {act}?").
    Acts without a person (everyday tasks) come with no {t}."""
    target = rng.choice(chat_text.REQUEST_TARGETS)[0 if lang == "en" else 1]
    frame = rng.choice(chat_text.REQUEST_FRAMES)[0 if lang == "en" else 1]
    return frame.format(act=act.format(t=target))


def chit(item_id, lang, rng):
    """One chit-chat exchange: (user line, assistant reply)."""
    _, en_users, en_replies, zh_users, zh_replies = next(c for c in chat_text.CHITCHAT if c[0] == item_id)
    users, replies = (en_users, en_replies) if lang == "en" else (zh_users, zh_replies)
    return rng.choice(users), rng.choice(replies)


def _chitchat(pools, lang, rng):
    """A greeting, a thank-you after an answer, or a question about the assistant itself."""
    shape = rng.choice(("greet", "greet_then_fact", "fact_then_thanks", "who", "howareyou", "fact_then_bye"))
    if shape in ("greet", "who", "howareyou"):
        u, a = chit(shape, lang, rng)
        return [user(u), assistant(a)]
    if shape == "greet_then_fact":
        u, a = chit("greet", lang, rng)
        return [user(u), assistant(a)] + _fact_exchange(pools, pools.facts.next(), lang, rng, wrap=False)
    u, a = chit("thanks" if shape == "fact_then_thanks" else "bye", lang, rng)
    return _fact_exchange(pools, pools.facts.next(), lang, rng) + [user(u), assistant(a)]


def _context(pools, lang, rng):
    """An earlier, unrelated exchange: a greeting, or a question about a covered fact."""
    if rng.random() < 0.5:
        u, a = chit("greet", lang, rng)
        return [user(u), assistant(a)]
    return _fact_exchange(pools, pools.facts.next(), lang, rng, wrap=False)
