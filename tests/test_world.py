"""The built-in world: determinism, split hygiene, coverage of facts, and the manifest."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatforge.world import WorldConfig, build_world, world_is_complete
from chatforge.world.names import CITY_SUFFIXES, SYLLABLES

TINY = dict(num_countries=4, num_cities=3, num_people=6, num_unknown_people=6, num_unknown_cities=3,
            mentions_per_fact=10, num_dialogues=200, num_rank_prompts=120, num_ppo_prompts=120,
            num_eval_prompts=60, prompts_per_user=20, num_safety_comparisons=40)
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "data"
    return build_world(WorldConfig(**TINY), root), root


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """The tiny world with people's demonstrations instead of the ideal ones."""
    root = tmp_path_factory.mktemp("people") / "data"
    return build_world(WorldConfig(**TINY, demonstrations="people"), root), root


@pytest.fixture(scope="module")
def laptop(tmp_path_factory):
    root = tmp_path_factory.mktemp("laptop") / "data"
    started = time.perf_counter()
    manifest = build_world(WorldConfig(), root)
    return manifest, root, time.perf_counter() - started


@pytest.fixture(params=["tiny", "laptop"])
def world(request):
    """(manifest, data_dir, loaded files) for both scales; the invariants must hold at each."""
    if request.param == "tiny":
        manifest, root = request.getfixturevalue("tiny")
    else:
        manifest, root, _ = request.getfixturevalue("laptop")
    return manifest, root, _load(root)


_CACHE = {}


def _load(root):
    if root not in _CACHE:
        d = {"entities": read_jsonl(root / "entities.jsonl"), "facts": read_jsonl(root / "facts.jsonl")}
        d["corpus"] = {p.parent.name + "/" + p.name: read_jsonl(p) for p in sorted((root / "corpus").rglob("*.jsonl"))}
        d["dialogues"] = read_jsonl(root / "dialogues/train.jsonl") + read_jsonl(root / "dialogues/val.jsonl")
        d["prompts"] = {s: read_jsonl(root / f"prompts/{s}.jsonl") for s in ("rank", "ppo", "eval")}
        d["safety"] = read_jsonl(root / "prompts/safety.jsonl")
        d["tokenizer"] = read_jsonl(root / "tokenizer_corpus.jsonl")
        _CACHE[root] = d
    return _CACHE[root]


def names_of(entities, *splits):
    return [n for e in entities if e["split"] in splits for n in (e["names"]["en"], e["names"]["zh"])]


def corpus_text(data):
    return "\n\x00\n".join(doc["text"] for docs in data["corpus"].values() for doc in docs)


def dialogue_text(dialogue):
    return "\n".join(m["content"] for m in dialogue["messages"])


# ---------------------------------------------------------------- determinism


def test_same_config_is_byte_identical_even_across_hash_seeds(tiny, tmp_path):
    _, root = tiny
    script = ("import sys; from pathlib import Path; from chatforge.world import WorldConfig, build_world; "
              f"build_world(WorldConfig(**{TINY!r}), Path(sys.argv[1]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], check=True, env=env,
                   cwd=Path(__file__).resolve().parents[1])
    first, second = all_files(root), all_files(tmp_path / "again")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_a_different_seed_gives_a_different_world(tiny, tmp_path):
    _, root = tiny
    build_world(WorldConfig(**dict(TINY, seed=1)), tmp_path / "other")
    a, b = all_files(root), all_files(tmp_path / "other")
    assert a["entities.jsonl"] != b["entities.jsonl"]
    assert a["corpus/news/train-00000.jsonl"] != b["corpus/news/train-00000.jsonl"]


# ---------------------------------------------------------------- building


def test_existing_directories_are_not_overwritten(tiny, tmp_path):
    _, root = tiny
    assert world_is_complete(root)
    with pytest.raises(FileExistsError):
        build_world(WorldConfig(**TINY), root)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        build_world(WorldConfig(**TINY), busy)
    empty, stale = tmp_path / "empty", tmp_path / "empty.tmp"
    empty.mkdir()
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    build_world(WorldConfig(**TINY), empty)
    assert world_is_complete(empty) and not stale.exists()


@pytest.mark.parametrize("field, value", [
    ("num_people", 0), ("num_countries", 99), ("heldout_fraction", 1.5), ("seed", "zero"),
    ("num_unknown_people", 2), ("prompts_per_user", 201), ("val_fraction", 0.0), ("mentions_per_fact", 1),
    ("unknown_rl_fraction", 0.6), ("num_dialogues", 2.5), ("demonstrations", "robots"), ("writers", {"poet": 1.0}),
    ("writers", {"terse": -1.0}), ("writers", {"terse": 0.0}), ("writers", "terse"),
])
def test_bad_config_values_name_their_field(field, value):
    kwargs = {field: value}
    if field == "unknown_rl_fraction":
        kwargs["unknown_eval_fraction"] = 0.5
    with pytest.raises(ValueError, match=field):
        WorldConfig(**kwargs)


def test_laptop_scale_builds_fast_and_quietly(laptop, capsys, tmp_path):
    manifest, _, seconds = laptop
    assert seconds < 5
    build_world(WorldConfig(**TINY), tmp_path / "quiet")
    assert capsys.readouterr() == ("", "")
    counts = manifest["counts"]
    assert 150 <= counts["facts"]["total"] <= 260
    assert 600_000 <= counts["corpus_train_chars"] <= 1_500_000
    assert manifest["num_cjk_chars"] < 1000


# ---------------------------------------------------------------- manifest


def test_manifest_matches_the_files(world):
    manifest, root, data = world
    assert list(manifest)[-1] == "complete" and manifest["complete"] is True
    for relpath, lines in manifest["files"].items():
        assert len(read_jsonl(root / relpath)) == lines, relpath
    counts = manifest["counts"]
    for source, c in counts["corpus"].items():
        train = [d for s in c["shards"] for d in read_jsonl(root / s)]
        val = read_jsonl(root / f"corpus/{source}/val.jsonl")
        assert (len(train), sum(len(d["text"]) for d in train)) == (c["train_documents"], c["train_chars"])
        assert (len(val), sum(len(d["text"]) for d in val)) == (c["val_documents"], c["val_chars"])
        assert 0 < len(val) <= 0.1 * len(train) + 1
    assert counts["facts"]["total"] == len(data["facts"])
    for split, ids in manifest["entity_splits"].items():
        assert sorted(ids) == sorted(e["id"] for e in data["entities"] if e["split"] == split)
        assert counts["entities_by_split"][split] == len(ids) > 0
    assert counts["prompts"] == {**{s: len(p) for s, p in data["prompts"].items()}, "safety": len(data["safety"])}
    assert counts["dialogues"]["train"] + counts["dialogues"]["val"] == len(data["dialogues"])
    assert (root / "eval/qa.jsonl").read_bytes() == (root / "prompts/eval.jsonl").read_bytes()
    assert counts["eval"]["fact_completion"] == 2 * len(data["facts"])


def possible_cjk_chars():
    """Every Chinese character the world can ever write: those of its fixed tables and syllables."""
    from chatforge.world.facts import _strings, fixed_tables
    texts = [s for table in fixed_tables() + [SYLLABLES, CITY_SUFFIXES] for s in _strings(table)]
    return set(CJK.findall("\n".join(texts)))


def test_cjk_characters_are_few_at_any_seed_and_scale():
    assert len(possible_cjk_chars()) < 1000  # so each can be its own token, with room left for English words in the 4k vocabulary


def test_cjk_character_count_covers_every_file(world):
    manifest, root, _ = world
    chars = {zh for _, zh in SYLLABLES + CITY_SUFFIXES}
    for path in root.rglob("*.json*"):
        chars.update(CJK.findall(path.read_text(encoding="utf-8")))
    assert len(chars) == manifest["num_cjk_chars"]
    assert chars <= possible_cjk_chars()


# ---------------------------------------------------------------- names and facts


def test_syllable_table_is_one_to_one():
    assert len({en for en, _ in SYLLABLES}) == len(SYLLABLES)
    assert len({zh for _, zh in SYLLABLES}) == len(SYLLABLES)
    assert all(len(zh) == 1 for _, zh in SYLLABLES + CITY_SUFFIXES)


def test_no_invented_name_contains_another_name(world):
    """(Real names may: "Kenya" is inside "Mount Kenya", but they always share a split.)"""
    _, _, data = world
    for lang in ("en", "zh"):
        names = [e["names"][lang] for e in data["entities"]]
        assert len(set(names)) == len(names)
        for e in data["entities"]:
            if e["kind"] in ("person", "city"):
                a = e["names"][lang]
                assert [b for b in names if a != b and (a in b or b in a)] == [], a


def test_covered_entities_only_name_covered_entities(world):
    _, _, data = world
    heldout = names_of(data["entities"], "heldout")
    for fact in data["facts"]:
        if fact["split"] == "covered":
            assert fact["en"]["value"] not in heldout and fact["zh"]["value"] not in heldout, fact["id"]


def test_every_fact_is_stated_in_the_encyclopedia_in_both_languages(world):
    _, _, data = world
    text = "\n".join(d["text"] for name, docs in data["corpus"].items() if name.startswith("encyclopedia/train")
                     for d in docs)
    for fact in data["facts"]:
        assert f"{fact['en']['stem']} {fact['en']['value']}." in text, fact["id"]
        assert f"{fact['zh']['stem']}{fact['zh']['value']}。" in text, fact["id"]


def test_every_stem_is_continued_by_its_value_everywhere(world):
    """The fact-completion eval is only fair if the corpus never continues a stem otherwise."""
    _, _, data = world
    text = corpus_text(data)
    for lang, sep in (("en", " "), ("zh", "")):
        value_of = {f[lang]["stem"]: f[lang]["value"] for f in data["facts"]}
        pattern = re.compile("|".join(re.escape(s) for s in sorted(value_of, key=len, reverse=True)))
        for match in pattern.finditer(text):
            expected = sep + value_of[match.group()]
            assert text.startswith(expected, match.end()), text[match.start() - 40: match.end() + 40]


def test_every_known_entity_appears_in_the_forum(world):
    _, _, data = world
    forum = "\n".join(d["text"] for name, docs in data["corpus"].items() if name.startswith("forum/") for d in docs)
    for name in names_of(data["entities"], "covered", "heldout"):
        assert name in forum, name


def test_fact_completion_prompts_are_the_stems(world):
    _, root, data = world
    records = read_jsonl(root / "eval/fact_completion.jsonl")
    facts = {f["id"]: f for f in data["facts"]}
    for r in records:
        fact = facts[r["fact_id"]]
        assert (r["prompt"], r["answer"], r["entity_split"]) == (
            fact[r["lang"]]["stem"], fact[r["lang"]]["value"], fact["split"])
    assert {r["entity_split"] for r in records} == {"covered", "heldout"}


# ---------------------------------------------------------------- what may appear where


def test_unknown_entities_never_appear_in_any_corpus_text(world):
    _, _, data = world
    texts = corpus_text(data) + "\n".join(d["text"] for d in data["tokenizer"])
    for name in names_of(data["entities"], "unknown_train", "unknown_rl", "unknown_eval"):
        assert name not in texts, name


def test_tokenizer_corpus_never_holds_an_invented_known_name(world):
    manifest, _, data = world
    invented = [e for e in data["entities"] if e["kind"] in ("person", "city")]
    text = "\n".join(d["text"] for d in data["tokenizer"])
    for name in names_of(invented, "covered", "heldout"):
        assert name not in text, name
    assert data["tokenizer"] and {d["source"] for d in data["tokenizer"]} <= set(manifest["counts"]["corpus"]) | {"dialogues", "characters"}
    for name in names_of(data["entities"], "unknown_train", "unknown_rl", "unknown_eval"):  # scrambled in dialogues too
        assert name not in text, name


def test_dialogues_never_mention_heldout_or_foreign_unknown_entities(world):
    _, _, data = world
    held = names_of(data["entities"], "heldout", "unknown_rl", "unknown_eval")
    unknown_train = names_of(data["entities"], "unknown_train")
    for dialogue in data["dialogues"]:
        text = dialogue_text(dialogue)
        assert not [n for n in held if n in text], text
        if dialogue["kind"] != "dont_know":
            assert not [n for n in unknown_train if n in text], text
    assert any(n in dialogue_text(d) for d in data["dialogues"] for n in unknown_train)


def test_heldout_request_templates_never_reach_dialogues_or_safety_comparisons(world):
    from chatforge.world.chat_text import BENIGN, HARMFUL
    manifest, _, data = world
    splits = manifest["template_splits"]
    text = "\n".join([dialogue_text(d) for d in data["dialogues"]] + [dialogue_text(r) for r in data["safety"]])
    for tid, _, en, zh in HARMFUL:
        if tid in splits["harmful"]["heldout"]:
            assert en not in text and zh not in text, tid
    assert any(en in text or zh in text for tid, _, en, zh in HARMFUL if tid in splits["harmful"]["train"])
    for bid, _, en_q, _, zh_q, _ in BENIGN:
        if bid in splits["benign"]["heldout"]:
            assert en_q not in text and zh_q not in text, bid


def test_every_request_item_has_an_act_phrase():
    from chatforge.world import chat_text, conduct
    assert set(conduct.HARMFUL_PHRASES) == {h[0] for h in chat_text.HARMFUL}
    assert set(conduct.BENIGN_PHRASES) == {b[0] for b in chat_text.BENIGN}


def test_the_corpus_says_what_each_act_is_in_both_languages_but_never_asks_a_request(world):
    """Pretraining knows which acts are crimes, held-out ones included, as it knows held-out facts;
    the requests themselves (the evaluation's wording) never occur in the corpus."""
    from chatforge.world import chat_text, conduct
    _, _, data = world
    text = corpus_text(data)
    for kind, en, zh in conduct.acts():
        said_en = [t.format(act=en) for t in conduct.NEWS[kind]["en"] + conduct.FORUM_REPLY[kind]["en"]]
        said_zh = [t.format(act=zh) for t in conduct.NEWS[kind]["zh"] + conduct.FORUM_REPLY[kind]["zh"]]
        assert any(s[0].upper() + s[1:] in text or s in text for s in said_en), en
        assert any(s in text for s in said_zh), zh
        other = "benign" if kind == "harmful" else "harmful"
        assert not any(t.format(act=en) in text for t in conduct.FORUM_REPLY[other]["en"]), en
    for _, _, en, zh in chat_text.HARMFUL:
        assert en not in text and zh.rstrip("？") not in text, en
    for _, _, en_q, _, zh_q, _ in chat_text.BENIGN:
        assert en_q not in text and zh_q.rstrip("？") not in text, en_q


def test_dialogue_answers_are_the_correct_facts(world):
    from chatforge.world import facts as facts_module, qa
    manifest, _, data = world
    w = facts_module.make_world(WorldConfig(**manifest["config"]))
    correct = {qa.answer(f, lang) for f in w.facts_in("covered") for lang in qa.LANGS}
    for dialogue in data["dialogues"]:
        if dialogue["kind"] in ("fact", "followup"):
            turns = [m for m in dialogue["messages"] if m["role"] != "system"][dialogue["context"]:]
            replies = [m["content"] for m in turns if m["role"] == "assistant"]
            assert replies and all(r in correct for r in replies), dialogue
            assert dialogue["lang"] == "en" or all(CJK.search(r) for r in replies)


def test_dialogue_mix(laptop):
    _, root, _ = laptop
    dialogues = read_jsonl(root / "dialogues/train.jsonl")
    kinds = {d["kind"] for d in dialogues}
    assert kinds == {"fact", "followup", "dont_know", "refusal", "benign", "chitchat"}
    with_system = sum(d["messages"][0]["role"] == "system" for d in dialogues) / len(dialogues)
    assert 0.15 < with_system < 0.25
    assert 0.45 < sum(d["lang"] == "zh" for d in dialogues) / len(dialogues) < 0.55
    assert all(d["messages"][-1]["role"] == "assistant" for d in dialogues)


# ---------------------------------------------------------------- prompts


def test_users_and_prompts_never_cross_splits(world):
    manifest, _, data = world
    seen_users, seen_ids, seen_texts = {}, set(), set()
    for split, records in data["prompts"].items():
        per_user = {}
        for r in records:
            assert seen_users.setdefault(r["user_id"], split) == split, r["user_id"]
            per_user[r["user_id"]] = per_user.get(r["user_id"], 0) + 1
            assert r["id"] not in seen_ids
            seen_ids.add(r["id"])
            text = json.dumps(r["messages"], ensure_ascii=False)
            assert text not in seen_texts, text
            seen_texts.add(text)
            assert r["messages"][-1]["role"] == "user"
        assert max(per_user.values()) <= 200
        assert sorted(per_user) == manifest["users"][split]


def test_prompt_gold_matches_the_world(world):
    _, _, data = world
    entities = {e["id"]: e for e in data["entities"]}
    facts = {f["id"]: f for f in data["facts"]}
    for split, records in data["prompts"].items():
        for r in records:
            gold = r["gold"]
            assert gold["lang"] == r["lang"]
            if r["kind"] in ("fact", "followup"):
                fact = facts[gold["fact_id"]]
                assert gold["answers"][:2] == [fact["en"]["value"], fact["zh"]["value"]]
                assert gold["entity_split"] == fact["split"] == entities[gold["entity"]]["split"]
            elif r["kind"] == "unknown":
                assert gold["entity_split"] == entities[gold["entity"]]["split"] == \
                    ("unknown_eval" if split == "eval" else "unknown_rl")
                assert entities[gold["entity"]]["names"][r["lang"]] in r["messages"][-1]["content"]
            elif r["kind"] in ("harmful", "benign"):
                assert gold["template_split"] == ("heldout" if split == "eval" else "train")
            expected = {"fact": "answer", "followup": "answer", "benign": "answer", "unknown": "dont_know",
                        "harmful": "refuse", "chitchat": "chat"}[r["kind"]]
            assert gold["behaviour"] == expected


def test_training_prompts_never_state_a_heldout_fact(world):
    """Rank and PPO prompts may ask about a heldout entity, but no earlier turn may name one."""
    _, _, data = world
    heldout = names_of(data["entities"], "heldout")
    for split in ("rank", "ppo"):
        for r in data["prompts"][split]:
            earlier = "\n".join(m["content"] for m in r["messages"][:-1])
            assert not [n for n in heldout if n in earlier], r


def test_eval_prompts_are_balanced(world):
    _, _, data = world
    records = data["prompts"]["eval"]
    kinds = {r["kind"] for r in records}
    assert {"fact", "followup", "unknown", "harmful", "benign"} <= kinds
    facts = [r for r in records if r["kind"] == "fact"]
    covered = sum(r["gold"]["entity_split"] == "covered" for r in facts)
    assert abs(2 * covered - len(facts)) <= 2
    assert abs(2 * sum(r["lang"] == "zh" for r in records) - len(records)) <= 6


def test_safety_comparisons_set_the_right_behaviour_against_its_opposite(world):
    """Each written comparison: a harmful request with (refusal, compliance) or a benign one with (help,
    refusal), which the judge orders that way; owned by ranking users; no request repeats another prompt."""
    from chatforge.world.judge import Judge, is_refusal
    manifest, root, data = world
    records = data["safety"]
    assert manifest["counts"]["prompts"]["safety"] == len(records) > 0.75 * manifest["config"]["num_safety_comparisons"]
    assert {r["kind"] for r in records} == {"harmful", "benign"}
    judge = Judge.from_world(root)
    others = {json.dumps(r["messages"], ensure_ascii=False) for rs in data["prompts"].values() for r in rs}
    rank_users = set(manifest["users"]["rank"])
    for r in records:
        prompt = {"id": r["id"], "messages": r["messages"], "kind": r["kind"], "gold": r["gold"]}
        good, bad = r["answers"]
        assert [is_refusal(good), is_refusal(bad)] == ([True, False] if r["kind"] == "harmful" else [False, True])
        assert judge.score(prompt, good).total > judge.score(prompt, bad).total, r
        assert r["user_id"] in rank_users and r["messages"][-1]["role"] == "user"
        assert json.dumps(r["messages"], ensure_ascii=False) not in others
    assert len({json.dumps(r["messages"], ensure_ascii=False) for r in records}) == len(records)


# ---------------------------------------------------------------- people's demonstrations


ANSWERS_ONLY = {"dialogues/train.jsonl", "dialogues/val.jsonl", "tokenizer_corpus.jsonl", "world.json"}


def test_people_write_other_answers_to_the_same_questions(tiny, people):
    """Only the dialogues' answers change (and the tokenizer corpus, which copies dialogues, and the manifest):
    the corpus, every prompt and every evaluation set are byte for byte those of the ideal world."""
    (ideal_manifest, ideal_root), (manifest, root) = tiny, people
    ideal_files, people_files = all_files(ideal_root), all_files(root)
    assert ideal_files.keys() == people_files.keys()
    assert [name for name in ideal_files if ideal_files[name] != people_files[name]] == sorted(ANSWERS_ONLY)
    for split in ("train", "val"):
        ideal, written = read_jsonl(ideal_root / f"dialogues/{split}.jsonl"), read_jsonl(root / f"dialogues/{split}.jsonl")
        assert len(ideal) == len(written)
        for a, b in zip(ideal, written):
            assert {k: a[k] for k in ("kind", "lang", "context")} == {k: b[k] for k in ("kind", "lang", "context")}
            assert [m for m in a["messages"] if m["role"] != "assistant"] == [m for m in b["messages"] if m["role"] != "assistant"]
            assert [m["role"] for m in a["messages"]] == [m["role"] for m in b["messages"]] and "writer" not in a
    assert manifest["config"]["demonstrations"] == "people" and "demonstrations" not in ideal_manifest["config"]
    same = {k for k in ideal_manifest["counts"] if k != "tokenizer_corpus"}  # which copies dialogues
    assert {k: manifest["counts"][k] for k in same} == {k: ideal_manifest["counts"][k] for k in same}
    assert manifest["counts"].keys() - ideal_manifest["counts"].keys() == {"dialogues_by_writer"}


def test_writers_come_in_the_recipes_shares(people):
    from chatforge.world.common import quotas
    from chatforge.world.writers import DEFAULT_MIX, WRITERS
    manifest, root = people
    dialogues = read_jsonl(root / "dialogues/train.jsonl")
    counts = {w: n for w, n in quotas(len(dialogues), [(w, DEFAULT_MIX[w]) for w in WRITERS]).items() if n}
    assert manifest["counts"]["dialogues_by_writer"] == dict(sorted(counts.items()))
    assert {d["writer"] for d in dialogues} == set(WRITERS)
    assert manifest["config"]["writers"] == DEFAULT_MIX


def test_people_keep_to_the_rules(tiny, people):
    """Whoever writes, every fact is stated truly (SFT's fact-accuracy targets stay reachable), every harmful
    request refused, every unknown entity admitted unknown, every benign request helped."""
    from chatforge.world import facts as facts_module, qa
    from chatforge.world.judge import Judge, is_dont_know, is_refusal
    (manifest, ideal_root), (_, root) = tiny, people
    judge = Judge.from_world(ideal_root)
    w = facts_module.make_world(WorldConfig(**manifest["config"]))
    fact_of = {qa.answer(f, lang): (f, lang) for f in w.facts_in("covered") for lang in qa.LANGS}
    checked = {}
    for a, b in zip(read_jsonl(ideal_root / "dialogues/train.jsonl"), read_jsonl(root / "dialogues/train.jsonl")):
        turns = [(x["content"], y["content"], i) for i, (x, y) in enumerate(zip(a["messages"], b["messages"]))
                 if x["role"] == "assistant"]
        for ideal, written, i in turns:
            if ideal in fact_of:
                fact, lang = fact_of[ideal]
                gold = {"behaviour": "answer", "lang": lang, "entity": fact.entity, "attribute": fact.attribute,
                        "answers": fact.answers}
                score = judge.score({"id": "d", "messages": b["messages"][:i], "kind": "fact", "gold": gold}, written)
                assert score.labels["correct"] and not (score.labels["wrong_value"] or score.labels["made_up"]), written
                kind = "fact"
            elif i == len(a["messages"]) - 1 and a["kind"] in ("refusal", "dont_know", "benign"):
                kind = a["kind"]
                assert {"refusal": is_refusal(written) and not is_dont_know(written),
                        "dont_know": is_dont_know(written),
                        "benign": not is_refusal(written) and not is_dont_know(written)}[kind], (kind, written)
            else:
                assert written == ideal, (a["kind"], written)  # chit-chat replies are everyone's
                kind = "chat"
            checked.setdefault((b["writer"], kind), 0)
            checked[(b["writer"], kind)] += 1
    assert {kind for _, kind in checked} == {"fact", "refusal", "dont_know", "benign", "chat"}


def test_writers_do_not_touch_a_world_of_ideal_demonstrations(tiny, tmp_path):
    """With ideal demonstrations the writers' mix is never read: the world is the one built before writers
    existed, byte for byte (its manifest leaves their fields out)."""
    _, root = tiny
    build_world(WorldConfig(**TINY, writers={"terse": 1.0}), tmp_path / "ideal")
    assert all_files(root) == all_files(tmp_path / "ideal")


def test_writers_text_can_hold_no_name_and_no_new_character():
    """The writers' phrases are no part of the fixed tables that invented names are drawn against, so they
    must hold no name the world could invent that the fixed text does not hold too (a name is never drawn
    from inside the fixed text), no name syllables side by side in Chinese, and no Chinese character the
    fixed tables lack (the tokenizer and the character count of the world are made for those)."""
    from chatforge.world import writers
    from chatforge.world.facts import _strings, fixed_text
    syllable = "|".join(sorted((en for en, _ in SYLLABLES), key=len, reverse=True))
    name = re.compile(f"(?:{syllable}){{2,3}}(?:{'|'.join(en for en, _ in CITY_SUFFIXES)})?")
    reserved, characters = fixed_text().lower(), {zh for _, zh in SYLLABLES + CITY_SUFFIXES}
    known_characters = possible_cjk_chars()
    texts = [s for n in dir(writers) if n.isupper() for s in _strings(getattr(writers, n))]
    assert texts
    for text in texts:
        low = text.lower()
        names = {low[i:j] for i in range(len(low)) for j in range(i + 4, len(low) + 1) if name.fullmatch(low[i:j])}
        assert all(n in reserved for n in names), (text, names)
        assert not any(a in characters and b in characters for a, b in zip(text, text[1:])), text
        for slot in re.finditer(r"\{[a-z]+\}", text):  # a name character beside it would glue onto the name
            assert not {text[slot.start() - 1:slot.start()], text[slot.end():slot.end() + 1]} & characters, text
        assert set(CJK.findall(text)) <= known_characters, text
