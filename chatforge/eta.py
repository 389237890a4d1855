"""How long each stage of a recipe should take on this machine: a rough cost model, corrected as the run goes.

Each stage's work is counted in model FLOPs (2 per matmul parameter per token for a forward pass, 6 to
train) and divided by what such work reaches here: the fp32 matmul ceiling, measured when the run starts,
times the share of it that the laptop recipe's stages reached on 2 CPU cores. Loading, compiling and
judging do not grow with the FLOPs: they are a few fixed seconds per stage. Once stages have run, the
estimate of the rest is scaled by how far their measured times were from their estimates, so the
expected total settles as the run goes (on a GPU, where sampling is slow for its FLOPs, it starts far off
and settles after the first stages).
"""

from __future__ import annotations

from pathlib import Path

from chatforge.config import Recipe
from chatforge.io import read_json

# Shares of the fp32 matmul ceiling, fitted to a fresh clone's `make demo` of the laptop recipe on 2 CPU
# cores (ceiling 198 GFLOP/s when the run started; pretraining took 5:52, SFT 2:25, sampling 0:50, the
# reward model 0:49: shares 0.58, 0.63, 0.13, 0.69). The first fit, 0.42 and 0.065, was of the smaller
# 2304-token model, whose small unembedding ran less of its work in large matmuls; it put the whole run
# at 16:50 against 11:24.
TRAIN_SHARE = 0.6  # a training step of the laptop model: large batched matmuls
SAMPLE_SHARE = 0.12  # token-by-token sampling with a KV cache: small matmuls, Python per token
COMPILE = 26  # seconds torch.compile takes once, where a stage compiles


def forward_flops_per_token(recipe: Recipe, context: int) -> float:
    """2 FLOPs per matmul parameter (attention projections, MLP, unembedding) plus the attention scores and
    values over `context` tokens, for one token's forward pass: a third of `model.train_flops_per_token`,
    counted before any model is loaded, from the recipe or from your own model's config.json."""
    d, layers, heads, kv_heads, d_ff, vocab = model_shape(recipe)
    head = d // heads
    per_layer = 2 * d * d + 2 * d * head * kv_heads + 3 * d * d_ff
    return 2 * (layers * per_layer + d * vocab) + 4 * layers * d * context


def model_shape(recipe: Recipe) -> tuple[int, int, int, int, int, int]:
    """(hidden size, layers, heads, key/value heads, MLP size, vocabulary) of the model the run trains."""
    m = recipe.model
    config = read_json(Path(m.base) / "config.json") if m.base else None
    if not config:
        return m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, recipe.tokenizer.vocab_size
    heads = config.get("num_attention_heads", 1)
    return (config.get("hidden_size", m.d_model), config.get("num_hidden_layers", m.n_layers), heads,
            config.get("num_key_value_heads", heads), config.get("intermediate_size", m.d_ff),
            config.get("vocab_size", recipe.tokenizer.vocab_size))


# Each stage's work as (training FLOPs, sampling FLOPs) on the built-in world; the registry names one per stage.


def no_flops(recipe: Recipe) -> tuple[float, float]:
    return 0.0, 0.0


def pretrain_flops(recipe: Recipe) -> tuple[float, float]:
    p = recipe.pretrain
    return 3 * forward_flops_per_token(recipe, p.seq_len) * p.steps * p.batch_size * p.seq_len, 0.0


def sft_flops(recipe: Recipe) -> tuple[float, float]:
    s = recipe.sft
    # a dialogue row is padded to the longest of its batch, ~3/4 of max_len; replay rows are full windows
    tokens = s.batch_size * ((1 - s.replay) * s.max_len * 3 / 4 + s.replay * s.replay_len)
    return 3 * forward_flops_per_token(recipe, s.max_len) * s.steps * tokens, 0.0


def sample_flops(recipe: Recipe) -> tuple[float, float]:
    s = recipe.sample
    return 0.0, forward_flops_per_token(recipe, s.max_new_tokens) * recipe.world.num_rank_prompts * s.k * s.max_new_tokens


def reward_flops(recipe: Recipe) -> tuple[float, float]:
    w, r = recipe.world, recipe.reward
    # about half the prompts keep K distinct answers (the model repeats itself); written comparisons have 2
    answers = r.epochs * (1 - r.heldout_users) * (w.num_rank_prompts * recipe.sample.k / 2 + w.num_safety_comparisons * 2)
    return 3 * forward_flops_per_token(recipe, r.max_len) * answers * r.max_len / 2, 0.0


def ppo_flops(recipe: Recipe) -> tuple[float, float]:
    o = recipe.ppo
    length = 2 * o.max_new_tokens  # prompt and answer
    fwd = forward_flops_per_token(recipe, length)
    per_episode = 3 * fwd * length * (1 + 2 * o.ppo_epochs)  # 3 no-grad forwards, 2 models trained
    ptx = 3 * forward_flops_per_token(recipe, o.ptx_len) * o.ppo_epochs * o.minibatches * o.ptx_batch_size * o.ptx_len
    train = o.iterations * (o.batch_size * per_episode + ptx * (o.ptx_coef > 0))
    return train, o.iterations * o.batch_size * fwd * o.max_new_tokens


def eval_flops(recipe: Recipe) -> tuple[float, float]:
    """Base, SFT and PPO answer every eval prompt; PPO samples once more for its KL to SFT."""
    return 0.0, 4 * forward_flops_per_token(recipe, 48) * recipe.world.num_eval_prompts * 48


def expected_seconds(stages, recipe: Recipe, ceiling: float) -> dict[str, float]:
    """Stage name -> expected seconds of each registry entry (`chatforge.stages.Stage`) on a machine whose fp32
    matmul ceiling is `ceiling` FLOP/s."""
    out = {}
    for stage in stages:
        train, sample = stage.flops(recipe)
        compiled = stage.compiles(recipe) if stage.compiles else False
        out[stage.name] = (stage.fixed_seconds + COMPILE * compiled + train / (TRAIN_SHARE * ceiling)
                           + sample / (SAMPLE_SHARE * ceiling))
    return out


class StageClock:
    """The run's progress line: which stage, the time so far, and the expected time of this stage and of the
    whole run, the estimates of what is left scaled by how the finished stages compared with theirs."""

    def __init__(self, expected: dict[str, float], skip: set[str] = frozenset()):
        self.expected = {s: (0.0 if s in skip else t) for s, t in expected.items()}
        self.done: dict[str, float] = {}  # stage -> seconds it took
        self.current: str | None = None
        self.started = 0.0

    def scale(self) -> float:
        """Measured over expected time of the finished stages that did real work (at least 10 s expected)."""
        pairs = [(t, self.expected[s]) for s, t in self.done.items() if self.expected[s] >= 10]
        return sum(t for t, _ in pairs) / sum(e for _, e in pairs) if pairs else 1.0

    def start(self, stage: str, now: float, run_started: float) -> str:
        """Mark `stage` begun at `now` (the one before it ended then); return its progress line."""
        if self.current is not None:
            self.done[self.current] = now - self.started
        self.current, self.started = stage, now
        scale = self.scale()
        left = sum(t for s, t in self.expected.items() if s not in self.done) * scale
        this = self.expected[stage] * scale
        so_far = now - run_started
        return f"run time so far {clock(so_far)}; expected: {stage} ~{clock(this)}, the whole run ~{clock(so_far + left)}"


def clock(seconds: float) -> str:
    """m:ss"""
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
