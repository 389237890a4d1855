"""Typed configuration: one dataclass per stage, a YAML recipe, overrides from the command line.

A recipe is a YAML mapping whose top-level keys are the sections of `Recipe`. Every key is
checked against the dataclass fields: an unknown key or a value of the wrong type is a
`ConfigError` naming the file and the dotted field. The resolved recipe is written to
`runs/<name>/recipe.yaml` and the stage's own section beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chatforge.errors import ConfigError
from chatforge.io import atomic_write_text
from chatforge.label.config import LabelConfig
from chatforge.llm import ENV_NAME
from chatforge.world.config import WorldConfig


def _positive(section: str, cfg, names: tuple[str, ...]):
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:  # "not >" also refuses nan
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def check_context(field_name: str, length: int, context: int):
    """A length a stage feeds the model must fit its context (its position encoding's reach)."""
    if length > context:
        raise ConfigError(f"{field_name} ({length}) is longer than the model's context ({context} positions)")


def _check_dtype(section: str, dtype: str):
    if dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"{section}.dtype must be auto, fp32 or bf16, got {dtype!r}")


@dataclass
class TokenizerConfig:
    # Total size, specials included. Every CJK character of the corpus takes one (~990 in the world), and
    # English needs the rest: at 2304, English words were cut into ~2 pieces each ("poison" into
    # p-o-is-on), and the model could not tell an unseen harmful request from a benign one in English
    # (it refused more benign requests than harmful ones); at 4096 most words are one token.
    vocab_size: int = 4096
    min_frequency: int = 2  # a pair is merged only if it occurs at least this often

    def __post_init__(self):
        if self.min_frequency < 1:
            raise ConfigError(f"tokenizer.min_frequency must be at least 1, got {self.min_frequency}")
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
    # A local Hugging Face causal LM to start from instead of pretraining one (its own tokenizer and chat template
    # are used, and the fields above are ignored): the run skips the world, the tokenizer and pretraining.
    base: str = ""

    def __post_init__(self):
        _positive("model", self, ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "rope_theta"))
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})")


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay: the optimizer of every trained stage (`<stage>.optim`)."""

    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step (1.0: constant after warm-up)
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay (not applied to norms and biases)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 disables)

    def __post_init__(self):
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "warmup_steps"):
            if not 0 <= getattr(self, name) < float("inf"):  # "not" also refuses nan
                raise ConfigError(f"optim.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"optim.beta1 and optim.beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) instead of training every weight; merged into a plain model on save."""

    rank: int = 0  # 0: train all weights; > 0: LoRA adapters of this rank on every linear layer
    alpha: float = 16.0  # scale numerator (scale = alpha / rank)
    dropout: float = 0.0
    keep_adapter: bool = False  # save the adapter on its own (peft's format, naming the base model) instead of merging

    def __post_init__(self):
        if self.rank < 0 or not self.alpha > 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.rank must be >= 0, lora.alpha > 0 and lora.dropout in [0, 1), "
                              f"got {self.rank}, {self.alpha}, {self.dropout}")


@dataclass
class PretrainConfig:
    # Optimizer steps. 1000 (4.1M tokens) take 5:24 of steps here, 5:52 with compile, evals and saves: over the
    # 5 minutes this stage was meant to fit. 800 fit (4:39), but the SFT model then knew 78.8% of held-out
    # entities' facts (87.5% after 1000) and told harmful requests from benign ones worse (refusal_auc 0.79, 0.95).
    steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, summed over all processes (the global batch)
    micro_batch_size: int = 32  # sequences per forward pass on one process; accumulation fills the rest
    seq_len: int = 128  # tokens per packed sequence
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=30, weight_decay=0.1))
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
        _positive("pretrain", self, ("steps", "batch_size", "micro_batch_size", "seq_len", "eval_every", "save_every"))
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"pretrain.batch_size ({self.batch_size}) must be a multiple of "
                f"pretrain.micro_batch_size ({self.micro_batch_size})"
            )
        _check_dtype("pretrain", self.dtype)
        for source, weight in self.mixture.items():
            if not 0 <= weight < float("inf"):
                raise ConfigError(f"pretrain.mixture.{source} must be a finite number >= 0, got {weight}")


@dataclass
class SFTConfig:
    steps: int = 750  # optimizer steps
    batch_size: int = 32  # sequences per step over all processes: dialogues plus replayed pretraining windows
    micro_batch_size: int = 32  # sequences per forward pass on one process
    max_len: int = 128  # a rendered dialogue longer than this is cut (its tail is not trained)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.5e-3, warmup_steps=20))  # LoRA wants ~10x the lr
    replay: float = 0.5  # share of each batch drawn from the pretraining mixture (keeps pretrained knowledge)
    replay_len: int = 64  # tokens per replayed window (dialogues are short: long windows would dominate the compute)
    data: str = ""  # dialogues, a file or folder in any shape of docs/data-formats.md; empty: the world's dialogues
    val_data: str = ""  # held-out dialogues; empty: the world's dialogues/val.jsonl, else 2% of `data`
    format: str = "auto"  # auto (per record, from its keys) | messages | sharegpt | alpaca | prompt_completion
    skip_invalid: bool = False  # skip (and count) malformed dialogues instead of stopping at the first
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval_every: int = 100  # held-out dialogue loss every this many steps (and at the end)
    save_every: int = 50
    seed: int = 1234
    dtype: str = "auto"

    def __post_init__(self):
        _positive("sft", self, ("steps", "batch_size", "micro_batch_size", "max_len", "replay_len", "eval_every",
                                "save_every"))
        if not 0.0 <= self.replay < 1.0:
            raise ConfigError(f"sft.replay must be in [0, 1), got {self.replay}")
        if self.format not in ("auto", "messages", "sharegpt", "alpaca", "prompt_completion"):
            raise ConfigError(f"sft.format must be auto, messages, sharegpt, alpaca or prompt_completion, "
                              f"got {self.format!r}")
        _check_dtype("sft", self.dtype)


@dataclass
class SampleConfig:
    """`chatforge sample`: the SFT model answers each ranking prompt K times."""

    k: int = 4  # answers sampled per prompt (InstructGPT: 4 to 9)
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 48  # longest sampled answer
    batch_size: int = 128  # sequences per generation batch
    prompts: str = ""  # prompts to sample for (JSONL: "messages" or "prompt", optional "id", "user_id"); empty: the world's
    seed: int = 4321

    def __post_init__(self):
        if not 2 <= self.k <= 16:
            raise ConfigError(f"sample.k must be in [2, 16] (InstructGPT used 4 to 9), got {self.k}")
        _positive("sample", self, ("max_new_tokens", "batch_size"))
        if not (self.temperature >= 0 and 0.0 < self.top_p <= 1.0):
            raise ConfigError("sample.temperature must be >= 0 and sample.top_p in (0, 1]")


@dataclass
class RankConfig:
    """`chatforge rank`: on the built-in world, simulated annotators (the gold judge with noise) rank the answers."""

    annotator_noise: float = 0.05  # std of the noise each annotator adds to the gold score they rank by
    # std of the noise on the judge's components they rate 1-7 by (a point of the scale is a third of a component):
    # people's ratings disagree more than their orders do
    rating_noise: float = 0.15
    num_annotators: int = 8  # each ranking records which one made it
    seed: int = 4321

    def __post_init__(self):
        if not (self.annotator_noise >= 0 and self.rating_noise >= 0) or self.num_annotators <= 0:
            raise ConfigError("rank.annotator_noise and rank.rating_noise must be >= 0, rank.num_annotators positive")


@dataclass
class RewardConfig:
    """`chatforge reward`: the reward model, trained on K-way rankings."""

    rankings: str = ""  # rankings file or folder (docs/rankings.md) to train on; empty: the run's rankings/rankings.jsonl
    skip_invalid: bool = False  # skip (and count) malformed rankings instead of stopping at the first
    heldout_users: float = 0.15  # share of users whose rankings are held out for evaluation (split by user, never by row)
    epochs: float = 2.0  # passes over the training prompts (InstructGPT: 1; 3 is as good as a higher lr, and slower)
    batch_size: int = 8  # prompts per step; all K answers of a prompt go through in the same forward batch
    max_len: int = 128  # tokens per prompt + answer; longer ones lose the start of the conversation, never the answer
    # lr 3e-4 underfits in 2 epochs (held-out 70% against 75%); 1e-3 forgets what the SFT model knew
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=6e-4, warmup_steps=10))
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval_every: int = 50  # held-out pairwise accuracy every this many steps (and at the end)
    save_every: int = 25
    # the reward's zero is the mean score of the training answers, estimated on at most this many prompts (evenly
    # spaced): a forward pass over every answer of a large preference set would cost a third of an epoch
    bias_prompts: int = 2048
    seed: int = 4321
    dtype: str = "auto"

    def __post_init__(self):
        _positive("reward", self, ("batch_size", "max_len", "eval_every", "save_every", "epochs", "bias_prompts"))
        if not 0.0 < self.heldout_users < 1.0:
            raise ConfigError(f"reward.heldout_users must be in (0, 1), got {self.heldout_users}")
        _check_dtype("reward", self.dtype)


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
    # the policy's optimizer; its steps are iterations (warm-up over 2, then constant: min_lr_ratio 1)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=2, min_lr_ratio=1.0))
    value_lr: float = 2e-4  # the value model's peak learning rate; the rest of its optimizer is `optim`'s
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
    # episodes per forward pass, in scoring the rollout and in each optimizer step (gradients accumulate over a
    # minibatch's micro-batches, each weighted by its share of the answer tokens); 0: a whole batch at once. Smaller
    # passes hold less memory at a time: on a CPU, glibc keeps what a big pass freed (docs/findings.md)
    micro_batch_size: int = 0
    # on the built-in world, also PPO against the gold judge and PPO without ptx, so the report can say what the
    # reward model and PPO-ptx each add (two more PPO runs)
    ablations: bool = True
    # LoRA: the policy and the value model become two adapters on one frozen copy of the SFT model, which, with the
    # adapters off, is also the reference: one copy of the weights instead of three
    lora: LoraConfig = field(default_factory=LoraConfig)
    save_every: int = 5  # checkpoint every this many iterations (and at the end)
    seed: int = 2024
    dtype: str = "auto"

    def __post_init__(self):
        _positive("ppo", self, ("iterations", "batch_size", "minibatches", "ppo_epochs", "max_new_tokens",
                                "ptx_batch_size", "ptx_len", "save_every", "kl_horizon", "value_lr", "clip_range",
                                "value_clip_range", "target_kl", "temperature"))
        if self.batch_size % self.minibatches:
            raise ConfigError(f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.minibatches ({self.minibatches})")
        for name in ("kl_coef", "ptx_coef", "unfinished_penalty", "micro_batch_size"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError("ppo.gamma and ppo.lam must be in [0, 1]")
        _check_dtype("ppo", self.dtype)
        if self.reward not in ("model", "judge"):
            raise ConfigError(f"ppo.reward must be model or judge, got {self.reward!r}")


@dataclass
class LLMJudgeConfig:
    """The `judge` section of a recipe. With `endpoint` empty (the default) no LLM judge is used."""

    endpoint: str = ""  # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1; "" = unused
    model: str = ""  # the model name to send, as the endpoint knows it
    api_key_env: str = ""  # NAME of the environment variable holding the API key ("" sends none); never the key
    max_concurrency: int = 4  # requests in flight at once
    requests_per_second: float = 2.0  # over all threads together; 0 = no limit (e.g. your own local server)
    timeout_s: float = 120.0  # per request; a timed-out request is retried with backoff
    max_tokens: int = 512  # room for a few sentences of reasoning and the verdict line
    cache: str = "llm_judge.jsonl"  # file name of the reply cache, kept in the evaluation's directory

    def __post_init__(self):
        if self.endpoint and not re.match(r"https?://", self.endpoint):
            raise ConfigError(f"judge.endpoint must start with http:// or https://, got {self.endpoint!r}")
        if self.endpoint and not self.model:
            raise ConfigError("judge.model must name the model to ask when judge.endpoint is set")
        if self.api_key_env and not ENV_NAME.fullmatch(self.api_key_env):
            # Not echoed: a value that is no variable name is most likely the key itself.
            raise ConfigError("judge.api_key_env must be the NAME of an environment variable that holds the key "
                              "(e.g. OPENAI_API_KEY), not the key itself")
        for name in ("max_concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"judge.{name} must be at least 1, got {getattr(self, name)}")
        if self.requests_per_second < 0:
            raise ConfigError(f"judge.requests_per_second must be >= 0 (0: no limit), got {self.requests_per_second}")
        if self.timeout_s <= 0:
            raise ConfigError(f"judge.timeout_s must be positive, got {self.timeout_s}")
        if not self.cache or "/" in self.cache or "\\" in self.cache:
            raise ConfigError(f"judge.cache must be a file name (no folder), got {self.cache!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)


@dataclass
class ComputeConfig:
    """Where the models run, for every stage."""

    device: str = "auto"  # auto (CUDA when there is one, else the CPU) | cpu | cuda
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more compute
    # several processes (torchrun): ddp, every process holds the whole model; fsdp, FSDP2 shards parameters,
    # gradients and optimizer states over the processes, for models whose training state does not fit one device
    parallel: str = "ddp"

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"compute.device must be auto, cpu or cuda, got {self.device!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"compute.parallel must be ddp or fsdp, got {self.parallel!r}")


@dataclass
class Recipe:
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    judge: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)  # an LLM judge for the evaluation; unused if empty

    def __post_init__(self):
        # A model built from this recipe has model.max_seq_len positions, and pretraining fills its windows: a longer
        # window raises no error, it trains positions the encoding was not set up for. (Your own model's context is
        # checked when its stage reads it.)
        if not self.model.base and not self.pretrain.init:
            check_context("pretrain.seq_len", self.pretrain.seq_len, self.model.max_seq_len)


# ----------------------------------------------------------------------------- building from plain data


def _check_type(value, hint, where: str):
    """Return `value` converted to `hint`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    if hint is float:
        return _number(value, where)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {_show(value)}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {_show(value)}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {_show(value)}")
        return {_check_type(k, key_t, where): _check_type(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {_show(value)} does not match {hint}")
    raise AssertionError(f"unsupported config type {hint} at {where}")


def _number(value, where: str) -> float:
    """A float field's value: a finite number. No field means anything by inf or nan, and either passes a check
    such as "> 0" only to turn a loss, a step count or a sampling distribution into nan later."""
    if isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; whoever wrote it meant a number
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected float, got {type(value).__name__} {_show(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    return float(value)


def _show(value) -> str:
    """repr() cut to 60 characters: an error message stays one readable line, whatever was given."""
    try:
        text = repr(value)
    except RecursionError:  # a YAML alias that contains itself
        return type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


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
            # a section given in part keeps the rest of its own defaults: `pretrain.optim: {lr: 1e-3}` keeps
            # pretraining's warm-up and weight decay, not those of a bare OptimConfig
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
            kwargs[key] = from_dict(hint, {**_defaults(cls, key), **(value or {})}, path)
        else:
            kwargs[key] = _check_type(value, hint, path)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # a section used in several places (optim, lora) names itself by its own key: say whose it is
        parent, _, leaf = where.rpartition(".")
        message = str(e)
        if parent and message.startswith(leaf + "."):
            message = f"{parent}.{message}"
        raise ConfigError(message) from None
    except ValueError as e:  # __post_init__ of dataclasses defined outside this module
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _defaults(cls, name: str) -> dict:
    """The default of dataclass field `name` of `cls`, as a plain mapping."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return dataclasses.asdict(default)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, dotted: str, value):
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:  # absent, or an empty section in the file ("pretrain:")
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])} is a value, not a section")
    node[keys[-1]] = value


def shown(text: str) -> str:
    """A --set value as an error shows it: on one line, its control characters (a newline, a NUL) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def parse_override(text: str) -> tuple[str, object]:
    """'pretrain.lr=1e-3' -> ('pretrain.lr', 0.001); the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"--set {shown(text)}: must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError, ValueError):  # ValueError: an integer of more than 4300 digits
        value = raw
    return key.strip(), value


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: silently keeping the last
    would train with a value the reader of the file did not see."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a name, not a list or mapping",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _int(loader, node):
    """YAML's integers, except that one too long to read (Python's 4300 digits) is an error with its line."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(node.value)} digits, too long to read",
                                                node.start_mark) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _int)


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a recipe file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None


def read_yaml(path: Path) -> dict:
    """The mapping a recipe file holds, or a ConfigError naming the file (and the line, where YAML knows it)."""
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_StrictLoader) or {}
    except (yaml.YAMLError, RecursionError, ValueError) as e:  # ValueError: an integer of more than 4300 digits
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0][:200]
        raise ConfigError(f"{path}{line}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    return data


def key_lines(path: Path) -> dict[str, int]:
    """The line (from 1) of every key of a recipe file, by its dotted name ("pretrain.optim.lr"); {} for a file
    that cannot be read."""
    try:
        root = yaml.compose(_read_text(path), Loader=yaml.SafeLoader)
    except (ConfigError, yaml.YAMLError, RecursionError, ValueError):
        return {}
    lines, todo = {}, [(root, "")]
    while todo:
        node, prefix = todo.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines.setdefault(prefix + key.value, key.start_mark.line + 1)
                    todo.append((value, f"{prefix}{key.value}."))
    return lines


_DOTTED = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)+")


def _fields_in(message: str) -> list[str]:
    """The recipe fields a message names ("model.n_heads", "unknown key 'pretrain.stepz'", "world: ..."), in order."""
    sections = {f.name for f in dataclasses.fields(Recipe)}
    found = [m.group(0) for m in _DOTTED.finditer(message)] + re.findall(r"'([\w.-]+)'", message)
    found += [message.split(":", 1)[0]] if ":" in message else []
    return [f for f in found if f.split(".")[0] in sections]


def _line_of(message: str, lines: dict[str, int]) -> int | None:
    """The line of the first field the message names that the file sets, else of its nearest section."""
    fields = _fields_in(message) + re.findall(r"'([\w.-]+)'", message)  # an unknown key is quoted
    for field_name in fields:
        if field_name in lines:
            return lines[field_name]
    for field_name in fields:
        parts = field_name.split(".")
        for n in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:n]) in lines:
                return lines[".".join(parts[:n])]
    return None


def in_file(path: Path, message: str) -> str:
    """"FILE:LINE" of the setting an error message is about (just "FILE" when the file does not set it)."""
    line = _line_of(message, key_lines(path))
    return f"{path}:{line}" if line else str(path)


def origin(message: str, path: Path | None, given: list[tuple[str, str]]) -> str | None:
    """Where the recipe value that an error message starts with came from: the command-line setting that gave it
    (`given`: (how it was written, its dotted key), the last one winning), else the recipe file's line; None when the
    message does not start with a field of the recipe, or the value is a default."""
    fields = _fields_in(message)
    if not fields or not message.startswith(fields[0]):
        return None
    for label, key in reversed(given):
        if key == fields[0] or fields[0].startswith(key + ".") or key.startswith(fields[0] + "."):
            return label
    return in_file(path, message) if path else None


def load_recipe(path: Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Defaults, then the YAML file (if any), then `section.key=value` overrides. An error names where the bad
    value came from: the file and line, or the override."""
    data = read_yaml(path) if path else {}
    try:
        from_dict(Recipe, data)
    except ConfigError as e:
        raise ConfigError(f"{in_file(path, str(e))}: {e}") from None
    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, key, value in parsed:
        try:
            _set_dotted(data, key, value)
        except ConfigError as e:
            raise ConfigError(f"--set {shown(text)}: {e}") from None
    try:
        return from_dict(Recipe, data)
    except ConfigError as e:
        raise ConfigError(f"{_culprit(path, parsed)}: {e}") from None


def _culprit(path: Path | None, parsed: list[tuple[str, str, object]]) -> str:
    """The override without which the rest would be fine, else all of them: they are wrong only together."""
    for text, _, _ in parsed:
        data = read_yaml(path) if path else {}
        try:
            for other, key, value in parsed:
                if other != text:
                    _set_dotted(data, key, value)
            from_dict(Recipe, data)
            return f"--set {shown(text)}"
        except ConfigError:
            continue
    return f"--set {shown(parsed[0][0])}" if len(parsed) == 1 else "the --set values together"


def save_yaml(data: dict, path: Path):
    atomic_write_text(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
