"""Typed configuration: one dataclass per stage, a YAML recipe, overrides from the command line.

A recipe is a YAML mapping whose top-level keys are the sections of `Recipe`. Every key is
checked against the dataclass fields: an unknown key or a value of the wrong type is a
`ConfigError` naming the file and the dotted field. The resolved recipe is written to
`runs/<name>/recipe.yaml` and the stage's own section beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chatforge.errors import ConfigError
from chatforge.label.config import LabelConfig
from chatforge.world.config import WorldConfig


@dataclass
class TokenizerConfig:
    # Total size, specials included. Every CJK character of the corpus takes one (~990 in the world), and
    # English needs the rest: at 2304, English words were cut into ~2 pieces each ("poison" into
    # p-o-is-on), and the model could not tell an unseen harmful request from a benign one in English
    # (it refused more benign requests than harmful ones); at 4096 most words are one token.
    vocab_size: int = 4096
    min_frequency: int = 2  # a pair is merged only if it occurs at least this often

    def __post_init__(self):
        if self.vocab_size < 300:
            raise ConfigError("tokenizer.vocab_size must be at least 300 (256 bytes + specials + merges)")


@dataclass
class ModelConfig:
    # The laptop default is sized for its compute: in 5 minutes of 2 CPU cores, ~1.2M parameters seeing
    # 4.1M tokens learn the corpus better than 2.2M seeing 2.6M (held-out loss 0.334 against 0.357, fact
    # completion 100% against 96%), and every later stage runs faster.
    d_model: int = 128  # hidden size
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads (head dim = d_model / n_heads)
    n_kv_heads: int = 4  # key/value heads (grouped-query attention when < n_heads)
    d_ff: int = 384  # MLP inner size (SwiGLU; ~8/3 of d_model)
    max_seq_len: int = 128  # longest context the position encoding is set up for
    rope_theta: float = 10000.0  # RoPE base
    tie_embeddings: bool = True  # share the input embedding and the unembedding

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})")


@dataclass
class PretrainConfig:
    # Optimizer steps. 1000 (4.1M tokens) take 5:24 of steps here, 5:52 with compile, evals and saves: over the
    # 5 minutes this stage was meant to fit. 800 fit (4:39), but the SFT model then knew 78.8% of held-out
    # entities' facts (87.5% after 1000) and told harmful requests from benign ones worse (refusal_auc 0.79, 0.95).
    steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, summed over all processes (the global batch)
    micro_batch_size: int = 32  # sequences per forward pass on one process; accumulation fills the rest
    seq_len: int = 128  # tokens per packed sequence
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not applied to norms and biases)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 disables)
    # source -> weight (normalised); {} means proportional to each source's size. The default
    # favours the fact-dense sources of the built-in world; set your own for your own corpus.
    mixture: dict[str, float] = field(
        default_factory=lambda: {"encyclopedia": 0.35, "forum": 0.25, "news": 0.15, "stories": 0.10, "code": 0.15}
    )
    corpus: str = ""  # folder of <source>/ subfolders of .jsonl/.txt files; empty: the run's data/corpus
    init: str = ""  # start from this local Hugging Face causal-LM directory instead of a fresh model
    eval_every: int = 100  # held-out loss per source every this many steps (and at the end)
    eval_sequences: int = 64  # held-out sequences per source
    save_every: int = 50  # checkpoint every this many steps (and at the end)
    sample_every: int = 150  # print greedy continuations of sample_prompts every this many steps (0: never)
    # Stems the base model should complete, and questions it should NOT answer (it continues them).
    sample_prompts: list[str] = field(
        default_factory=lambda: ["中国最高的山是", "The capital of France is", "What is the capital of France?", "法国的首都是哪里？"]
    )
    seed: int = 1234  # model init and data order
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = True  # torch.compile the model (~10 s once, then ~20% faster on CPU); eager if it fails

    def __post_init__(self):
        for name in ("steps", "batch_size", "micro_batch_size", "seq_len", "eval_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"pretrain.{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"pretrain.batch_size ({self.batch_size}) must be a multiple of "
                f"pretrain.micro_batch_size ({self.micro_batch_size})"
            )
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"pretrain.dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        for source, weight in self.mixture.items():
            if weight < 0:
                raise ConfigError(f"pretrain.mixture.{source} must be >= 0, got {weight}")


@dataclass
class SFTConfig:
    steps: int = 750  # optimizer steps
    batch_size: int = 32  # sequences per step over all processes: dialogues plus replayed pretraining windows
    micro_batch_size: int = 32  # sequences per forward pass on one process
    max_len: int = 128  # a rendered dialogue longer than this is cut (its tail is not trained)
    lr: float = 1.5e-3  # peak learning rate (LoRA usually wants ~10x more)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    replay: float = 0.5  # share of each batch drawn from the pretraining mixture (keeps pretrained knowledge)
    replay_len: int = 64  # tokens per replayed window (dialogues are short: long windows would dominate the compute)
    data: str = ""  # dialogue file or folder (OpenAI messages / ShareGPT / Alpaca); empty: the world's dialogues
    val_data: str = ""  # held-out dialogues; empty: the world's dialogues/val.jsonl, else 2% of `data`
    format: str = "auto"  # auto | messages | sharegpt | alpaca
    skip_invalid: bool = False  # skip (and count) malformed dialogues instead of stopping at the first
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters of this rank, merged into the weights on save
    lora_alpha: float = 16.0  # LoRA scale numerator (scale = alpha / rank)
    lora_dropout: float = 0.0
    eval_every: int = 100  # held-out dialogue loss every this many steps (and at the end)
    save_every: int = 50
    seed: int = 1234
    dtype: str = "auto"
    compile: bool = False  # variable-length batches recompile often; rarely worth it here

    def __post_init__(self):
        for name in ("steps", "batch_size", "micro_batch_size", "max_len", "replay_len", "eval_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sft.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.replay < 1.0:
            raise ConfigError(f"sft.replay must be in [0, 1), got {self.replay}")
        if self.lora_rank < 0:
            raise ConfigError(f"sft.lora_rank must be >= 0, got {self.lora_rank}")
        if self.format not in ("auto", "messages", "sharegpt", "alpaca"):
            raise ConfigError(f"sft.format must be auto, messages, sharegpt or alpaca, got {self.format!r}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"sft.dtype must be auto, fp32 or bf16, got {self.dtype!r}")


@dataclass
class RewardConfig:
    """Sampling K answers (`chatforge sample`), ranking them (`chatforge rank`), the reward model (`chatforge reward`)."""

    k: int = 4  # answers the SFT model samples per ranking prompt (InstructGPT: 4 to 9)
    temperature: float = 1.0  # sampling temperature for the K answers
    top_p: float = 0.95
    max_new_tokens: int = 48  # longest sampled answer
    sample_batch_size: int = 128  # sequences per generation batch
    prompts: str = ""  # prompts to sample for (JSONL: "messages" or "prompt", optional "id", "user_id"); empty: the world's
    annotator_noise: float = 0.05  # std of the noise the simulated annotators add to the gold score (world only)
    num_annotators: int = 8  # simulated annotators; each ranking records which one made it
    rankings: str = ""  # rankings file or folder (docs/rankings.md) to train on; empty: the run's rankings/rankings.jsonl
    skip_invalid: bool = False  # skip (and count) malformed rankings instead of stopping at the first
    heldout_users: float = 0.15  # share of users whose rankings are held out for evaluation (split by user, never by row)
    epochs: float = 2.0  # passes over the training prompts (InstructGPT: 1; 3 is as good as a higher lr, and slower)
    batch_size: int = 8  # prompts per step; all K answers of a prompt go through in the same forward batch
    max_len: int = 128  # tokens per prompt + answer; longer ones lose the start of the conversation, never the answer
    lr: float = 6e-4  # 3e-4 underfits in 2 epochs (held-out 70% against 75%); 1e-3 forgets what the SFT model knew
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 50  # held-out pairwise accuracy every this many steps (and at the end)
    save_every: int = 25
    seed: int = 4321
    dtype: str = "auto"

    def __post_init__(self):
        if not 2 <= self.k <= 16:
            raise ConfigError(f"reward.k must be in [2, 16] (InstructGPT used 4 to 9), got {self.k}")
        for name in ("max_new_tokens", "sample_batch_size", "num_annotators", "batch_size", "max_len",
                     "eval_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"reward.{name} must be positive, got {getattr(self, name)}")
        if self.epochs <= 0:
            raise ConfigError(f"reward.epochs must be positive, got {self.epochs}")
        if not 0.0 < self.heldout_users < 1.0:
            raise ConfigError(f"reward.heldout_users must be in (0, 1), got {self.heldout_users}")
        if self.annotator_noise < 0 or self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError("reward.annotator_noise and reward.temperature must be >= 0, reward.top_p in (0, 1]")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"reward.dtype must be auto, fp32 or bf16, got {self.dtype!r}")


@dataclass
class PPOConfig:
    """RL from the reward model (`chatforge ppo`): PPO with a per-token KL penalty to the SFT model, and PPO-ptx."""

    prompts: str = ""  # prompts to answer (JSONL: "messages" or "prompt", optional "id", "user_id"); empty: the world's
    skip_invalid: bool = False  # skip (and count) empty or over-long prompts instead of stopping at the first
    # what scores the answers: "model", the trained reward model (InstructGPT); "judge", the world's gold judge itself,
    # a perfect reward model: set beside a "model" run, it tells PPO's limits from the reward model's (world prompts only)
    reward: str = "model"
    iterations: int = 24  # rollout + optimisation rounds (the laptop's reward model is over-optimised past ~20)
    batch_size: int = 64  # episodes (one prompt, one sampled answer) per iteration, summed over all processes
    minibatches: int = 2  # optimizer steps per PPO epoch: the batch is cut into this many minibatches
    ppo_epochs: int = 2  # passes over each iteration's episodes
    max_new_tokens: int = 48  # longest answer; one that runs out is scored as cut there, less unfinished_penalty
    # sampling temperature of the rollouts; PPO then trains the policy at this temperature (logits / T, as sampled)
    temperature: float = 1.0
    lr: float = 5e-5  # policy learning rate (constant after warm-up)
    value_lr: float = 2e-4  # value model learning rate
    warmup_iterations: int = 2  # linear warm-up of both learning rates
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    clip_range: float = 0.2  # PPO ratio clip ε
    value_clip_range: float = 0.2  # the value may move at most this far from its rollout estimate per iteration
    gamma: float = 1.0  # discount (1: the reward at the end counts fully for every token)
    lam: float = 0.95  # GAE λ
    kl_coef: float = 0.05  # β of the per-token penalty -β·(log π - log π_SFT); the initial value when adaptive
    adaptive_kl: bool = True  # adjust β towards target_kl (Ziegler et al. 2019)
    target_kl: float = 1.0  # nats per answer (summed over its tokens) that the adaptive controller aims at
    kl_horizon: int = 1000  # episodes over which the controller closes a relative KL error
    unfinished_penalty: float = 1.0  # subtracted from the reward of an answer that never ends
    ptx_coef: float = 1.0  # γ of PPO-ptx: weight of the pretraining loss added to the policy loss (0: plain PPO)
    ptx_batch_size: int = 16  # pretraining windows per minibatch, with ptx_coef > 0
    ptx_len: int = 64  # tokens per pretraining window
    save_every: int = 5  # checkpoint every this many iterations (and at the end)
    seed: int = 2024
    dtype: str = "auto"

    def __post_init__(self):
        for name in ("iterations", "batch_size", "minibatches", "ppo_epochs", "max_new_tokens", "ptx_batch_size",
                     "ptx_len", "save_every", "kl_horizon"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ppo.{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.minibatches:
            raise ConfigError(f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.minibatches ({self.minibatches})")
        for name in ("lr", "value_lr", "clip_range", "value_clip_range", "target_kl", "temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ppo.{name} must be positive, got {getattr(self, name)}")
        for name in ("kl_coef", "ptx_coef", "unfinished_penalty", "warmup_iterations"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError("ppo.gamma and ppo.lam must be in [0, 1]")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"ppo.dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.reward not in ("model", "judge"):
            raise ConfigError(f"ppo.reward must be model or judge, got {self.reward!r}")


@dataclass
class Recipe:
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    label: LabelConfig = field(default_factory=LabelConfig)


# ----------------------------------------------------------------------------- building from plain data


def _check_type(value, hint, where: str):
    """Return `value` converted to `hint`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; whoever wrote it meant a number
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_check_type(k, key_t, where): _check_type(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not match {hint}")
    raise AssertionError(f"unsupported config type {hint} at {where}")


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a (possibly partial) mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {path!r} (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, path)
        else:
            kwargs[key] = _check_type(value, hint, path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # __post_init__ of dataclasses defined outside this module
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, dotted: str, value):
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """'pretrain.lr=1e-3' -> ('pretrain.lr', 0.001); the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    return data


def load_recipe(path: Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Defaults, then the YAML file (if any), then `section.key=value` overrides."""
    data = read_yaml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    try:
        return from_dict(Recipe, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_yaml(data: dict, path: Path):
    from chatforge.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
