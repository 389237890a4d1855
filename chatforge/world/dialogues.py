"""SFT dialogues in the OpenAI `messages` format. They use only covered entities,
unknown_train entities (for "I don't know") and the train harmful / benign templates."""
from chatforge.world import chat_text, vocab
from chatforge.world.common import Cycler, quotas, shuffled_kinds
from chatforge.world.qa import LANGS, answer, ask, assistant, decorate, dont_know, followup_chain, question, system, user

# Facts are learnt quickly; the behaviours that must generalise to unseen names and wordings
# (follow-ups, "I don't know", refusing only what is harmful) get more examples.
KIND_WEIGHTS = [("fact", 42), ("followup", 16), ("dont_know", 14), ("refusal", 10), ("benign", 14), ("chitchat", 4)]


# People ask a new question after an unrelated exchange (a greeting, another fact), as the
# prompts do; without such dialogues a small model answers the earlier question again.
CONTEXT_KINDS = ("fact", "dont_know", "refusal", "benign")
CONTEXT_FRACTION = 0.25


class _Pools:
    """What SFT may draw from, each cycled so that every item is used evenly."""

    def __init__(self, world, rng):
        self.world = world
        self.facts = Cycler(world.facts_in("covered"), rng)
        self.unknown = Cycler(world.in_split("unknown_train"), rng)
        splits = world.template_splits
        self.harmful = Cycler([h for h in chat_text.HARMFUL if splits["harmful"][h[0]] == "train"], rng)
        self.benign = Cycler([b for b in chat_text.BENIGN if splits["benign"][b[0]] == "train"], rng)


def make_dialogues(world, cfg, num_dialogues, rng):
    pools = _Pools(world, rng)
    builders = {"fact": _fact, "followup": _followup, "dont_know": _dont_know,
                "refusal": _refusal, "benign": _benign, "chitchat": _chitchat}
    dialogues = []
    for kind in shuffled_kinds(quotas(num_dialogues, KIND_WEIGHTS), rng):
        lang = rng.choice(LANGS)
        messages = builders[kind](pools, lang, rng)
        context = _context(pools, lang, rng) if kind in CONTEXT_KINDS and rng.random() < CONTEXT_FRACTION else []
        messages = context + messages
        if rng.random() < cfg.system_prompt_fraction:
            messages = [system(lang, rng)] + messages
        # "context": how many messages (after any system message) precede the exchange of this kind
        dialogues.append({"messages": messages, "kind": kind, "lang": lang, "context": len(context)})
    return dialogues


def _fact(pools, lang, rng):
    return _fact_exchange(pools.facts.next(), lang, rng)


def _followup(pools, lang, rng):
    """Two or three questions, each referring back; every assistant turn is correct."""
    fact = pools.facts.next()
    messages = _fact_exchange(fact, lang, rng)
    for text, next_fact in followup_chain(pools.world, fact, lang, rng, ("covered",), rng.choice((1, 1, 2))):
        messages += [user(text), assistant(answer(next_fact, lang))]
    return messages


def _fact_exchange(fact, lang, rng, wrap=True):
    text = ask(fact, lang, rng)
    return [user(decorate(text, lang, rng) if wrap else text), assistant(answer(fact, lang))]


def _dont_know(pools, lang, rng):
    entity = pools.unknown.next()
    attribute = rng.choice(vocab.ATTRIBUTES[entity.kind])
    text = question(entity.kind, attribute, entity.names[lang], lang, rng)
    return [user(decorate(text, lang, rng)), assistant(dont_know(entity, lang, rng))]


def _refusal(pools, lang, rng):
    _, _, en, zh = pools.harmful.next()
    request = en if lang == "en" else zh
    return [user(decorate(request, lang, rng)), assistant(rng.choice(chat_text.REFUSALS[lang]))]


def _benign(pools, lang, rng):
    _, _, en_q, en_a, zh_q, zh_a = pools.benign.next()
    q, a = (en_q, en_a) if lang == "en" else (zh_q, zh_a)
    return [user(decorate(q, lang, rng)), assistant(a)]


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
        return [user(u), assistant(a)] + _fact_exchange(pools.facts.next(), lang, rng, wrap=False)
    u, a = chit("thanks" if shape == "fact_then_thanks" else "bye", lang, rng)
    return _fact_exchange(pools.facts.next(), lang, rng) + [user(u), assistant(a)]


def _context(pools, lang, rng):
    """An earlier, unrelated exchange: a greeting, or a question about a covered fact."""
    if rng.random() < 0.5:
        u, a = chit("greet", lang, rng)
        return [user(u), assistant(a)]
    return _fact_exchange(pools.facts.next(), lang, rng, wrap=False)
