"""The knobs of the built-in world. Defaults are the "laptop" scale."""
from dataclasses import dataclass, field, fields

from chatforge.world.vocab import COUNTRIES
from chatforge.world.writers import DEFAULT_MIX, WRITERS

MAX_PROMPTS_PER_USER = 200  # as in InstructGPT: no simulated user may dominate a split


@dataclass
class WorldConfig:
    seed: int = 0  # master seed; every random choice in the world derives from it
    num_countries: int = 15  # real countries to include (1..15); their highest mountains come with them
    num_cities: int = 12  # invented cities, each in one of the included countries
    num_people: int = 32  # invented people, each born in an invented city (at least 2)
    num_unknown_people: int = 60  # invented people that no corpus text ever mentions (at least 3)
    num_unknown_cities: int = 16  # invented cities that no corpus text ever mentions
    heldout_fraction: float = 0.3  # share of known entities kept out of every dialogue (learnt in pretraining only)
    unknown_eval_fraction: float = 0.4  # share of unknown entities asked about only in prompts/eval.jsonl
    unknown_rl_fraction: float = 0.2  # share of unknown entities asked about only in rank/ppo prompts
    heldout_template_fraction: float = 0.3  # share of harmful and benign request templates kept for evaluation
    mentions_per_fact: int = 60  # times each known fact is stated in the train corpus, all sources and both languages
    real_boost: int = 2  # real countries and mountains are stated this many times as often (their names recur everywhere)
    val_fraction: float = 0.05  # size of each val file relative to its train file (corpus sources, dialogues)
    tokenizer_fraction: float = 0.4  # share of train corpus documents copied, with fresh names, for the tokenizer
    num_dialogues: int = 3000  # SFT dialogues in dialogues/train.jsonl
    demonstrations: str = "ideal"  # who writes the SFT answers: "ideal" (the gold judge's own) or "people" (`writers`)
    # weight of each simulated writer of "people" demonstrations: ideal, terse, padded, other_script, hedging, complete
    writers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    system_prompt_fraction: float = 0.2  # share of dialogues and prompts that open with a system message
    num_rank_prompts: int = 2400  # prompts in prompts/rank.jsonl (answers to be ranked for the reward model)
    num_safety_comparisons: int = 800  # written refusal/help comparisons for the reward model (repeats dropped: ~670)
    num_ppo_prompts: int = 1200  # prompts in prompts/ppo.jsonl
    num_eval_prompts: int = 400  # prompts in prompts/eval.jsonl (eval/qa.jsonl holds the same records)
    prompts_per_user: int = 40  # average prompts per simulated user; no user gets more than 200

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if f.type in (int, float, str) and type(value) is not f.type:
                raise ValueError(f"WorldConfig.{f.name}: expected {f.type.__name__}, got {value!r}")
        self._check_writers()
        self._check_range("num_countries", 1, len(COUNTRIES))
        for name in ("num_cities", "num_dialogues", "num_rank_prompts", "num_ppo_prompts", "num_eval_prompts"):
            self._check_range(name, 1)
        self._check_range("num_people", 2)  # one covered and one heldout person at the least
        self._check_range("num_unknown_people", 3)
        self._check_range("num_unknown_cities", 0)
        self._check_range("num_safety_comparisons", 0)
        self._check_range("mentions_per_fact", 2)
        self._check_range("real_boost", 1, 10)
        self._check_range("prompts_per_user", 1, MAX_PROMPTS_PER_USER)
        self._check_range("heldout_fraction", 0.0, 0.9)
        self._check_range("unknown_eval_fraction", 0.0, 0.9)
        self._check_range("unknown_rl_fraction", 0.0, 0.9)
        self._check_range("heldout_template_fraction", 0.0, 0.9)
        self._check_range("val_fraction", 0.001, 0.5)
        self._check_range("tokenizer_fraction", 0.001, 1.0)
        self._check_range("system_prompt_fraction", 0.0, 1.0)
        if self.unknown_eval_fraction + self.unknown_rl_fraction > 0.9:
            raise ValueError("WorldConfig.unknown_rl_fraction: unknown_eval_fraction + unknown_rl_fraction "
                             "must leave at least 10% of unknown entities for SFT")

    def _check_writers(self):
        if self.demonstrations not in ("ideal", "people"):
            raise ValueError(f"WorldConfig.demonstrations must be ideal or people, got {self.demonstrations!r}")
        if not isinstance(self.writers, dict):
            raise ValueError(f"WorldConfig.writers: expected a mapping of writer to weight, got {self.writers!r}")
        for name, weight in self.writers.items():
            if name not in WRITERS:
                raise ValueError(f"WorldConfig.writers: unknown writer {name!r} (known: {', '.join(WRITERS)})")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise ValueError(f"WorldConfig.writers.{name} must be a number >= 0, got {weight!r}")
        self.writers = {name: float(weight) for name, weight in self.writers.items()}
        if not sum(self.writers.values()) > 0:
            raise ValueError("WorldConfig.writers: the weights must add up to more than 0")

    def _check_range(self, name, low, high=None):
        value = getattr(self, name)
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"WorldConfig.{name} must be {bounds}, got {value!r}")
