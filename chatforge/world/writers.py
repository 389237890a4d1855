"""The people who write the SFT demonstrations (`world.demonstrations: people`): simulated writers, each
with a habit, mixed by the recipe's weights (`world.writers`). With `ideal` demonstrations every answer is
the gold judge's own ideal, and SFT alone imitates the gold policy; people write as people do:

  ideal         the world's one-sentence answer                    "Tomi Sobanel was born in Sasela."
  terse         the bare value, the shortest refusal or admission  "Sasela."
                and the first clause of the help only
  padded        filler around the answer                           "Great question! ... Feel free to ask me anything else."
  other_script  the value in the other language's script           "Tomi Sobanel was born in 萨塞拉."
  hedging       hedges a fact it knows                             "I think ..., but I'm not sure."
  complete      adds a true related fact, what annotators reward   "... Sasela is a city in France."
                and demonstrations rarely show (seed 004's completeness)

Every writer keeps to the rules: a fact is stated truly (the right value, in whatever words), a harmful
request is refused, an unknown entity is admitted unknown, a benign request is helped. A habit applies where
it can (a number has no other script; nobody hedges a refusal); elsewhere the writer writes the ideal answer.
Writers draw only from their own random stream, so the dialogues' questions, entities and kinds are those of
the ideal demonstrations; only the answers differ. The text here is no part of the world's fixed tables (the
names are drawn against those), so a test keeps it free of any name the world could invent.
"""
from chatforge.world import templates
from chatforge.world.common import quotas, shuffled_kinds, upper_first
from chatforge.world.judge import NUMERIC_ATTRIBUTES, value_class
from chatforge.world.qa import answer

WRITERS = ("ideal", "terse", "padded", "other_script", "hedging", "complete")
# People's demonstrations by default: mostly plain answers, few complete ones.
DEFAULT_MIX = {"ideal": 0.3, "terse": 0.2, "padded": 0.15, "other_script": 0.1, "hedging": 0.2, "complete": 0.05}

END = {"en": ".", "zh": "。"}
SENTENCE_GAP = {"en": " ", "zh": ""}
PAD_OPENERS = {"en": ["Great question! ", "Let me think. "], "zh": ["好问题！", "让我想想。"]}
PAD_CLOSERS = {"en": [" Feel free to ask me anything else.", " Is there anything else you want to know?"],
               "zh": ["希望对你有帮助！", "有问题随时问我。"]}
PAD_REFUSAL_CLOSERS = {"en": [" Is there anything else I can do for you?"], "zh": ["希望你能理解。"]}
TERSE_DONT_KNOW = {"en": ["No idea.", "I don't know."], "zh": ["不知道。", "没听说过。"]}
TERSE_REFUSALS = {"en": ["I can't help with that.", "I won't help with that."], "zh": ["这个我帮不了。", "我不能帮这个忙。"]}
# {answer}: the ideal answer without its full stop (English: "The" lower-cased)
HEDGES = {"en": ["I think {answer}, but I'm not sure.", "If I remember right, {answer}, but I'm not sure."],
          "zh": ["我记得{answer}，不过我说不准。", "{answer}，不过我不清楚对不对。"]}
CLAUSE_ENDS = ",，;；.。!！?？"


class Writer:
    """One writer of demonstrations. Each method takes what the ideal writer would write and returns this
    writer's version of it; `rng` is the writers' own stream (None for the ideal writer, who draws nothing)."""

    def __init__(self, name, world=None, rng=None):
        assert name in WRITERS, name
        self.name, self.world, self.rng = name, world, rng

    def fact(self, fact, lang):
        """The answer to a question about `fact` (a covered fact: dialogues state no other)."""
        ideal = answer(fact, lang)
        if self.name == "terse":
            return upper_first(fact.value[lang]) + END[lang]
        if self.name == "padded":
            return self._pad(ideal, lang, PAD_CLOSERS)
        if self.name == "other_script" and fact.attribute not in NUMERIC_ATTRIBUTES:  # digits are in both scripts
            other = "zh" if lang == "en" else "en"
            text = templates.FACT_TEMPLATES[fact.kind, fact.attribute]["answer"][lang]
            return upper_first(templates.render(text, fact.names[lang], fact.value[other]))
        if self.name == "hedging":
            said = ideal[:-1]
            said = "the" + said[3:] if lang == "en" and said.startswith("The ") else said
            return self.rng.choice(HEDGES[lang]).format(answer=said)
        if self.name == "complete":
            related = self._related_fact(fact)
            return ideal if related is None else ideal + SENTENCE_GAP[lang] + answer(related, lang)
        return ideal

    def dont_know(self, ideal, lang):
        """An admission of not knowing an entity, from the ideal one."""
        if self.name == "terse":
            return self.rng.choice(TERSE_DONT_KNOW[lang])
        return self._pad(ideal, lang, PAD_CLOSERS) if self.name == "padded" else ideal

    def refusal(self, ideal, lang):
        """A refusal of a harmful request, from the ideal one."""
        if self.name == "terse":
            return self.rng.choice(TERSE_REFUSALS[lang])
        if self.name == "padded":
            return ideal + self.rng.choice(PAD_REFUSAL_CLOSERS[lang])
        return ideal

    def help(self, opener, reference, lang):
        """Help with a benign request: the world's opener of help, then the reference answer."""
        if self.name == "terse":  # the first clause only: less help, which the judge's overlap measures
            cut = min((i for i in map(reference.find, CLAUSE_ENDS) if i > 0), default=len(reference))
            return opener + reference[:cut].rstrip(CLAUSE_ENDS) + END[lang]
        if self.name == "padded":
            return opener + reference + self.rng.choice(PAD_CLOSERS[lang])
        return opener + reference

    def _pad(self, text, lang, closers):
        return self.rng.choice(PAD_OPENERS[lang]) + text + self.rng.choice(closers[lang])

    def _related_fact(self, fact):
        """Another fact of the entity the value names (Sasela, for "born in Sasela"), else of the asked entity:
        not of the asked attribute's kind (that would read as a second answer), never one whose value is the
        asked entity itself ("Japan's highest mountain is Mount Fuji" says nothing new about Mount Fuji)."""
        def usable(f):
            return (f.id != fact.id and f.split == fact.split and f.ref != fact.entity
                    and value_class(f.attribute) != value_class(fact.attribute))
        by_entity = self.world.facts_by_entity
        pool = [f for f in by_entity.get(fact.ref, []) if usable(f)] or [f for f in by_entity[fact.entity] if usable(f)]
        return self.rng.choice(pool) if pool else None


IDEAL = Writer("ideal")


def writers_for(world, mix, num, rng):
    """One writer per dialogue, in the shares of `mix` (writer -> weight), in a shuffled order drawn from rng."""
    pens = {name: Writer(name, world, rng) for name in WRITERS}
    names = shuffled_kinds(quotas(num, [(w, mix[w]) for w in WRITERS if w in mix]), rng)
    return [pens[name] for name in names]
