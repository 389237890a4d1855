"""Prompts for ranking, PPO and evaluation, each from a simulated user, with the ground truth
("gold") a judge needs to score an answer.

Users, not prompts, are assigned to splits: all of a user's prompts fall in one split, and no
user has more than 200 prompts (as in InstructGPT). No prompt text (the whole message list)
occurs twice anywhere, so no split can leak an exact prompt into another.
"""
import json
import math

from chatforge.world import chat_text, vocab
from chatforge.world.common import Cycler, quotas, shuffled_kinds, stream
from chatforge.world.config import MAX_PROMPTS_PER_USER
from chatforge.world.dialogues import chit, safety_comparisons
from chatforge.world.qa import (LANGS, answer, ask, assistant, decorate, fact_gold, followup_chain, question,
                                system, user)

SPLITS = ("rank", "ppo", "eval")
TRAIN_MIX = [("fact", 50), ("followup", 12), ("unknown", 10), ("harmful", 10), ("benign", 10), ("chitchat", 8)]
# Evaluation is balanced: as many questions on heldout entities as on covered ones, and every
# kind of behaviour well represented, half in each language.
EVAL_MIX = [("fact/covered", 20), ("fact/heldout", 20), ("followup", 15), ("unknown", 15), ("harmful", 15),
            ("benign", 15)]


class _Pools:
    """What a split may draw from. Evaluation alone uses the heldout templates and unknown_eval
    entities. Rank / PPO prompts may ask about heldout entities, but only evaluation prompts
    show a heldout fact in an earlier assistant turn: training inputs never state one."""

    def __init__(self, world, split, rng):
        self.world = world
        held = split == "eval"
        template_split = "heldout" if held else "train"
        self.splits = ("covered", "heldout") if held else ("covered",)  # facts earlier turns may state
        self.shown = Cycler(world.facts_in(*self.splits), rng)
        self.facts = Cycler(world.facts_in("covered", "heldout"), rng)
        self.by_split = {s: Cycler(world.facts_in(s), rng) for s in ("covered", "heldout")}
        self.unknown = Cycler(world.in_split("unknown_eval" if held else "unknown_rl"), rng)
        ts = world.template_splits
        self.harmful = Cycler([h for h in chat_text.HARMFUL if ts["harmful"][h[0]] == template_split], rng)
        self.benign = Cycler([b for b in chat_text.BENIGN if ts["benign"][b[0]] == template_split], rng)


def make_prompts(world, cfg):
    """({split: [prompt record]}, {split: [user id]})."""
    sizes = {"rank": cfg.num_rank_prompts, "ppo": cfg.num_ppo_prompts, "eval": cfg.num_eval_prompts}
    users = _users(sizes, cfg.prompts_per_user, stream(cfg.seed, "prompts/users"))
    seen, prompts = set(), {}
    for split in SPLITS:
        rng = stream(cfg.seed, f"prompts/{split}")
        pools = _Pools(world, split, rng)
        plan = _plan(split, sizes[split], rng)
        owners = _allocate(sizes[split], users[split], rng)
        records = []
        for i, (bucket, lang) in enumerate(plan):
            messages, kind, gold = _unique(lambda: _build(bucket, pools, lang, rng), seen)
            if rng.random() < cfg.system_prompt_fraction:
                messages = [system(lang, rng)] + messages
            records.append({"id": f"{split}-{i:05d}", "user_id": owners[i], "messages": messages,
                            "kind": kind, "lang": lang, "gold": gold})
        prompts[split] = records
    prompts["safety"] = _safety(world, cfg, users["rank"], seen)
    return prompts, users


def _safety(world, cfg, users, seen):
    """The written safety comparisons (dialogues.safety_comparisons) as prompt records with two "answers",
    owned by the ranking users. A request that repeats an earlier prompt is dropped (the fixed requests
    recur; about one in six at the laptop scale), so there are fewer than cfg.num_safety_comparisons."""
    rng = stream(cfg.seed, "prompts/safety")
    records = []
    for request, kind, gold, answers in safety_comparisons(world, cfg.num_safety_comparisons, rng):
        messages = [user(request)]
        key = json.dumps(messages, ensure_ascii=False)  # as in _unique: the request, whatever the system message
        if key in seen:
            continue
        seen.add(key)
        if rng.random() < cfg.system_prompt_fraction:
            messages = [system(gold["lang"], rng)] + messages
        records.append({"id": f"safety-{len(records):05d}", "user_id": rng.choice(users), "messages": messages,
                        "kind": kind, "lang": gold["lang"], "gold": gold, "answers": answers})
    return records


def _plan(split, size, rng):
    """[(bucket, lang)]: kinds by fixed quotas; in eval each bucket is split evenly by language."""
    if split != "eval":
        return [(kind, rng.choice(LANGS)) for kind in shuffled_kinds(quotas(size, TRAIN_MIX), rng)]
    plan = []
    for bucket, count in quotas(size, EVAL_MIX).items():
        plan += [(bucket, LANGS[i % 2]) for i in range(count)]
    rng.shuffle(plan)
    return plan


def _unique(build, seen, attempts=200):
    for _ in range(attempts):
        messages, kind, gold = build()
        key = json.dumps(messages, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            return messages, kind, gold
    raise RuntimeError("ran out of distinct prompts; lower the prompt counts or raise the world's size")


def _users(sizes, prompts_per_user, rng):
    """Split -> sorted user ids. Ids are shuffled before being dealt out, so a user's number
    says nothing about its split."""
    counts = {s: max(math.ceil(n / prompts_per_user), math.ceil(n / MAX_PROMPTS_PER_USER)) for s, n in sizes.items()}
    ids = [f"u{i:04d}" for i in range(sum(counts.values()))]
    rng.shuffle(ids)
    users, start = {}, 0
    for split in SPLITS:
        users[split] = sorted(ids[start:start + counts[split]])
        start += counts[split]
    return users


def _allocate(num_prompts, users, rng):
    """The owner of each prompt: every user at least one, the rest drawn with heavy-tailed
    activity (a few users ask a lot), never more than MAX_PROMPTS_PER_USER each."""
    weights = [rng.paretovariate(1.5) for _ in users]
    counts = [1] * len(users)
    for _ in range(num_prompts - len(users)):
        i = rng.choices(range(len(users)), weights)[0]
        counts[i] += 1
        if counts[i] == MAX_PROMPTS_PER_USER:
            weights[i] = 0.0
    owners = [u for u, c in zip(users, counts) for _ in range(c)]
    rng.shuffle(owners)
    return owners


def _build(bucket, pools, lang, rng):
    """(messages, kind, gold) for one prompt; single-turn kinds sometimes follow an earlier exchange."""
    kind = bucket.split("/")[0]
    if kind == "followup":
        return _followup(pools, lang, rng)
    if kind == "chitchat":
        return _chitchat(pools, lang, rng)
    builder = {"fact": _fact, "unknown": _unknown, "harmful": _harmful, "benign": _benign}[kind]
    text, gold = builder(pools, bucket, lang, rng)
    context = _context(pools, lang, rng) if rng.random() < 0.2 else []
    return context + [user(decorate(text, lang, rng))], kind, gold


def _context(pools, lang, rng):
    if rng.random() < 0.5:
        u, a = chit("greet", lang, rng)
        return [user(u), assistant(a)]
    fact = pools.shown.next()
    return [user(ask(fact, lang, rng)), assistant(answer(fact, lang))]


def _fact(pools, bucket, lang, rng):
    fact = pools.by_split[bucket.split("/")[1]].next() if "/" in bucket else pools.facts.next()
    return ask(fact, lang, rng), fact_gold(fact, lang)


def _unknown(pools, bucket, lang, rng):
    entity = pools.unknown.next()
    attribute = rng.choice(vocab.ATTRIBUTES[entity.kind])
    gold = {"behaviour": "dont_know", "lang": lang, "entity": entity.id, "attribute": attribute,
            "entity_split": entity.split}
    return question(entity.kind, attribute, entity.names[lang], lang, rng), gold


def _harmful(pools, bucket, lang, rng):
    tid, category, en, zh = pools.harmful.next()
    split = pools.world.template_splits["harmful"][tid]
    gold = {"behaviour": "refuse", "lang": lang, "template": tid, "category": category, "template_split": split}
    return (en if lang == "en" else zh), gold


def _benign(pools, bucket, lang, rng):
    bid, category, en_q, en_a, zh_q, zh_a = pools.benign.next()
    split = pools.world.template_splits["benign"][bid]
    reference = en_a if lang == "en" else zh_a
    gold = {"behaviour": "answer", "lang": lang, "template": bid, "category": category, "template_split": split,
            "reference": reference}
    return (en_q if lang == "en" else zh_q), gold


def _followup(pools, lang, rng):
    """A first exchange and one or two referring follow-ups; the gold is for the last question."""
    for _ in range(100):
        fact = pools.shown.next()
        turns = followup_chain(pools.world, fact, lang, rng, pools.splits, rng.choice((1, 1, 2)))
        if turns:
            break
    assert turns, "no follow-up is possible in this world"
    messages = [user(decorate(ask(fact, lang, rng), lang, rng)), assistant(answer(fact, lang))]
    for text, next_fact in turns[:-1]:
        messages += [user(text), assistant(answer(next_fact, lang))]
    last_text, last_fact = turns[-1]
    gold = dict(fact_gold(last_fact, lang), turns=len(turns) + 1)
    return messages + [user(last_text)], "followup", gold


def _chitchat(pools, lang, rng):
    if rng.random() < 0.3:
        item = rng.choice(("greet", "who", "howareyou"))
        u, _ = chit(item, lang, rng)
        return [user(u)], "chitchat", {"behaviour": "chat", "lang": lang, "template": item}
    item = rng.choice(("thanks", "bye"))
    u, _ = chit(item, lang, rng)
    fact = pools.shown.next()
    messages = [user(decorate(ask(fact, lang, rng), lang, rng)), assistant(answer(fact, lang)), user(u)]
    return messages, "chitchat", {"behaviour": "chat", "lang": lang, "template": item}
