"""RL from human feedback: PPO against the frozen reward model -> runs/<name>/ppo/.

Four models, all the size of the SFT model:
  policy     starts as the SFT model and is trained          (LlamaForCausalLM)
  value      starts as the reward model and is trained       (its scalar head read at every token)
  reference  the SFT model, frozen: the KL penalty's anchor
  reward     the reward model, frozen: scores a whole answer

The reward of an answer y to a prompt x, spread over its tokens t (InstructGPT eq. 2):

    r_t = -β · (log π(y_t | x, y_<t) - log π_SFT(y_t | x, y_<t))   + [t is the last token] · RM(x, y)

PPO-ptx adds γ · (next-token loss on the pretraining mixture) to the policy's loss, so the
policy keeps the language model it was (the "alignment tax" is measured with and without).

The loop, per iteration:
  the iteration's prompts (a permutation per epoch) -> each process its share
  -> rollout: sample answers with the KV-cached generator; one no-grad forward each of policy
     (old log-probs), reference, value; the RM scores the decoded answers (and, on the world,
     the gold judge scores the same answers, for the over-optimisation curve)
  -> per-token rewards, GAE advantages (whitened), returns
  -> ppo_epochs x minibatches: clipped policy loss (+ γ·ptx) and clipped value loss, AdamW each
  -> adaptive KL controller -> log -> now and then an atomic checkpoint.

The pure pieces (masked statistics, GAE, the losses, the KL estimators, the controller) come
first, each a small function with the shapes of its tensors in its docstring.
"""

from __future__ import annotations

import io
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from chatforge import dist
from chatforge.config import PPOConfig, Recipe, check_context
from chatforge.data.corpus import corpus_dir, token_cache
from chatforge.data.mixture import MixtureSampler, load_mixture
from chatforge.data.prompts import encode_prompts, own_prompts, prompts_file, read_prompts, split_prompts
from chatforge.errors import DataError, UserError
from chatforge.generate import generate
from chatforge.io import atomic_write_bytes
from chatforge.model import (
    CAUSAL_LM, load_causal_lm, load_sequence_classifier, memory_savers, model_config, save_pretrained, weights_dtype,
    with_lora,
)
from chatforge.paths import has_corpus, has_world, world_data
from chatforge.scoring import (
    TokenValues, answer_ids, answer_logits, answer_values, entropy_of, kl_k1, kl_k3, layout, load_reward_model,
    next_token_loss, rewards_of_seqs, token_logprobs,
)
from chatforge.tokenizer import answer_stop_ids, load_tokenizer
from chatforge.train.loop import EpochOrder, StageRun, autocast, clip_and_step, make_optimizer, read_metrics, scheduled_lr
from chatforge.world.judge import Judge

# ----------------------------------------------------------------------------- the pure pieces
# B: episodes, T: answer tokens (right-padded), V: vocabulary. mask_BT is 1.0 on real answer tokens.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (any shape, same for both); a scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x over the positions where mask is 1; a scalar (0 with fewer than 2 positions)."""
    n = mask.sum()
    centred = (x - masked_mean(x, mask)) * mask
    return (centred**2).sum() / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """x normalised to unit variance over the masked positions, and to mean 0 if shift_mean; 0 outside the mask."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def token_rewards(score_B: torch.Tensor, kl_BT: torch.Tensor, mask_BT: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards [B, T]: -β·kl at every answer token, plus the answer's score at its last token."""
    rewards = -beta * kl_BT * mask_BT
    last = (mask_BT.sum(1).long() - 1).clamp(min=0)  # answers are right-padded: the last real token
    return rewards.scatter_add(1, last[:, None], score_B[:, None].to(rewards.dtype))


def gae(rewards_BT: torch.Tensor, values_BT: torch.Tensor, mask_BT: torch.Tensor, gamma: float, lam: float):
    """(advantages [B, T], returns [B, T]) by generalised advantage estimation over right-padded answers.

    δ_t = r_t + γ·V_{t+1} - V_t (V after the last token is 0), A_t = δ_t + γλ·A_{t+1}, returns = A + V.
    Padding has reward and value 0, so it adds nothing to the real tokens' sums."""
    rewards, values = rewards_BT * mask_BT, values_BT * mask_BT
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = advantages * mask_BT
    return advantages, (advantages + values) * mask_BT


def policy_loss(logp_BT, old_logp_BT, advantages_BT, mask_BT, clip: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (PPO): mean over tokens of max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)), ρ = π / π_old.

    Returns (loss, stats) with the fraction of tokens where the clip was active and the approximate
    KL(π_old || π) of the update (½·mean (log ρ)², the k2 estimator)."""
    log_ratio = logp_BT - old_logp_BT
    ratio = log_ratio.exp()
    unclipped = -advantages_BT * ratio
    clipped = -advantages_BT * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask_BT)
    with torch.no_grad():
        stats = {"clipfrac": float(masked_mean((clipped > unclipped).float(), mask_BT)),
                 "approx_kl": float(masked_mean(0.5 * log_ratio**2, mask_BT))}
    return loss, stats


def value_loss(values_BT, old_values_BT, returns_BT, mask_BT, clip: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: ½·mean over tokens of max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±ε)."""
    clipped = old_values_BT + (values_BT - old_values_BT).clamp(-clip, clip)
    losses = torch.maximum((values_BT - returns_BT) ** 2, (clipped - returns_BT) ** 2)
    loss = 0.5 * masked_mean(losses, mask_BT)
    with torch.no_grad():
        stats = {"value_clipfrac": float(masked_mean(((clipped - returns_BT) ** 2 > (values_BT - returns_BT) ** 2).float(), mask_BT))}
    return loss, stats


def explained_variance(values_BT, returns_BT, mask_BT) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 is a perfect value model, 0 no better than a constant."""
    var = masked_var(returns_BT, mask_BT)
    return float(1 - masked_var(returns_BT - values_BT, mask_BT) / var) if var > 0 else float("nan")


def adaptive_kl(beta: float, kl: float, target: float, horizon: int, episodes: int) -> float:
    """The next β (Ziegler et al. 2019): the relative error of the measured KL (nats per answer) against the
    target, clipped to ±20%, moves β by error · episodes / horizon; KL above target raises β."""
    error = max(-0.2, min(0.2, kl / target - 1))
    return beta * (1 + error * episodes / horizon)


# ----------------------------------------------------------------------------- models


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and (a.chat_template or "") == (b.chat_template or "")


@dataclass
class Models:
    policy: torch.nn.Module  # trained; starts as the SFT model
    value: torch.nn.Module  # trained; V(x, y_<t) [B, L]
    reference: torch.nn.Module  # the SFT model, frozen
    reward: torch.nn.Module  # the reward model, frozen
    bias: float  # added to the reward model's score
    tokenizer: object
    trained: torch.nn.ModuleDict  # what a checkpoint holds: each trained weight once
    policy_params: list  # what each optimizer steps
    value_params: list


def load_models(run_dir: Path, recipe: Recipe, d: dist.Dist) -> Models:
    """The four models of PPO: full copies, or with LoRA the policy and the value as two adapters on one frozen copy
    of the SFT model (which, with the adapters off, is the reference). Refuses a reward model whose tokenizer is not
    the policy's (its scores would be of other token ids)."""
    cfg, sft_dir, rm_dir = recipe.ppo, Path(run_dir) / "sft", Path(run_dir) / "reward"
    if not (rm_dir / "config.json").exists():
        raise UserError(f"{rm_dir}: no reward model (run `chatforge reward` first)")
    tokenizer = load_tokenizer(sft_dir)
    reward_model, rm_tokenizer, bias = load_reward_model(rm_dir, d.device, weights_dtype(d.device, cfg.dtype))
    if not _same_tokenizer(tokenizer, rm_tokenizer):
        raise UserError(f"{rm_dir}: the reward model's tokenizer differs from the policy's ({sft_dir}); a reward model "
                        f"must be trained from the same SFT model (same vocabulary and chat template)")
    reward_model = reward_model.eval().requires_grad_(False)
    if cfg.lora.rank:
        return _shared_models(sft_dir, recipe, d, reward_model, bias, tokenizer)
    policy = memory_savers(load_causal_lm(sft_dir, d.device), recipe.compute.grad_checkpointing)
    reference = load_causal_lm(sft_dir, d.device, weights_dtype(d.device, cfg.dtype)).eval().requires_grad_(False)
    value = TokenValues(load_sequence_classifier(rm_dir, d.device))
    return Models(policy, value, reference, reward_model, bias, tokenizer, torch.nn.ModuleDict(
        {"policy": policy, "value": value}), list(policy.parameters()), list(value.parameters()))


def _shared_models(sft_dir: Path, recipe: Recipe, d: dist.Dist, reward_model, bias: float, tokenizer) -> Models:
    """Policy and value as LoRA adapters ("default" and "value") on one frozen SFT model, the value read by a head
    of its own (zero at first: no advantage is known before any return is seen). The value adapter does not start
    from the reward model as the full value model does: its weights are the reward model's only when it was trained
    on this very base, and a head trained on other hidden states would start it off worse than zero."""
    if d.world_size > 1:
        raise UserError("ppo.lora with several processes is not supported: the two adapters share one model, which "
                        "DDP cannot wrap for each; run PPO with LoRA in one process, or set ppo.lora.rank=0")
    shared = with_lora(load_causal_lm(sft_dir, d.device, weights_dtype(d.device, recipe.ppo.dtype)), recipe.ppo.lora,
                       CAUSAL_LM)
    shared.add_adapter("value", shared.peft_config["default"])
    shared.set_requires_grad(["default", "value"], True)
    memory_savers(shared, recipe.compute.grad_checkpointing)
    head = torch.nn.Linear(shared.config.hidden_size, 1, bias=False, device=d.device)
    torch.nn.init.zeros_(head.weight)
    adapter = lambda name: [p for n, p in shared.named_parameters() if p.requires_grad and f".{name}." in n]  # noqa: E731
    return Models(AdapterView(shared, "default"), ValueView(shared, head), AdapterView(shared, None), reward_model, bias,
                  tokenizer, torch.nn.ModuleDict({"policy": shared, "value": head}), adapter("default"),
                  adapter("value") + list(head.parameters()))


@contextmanager
def active(shared, name: str | None):
    """Run `shared` (a peft model) with adapter `name`, or with every adapter off (None: the frozen base), keeping
    both adapters trainable: each backward reaches only the adapter its forward used."""
    if name is None:
        with shared.disable_adapter():
            yield
        return
    shared.set_adapter(name)
    shared.set_requires_grad(["default", "value"], True)
    yield


def _train_shared(view: torch.nn.Module, mode: bool) -> torch.nn.Module:
    """A view's mode is its shared model's too, which is not a child module (train() would not reach it): activation
    checkpointing and LoRA dropout act only in training mode."""
    torch.nn.Module.train(view, mode)
    view._shared[0].train(mode)
    return view


class AdapterView(torch.nn.Module):
    """One adapter of a shared peft model (None: none, the frozen base) seen as a causal LM of its own. It holds the
    shared model out of its own parameters, so that optimizers and checkpoints see each weight once."""

    def __init__(self, shared, name: str | None):
        super().__init__()
        self._shared = [shared]
        self.name = name

    @property
    def config(self):
        return self._shared[0].config

    @property
    def generation_config(self):
        return self._shared[0].get_base_model().generation_config

    def get_base_model(self):
        return self._shared[0].get_base_model()

    def parameters(self, recurse: bool = True):
        return self._shared[0].parameters(recurse)

    def train(self, mode: bool = True):
        return _train_shared(self, mode)

    def forward(self, **kwargs):
        with active(self._shared[0], self.name):
            return self._shared[0](**kwargs)


class ValueView(torch.nn.Module):
    """The value model of shared-adapter PPO: the "value" adapter's hidden states, read by a linear head: [B, L]."""

    def __init__(self, shared, head: torch.nn.Linear):
        super().__init__()
        self._shared = [shared]
        self.head = head

    def train(self, mode: bool = True):
        return _train_shared(self, mode)

    def forward(self, input_ids, attention_mask, position_ids):
        base = self._shared[0].get_base_model()
        with active(self._shared[0], "value"):
            hidden = getattr(base, base.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                         position_ids=position_ids).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype))[..., 0].float()


# ----------------------------------------------------------------------------- prompts


def load_ppo_prompts(run_dir: Path, recipe: Recipe) -> tuple[list[dict], dict]:
    """Prompts with their rendered ids ("ids"), and a report of what was read and skipped: the world's PPO prompts, or
    on your own data those of your users not held out for the evaluation. A prompt that leaves no room in the SFT
    model's context for an answer of ppo.max_new_tokens is an error naming its line, or a counted skip (always for
    the world's own)."""
    cfg, sft_dir = recipe.ppo, Path(run_dir) / "sft"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to start the policy from (run `chatforge sft` first)")
    context = model_config(sft_dir).max_position_embeddings
    if has_world(run_dir) and not cfg.prompts:
        path = prompts_file(run_dir, "", "ppo")
        prompts, skipped = read_prompts(path, skip_invalid=cfg.skip_invalid)
    else:
        prompts, skipped, path = own_prompts(run_dir, recipe, cfg.skip_invalid)
        if not has_world(run_dir):  # your own users: those held out are the evaluation's
            prompts = split_prompts(prompts, recipe.reward.heldout_users, recipe.reward.seed)[0]
    kept, too_long = encode_prompts(prompts, load_tokenizer(sft_dir), context - cfg.max_new_tokens,
                                    skip=cfg.skip_invalid or not cfg.prompts)
    skipped += too_long
    if not kept:
        raise DataError(f"{path}: no usable prompts ({len(skipped)} skipped; first: {skipped[:1]})")
    return kept, {"path": str(path), "prompts": len(kept), "skipped": len(skipped), "too_long": len(too_long),
                  "first_skipped": skipped[:3], "context": context}


# ----------------------------------------------------------------------------- rollout


@dataclass
class Rollout:
    """One iteration's episodes, laid out as [left-padded prompt | right-padded answer] (width P + T)."""

    ids: torch.Tensor  # [B, P+T] token ids
    attention: torch.Tensor  # [B, P+T] 1 on real tokens
    positions: torch.Tensor  # [B, P+T] position ids (count real tokens only)
    answer_mask: torch.Tensor  # [B, T] float, 1 on answer tokens (the stop token included)
    old_logp: torch.Tensor  # [B, T]
    ref_logp: torch.Tensor  # [B, T]
    old_values: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B, T]
    returns: torch.Tensor  # [B, T]
    stats: dict

    @property
    def prompt_width(self) -> int:
        return self.ids.shape[1] - self.answer_mask.shape[1]


class Scorer:
    """The frozen reward model's score of decoded answers (re-encoded exactly as it was trained: conversation,
    answer, <|im_end|>), plus bias; an answer that never ended is scored as cut there, less the penalty.
    batch_size: answers per forward pass (0: all at once), as ppo.micro_batch_size."""

    def __init__(self, reward_model, bias: float, tokenizer, max_len: int, unfinished_penalty: float,
                 batch_size: int = 0):
        self.model, self.bias, self.tokenizer = reward_model, bias, tokenizer
        self.max_len, self.penalty, self.batch_size = max_len, unfinished_penalty, batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[dict], texts: list[str], finished: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(score with penalty [B], the reward model's own score [B])."""
        seqs = [answer_ids(self.tokenizer, p["messages"], t, self.max_len) for p, t in zip(prompts, texts)]
        pad_id = self.model.config.pad_token_id
        raw = torch.tensor(rewards_of_seqs(self.model, seqs, pad_id, self.batch_size or len(seqs))) + self.bias
        return raw - _unfinished(finished, self.penalty), raw


class JudgeScorer:
    """The gold judge's total as the reward (ppo.reward = "judge"): PPO with a perfect reward model. Beside a run
    against the trained reward model, it shows what PPO itself can do here and how much the reward model's
    errors cost. An answer that never ended is judged as cut there (its fluency), less the same penalty."""

    def __init__(self, judge, unfinished_penalty: float):
        self.judge, self.penalty = judge, unfinished_penalty

    def __call__(self, prompts: list[dict], texts: list[str], finished: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(score with penalty [B], the judge's own score [B])."""
        gold = torch.tensor([self.judge.score(p, t, f).total for p, t, f in zip(prompts, texts, finished)])
        return gold - _unfinished(finished, self.penalty), gold


def _unfinished(finished: list[bool], penalty: float) -> torch.Tensor:
    return torch.tensor([0.0 if f else penalty for f in finished])


@torch.no_grad()
def rollout(models: Models, scorer, prompts: list[dict], cfg: PPOConfig, beta: float, judge: Judge | None,
            device, stop_ids: list[int] | None = None) -> Rollout:
    """Sample one answer per prompt, score it, and compute per-token rewards, advantages and returns.
    stop_ids: the tokens that end an answer (default: the tokenizer's end of turn and end of sequence)."""
    t0 = time.perf_counter()
    tokenizer = models.tokenizer
    models.policy.eval()
    gens = generate(models.policy, [p["ids"] for p in prompts], cfg.max_new_tokens, pad_id=tokenizer.pad_token_id,
                    stop_ids=stop_ids or answer_stop_ids(tokenizer), temperature=cfg.temperature)
    gen_seconds = time.perf_counter() - t0
    answers = [g.tokens + ([g.stop] if g.finished else []) for g in gens]  # the policy is trained to stop, too
    texts = [tokenizer.decode(g.tokens, skip_special_tokens=True) for g in gens]
    finished = [g.finished for g in gens]
    ids, attention, positions, mask = (x.to(device) for x in layout([p["ids"] for p in prompts], answers, tokenizer.pad_token_id))
    width = ids.shape[1] - mask.shape[1]
    parts = [_score_rows(models, ids[rows], attention[rows], positions[rows], width, cfg, device)
             for rows in _row_slices(ids.shape[0], cfg.micro_batch_size)]
    old_logp, ref_logp, values, entropy = (torch.cat(part) for part in zip(*parts))
    values = values * mask
    score, rm_score = scorer(prompts, texts, finished)
    score, rm_score = score.to(device), rm_score.to(device)
    kl = kl_k1(old_logp, ref_logp) * mask
    rewards = token_rewards(score, kl, mask, beta)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)
    stats = {
        "reward/rm": float(rm_score.mean()),  # the scorer's own score: the proxy (the judge's with ppo.reward=judge)
        "reward/score": float(score.mean()),  # with the unfinished penalty: what PPO maximises, less the KL term
        "reward/total": float((rewards * mask).sum(1).mean()),  # score - β·KL per answer
        "kl": float(kl.sum(1).mean()),  # nats per answer, k1 summed over its tokens
        "kl_k3": float((kl_k3(old_logp, ref_logp) * mask).sum(1).mean()),
        "entropy": float(masked_mean(entropy, mask)),
        "length": float(mask.sum(1).mean()),
        "unfinished": 1 - sum(finished) / len(finished),
        "gen_tokens": int(mask.sum()),
        "gen_seconds": gen_seconds,
        "explained_variance": explained_variance(values, returns, mask),
        **_gold(scorer, judge, prompts, texts, finished, stats_rm=float(rm_score.mean())),
    }
    return Rollout(ids, attention, positions, mask, old_logp, ref_logp, values, advantages, returns, stats)


def _row_slices(n: int, size: int) -> list[slice]:
    """Rows 0..n-1 in slices of `size` (0: one slice of all)."""
    size = size or n
    return [slice(start, start + size) for start in range(0, n, size)]


def _first_prompt_column(attention_BL: torch.Tensor, prompt_width: int) -> int:
    """The first column of the left-padded prompts that some row uses: those before it are padding in every row."""
    return int(attention_BL[:, :prompt_width].any(0).float().argmax())


def _score_rows(models: Models, ids, attention, positions, width: int, cfg: PPOConfig, device):
    """(log π_old, log π_ref, V, entropy of π_old), each [B, T], of the answers in rows laid out as the rollout's.
    Prompt columns that are padding in every row are left out: a slice of short prompts needs fewer."""
    first = _first_prompt_column(attention, width)
    ids, attention, positions, width = ids[:, first:], attention[:, first:], positions[:, first:], width - first
    tokens = ids[:, width:]
    with autocast(device, cfg.dtype):
        # both models at the rollout temperature: the policy's is what sampled the answers, and the KL is between the two
        old_logits = answer_logits(models.policy, ids, attention, positions, width, cfg.temperature)
        old_logp = token_logprobs(old_logits, tokens)
        ref_logp = token_logprobs(answer_logits(models.reference, ids, attention, positions, width, cfg.temperature), tokens)
        values = answer_values(models.value, ids, attention, positions, width)
    return old_logp, ref_logp, values, entropy_of(old_logits)


def _gold(scorer, judge: Judge | None, prompts: list[dict], texts: list[str], finished: list[bool], stats_rm: float) -> dict:
    """The gold judge's mean reward of the rollout's answers, on the world's prompts: the over-optimisation curve."""
    if isinstance(scorer, JudgeScorer):  # the scorer's own score is the gold reward: no need to judge twice
        return {"reward/gold": stats_rm}
    gold = [judge.score(p, t, f).total for p, t, f in zip(prompts, texts, finished) if "gold" in p] if judge else []
    return {"reward/gold": sum(gold) / len(gold)} if gold else {}


# ----------------------------------------------------------------------------- optimisation


def optimise(policy, value_model, models: Models, optimizers: dict, batch: Rollout, cfg: PPOConfig,
             ptx: MixtureSampler | None, iteration: int, d: dist.Dist) -> dict:
    """ppo_epochs passes over the episodes in minibatches: clipped policy loss (+ γ·ptx), clipped value loss.
    Returns the mean over minibatches of each statistic."""
    policy.train()
    value_model.train()
    groups = _length_groups(batch, cfg.minibatches)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration)
    sums: dict[str, float] = {}
    count = 0
    for epoch in range(cfg.ppo_epochs):
        for k, group in enumerate(torch.randperm(len(groups), generator=g).tolist()):
            step = (iteration * cfg.ppo_epochs + epoch) * cfg.minibatches + k
            windows = ptx.rank_rows(step, cfg.ptx_batch_size).to(d.device) if ptx is not None else None
            micro = _micro_batches(batch, groups[group], cfg.micro_batch_size)
            stats = _minibatch_step(policy, value_model, models, optimizers, micro, windows, cfg, d)
            for key, v in stats.items():
                sums[key] = sums.get(key, 0.0) + v
            count += 1
    return {k: v / max(count, 1) for k, v in sums.items()}


def _length_groups(batch: Rollout, minibatches: int) -> list[torch.Tensor]:
    """The episodes' indices cut into minibatches of similar prompt lengths. Prompts run from a few tokens to most
    of the context, and a random minibatch would pad every row to its longest (half the compute was padding).
    Each epoch visits the same minibatches in a fresh order; every episode is still used once per epoch."""
    n = batch.ids.shape[0]
    size = n // minibatches if n >= minibatches else n
    by_length = batch.attention[:, : batch.prompt_width].sum(1).argsort(stable=True).cpu()
    return [by_length[start : start + size] for start in range(0, n - size + 1, size)]


def _micro_batches(batch: Rollout, idx: torch.Tensor, size: int) -> list[dict]:
    """Minibatch `idx` in micro-batches of `size` episodes (0: one), each with its share of the minibatch's answer
    tokens: the weight of its loss, so that the accumulated gradient is that of the token mean over the minibatch."""
    micro = [_slice(batch, idx[rows]) for rows in _row_slices(len(idx), size)]
    total = float(batch.answer_mask[idx].sum())  # > 0: every answer has a token, its stop or max_new_tokens of text
    for mb in micro:
        mb["share"] = float(mb["mask"].sum()) / total
    return micro


def _minibatch_step(policy, value_model, models: Models, optimizers: dict, micro: list[dict], ptx_windows,
                    cfg: PPOConfig, d: dist.Dist) -> dict:
    """One clipped policy step (+ γ·the next-token loss on ptx_windows) and one clipped value step on a minibatch
    given as micro-batches (see _micro_batches); the statistics are token means over the minibatch."""
    sums: dict[str, float] = {}
    ptx_loss = 0.0
    for i, mb in enumerate(micro):
        ids, attention, positions, width, mask = mb["ids"], mb["attention"], mb["positions"], mb["width"], mb["mask"]
        with dist.no_sync(policy, sync=i == len(micro) - 1):
            with autocast(d.device, cfg.dtype):
                logits = answer_logits(policy, ids, attention, positions, width, cfg.temperature)
                pg, pg_stats = policy_loss(token_logprobs(logits, ids[:, width:]), mb["old_logp"], mb["advantages"],
                                           mask, cfg.clip_range)
                loss = pg * mb["share"]
                if ptx_windows is not None and i == 0:  # once per minibatch, with its first micro-batch
                    ptx = next_token_loss(policy, ptx_windows)
                    loss, ptx_loss = loss + cfg.ptx_coef * ptx, ptx.item()
            loss.backward()
        with torch.no_grad():
            entropy = float(masked_mean(entropy_of(logits.detach()), mask))
        _add_shares(sums, {"policy_loss": pg.item(), "entropy_now": entropy, **pg_stats}, mb["share"])
    grad_norm = clip_and_step(models.policy_params, optimizers["policy"], cfg.optim.grad_clip)
    for i, mb in enumerate(micro):
        ids, attention, positions, width, mask = mb["ids"], mb["attention"], mb["positions"], mb["width"], mb["mask"]
        with dist.no_sync(value_model, sync=i == len(micro) - 1):
            with autocast(d.device, cfg.dtype):
                values = answer_values(value_model, ids, attention, positions, width)
                vf, vf_stats = value_loss(values, mb["old_values"], mb["returns"], mask, cfg.value_clip_range)
            (vf * mb["share"]).backward()
        _add_shares(sums, {"value_loss": vf.item(), **vf_stats}, mb["share"])
    clip_and_step(models.value_params, optimizers["value"], cfg.optim.grad_clip)
    return {**sums, "ptx_loss": ptx_loss, "grad_norm": grad_norm}


def _add_shares(sums: dict, stats: dict, share: float):
    """Add each statistic of a micro-batch, weighted by its share of the minibatch, to the minibatch's sums."""
    for key, value in stats.items():
        sums[key] = sums.get(key, 0.0) + value * share


def _slice(batch: Rollout, idx: torch.Tensor) -> dict:
    """The episodes `idx` of the rollout without the columns that are padding in every one of them: the batch is
    padded for its longest prompt and answer, a minibatch rarely is."""
    idx = idx.to(batch.ids.device)
    attention = batch.attention[idx]
    width = batch.prompt_width
    first = _first_prompt_column(attention, width)
    keep = max(1, int(batch.answer_mask[idx].sum(1).max()))  # answer columns some row uses
    cols = slice(first, width + keep)
    out = {"ids": batch.ids[idx][:, cols], "attention": attention[:, cols], "positions": batch.positions[idx][:, cols],
           "width": width - first}
    for name in ("answer_mask", "old_logp", "advantages", "old_values", "returns"):
        out["mask" if name == "answer_mask" else name] = getattr(batch, name)[idx][:, :keep]
    return out


# ----------------------------------------------------------------------------- the stage


def run(run_dir: Path, recipe: Recipe, out: Path) -> dict:
    run_dir, cfg, d = Path(run_dir), recipe.ppo, dist.get()
    torch.manual_seed(cfg.seed)
    prompts, report = load_ppo_prompts(run_dir, recipe)  # the user's prompts first: their errors come before any model
    if cfg.ptx_coef > 0:  # the pretraining windows of PPO-ptx go through the policy too
        check_context("ppo.ptx_len", cfg.ptx_len, report["context"])
    models = load_models(run_dir, recipe, d)
    if report["skipped"]:
        dist.print0(f"ppo: {report['skipped']} prompts skipped ({report['too_long']} too long for the context); "
                    f"first: {report['first_skipped'][0]}")
    if cfg.batch_size % d.world_size or (cfg.batch_size // d.world_size) % cfg.minibatches:
        raise UserError(f"ppo.batch_size ({cfg.batch_size}) must divide over {d.world_size} process(es) "
                        f"into a multiple of ppo.minibatches ({cfg.minibatches})")
    judge = Judge.from_world(world_data(run_dir)) if has_world(run_dir) and any("gold" in p for p in prompts) else None
    scorer = _scorer(cfg, models, judge, prompts, report["context"])
    ptx = _ptx_sampler(run_dir, recipe, models.tokenizer) if cfg.ptx_coef > 0 else None
    train = (dist.wrap(models.policy, cfg.dtype), dist.wrap(models.value, cfg.dtype))
    if dist.sharded(models.policy):  # FSDP2 replaced the parameters by shards (LoRA, whose lists differ, is refused)
        models.policy_params, models.value_params = list(models.policy.parameters()), list(models.value.parameters())
    optimizers = {"policy": make_optimizer(models.policy_params, cfg.optim),
                  "value": make_optimizer(models.value_params, cfg.optim, lr=cfg.value_lr)}
    frame = StageRun("ppo", out, total=cfg.iterations, save_every=cfg.save_every, unit="iteration")
    state = frame.start(models.trained, optimizers, {"step": 0, "seconds": 0.0, "beta": cfg.kl_coef},
                        {"ppo": asdict(cfg), "prompts": report})
    order = EpochOrder(len(prompts), cfg.seed)
    dist.print0(f"ppo: {len(prompts)} prompts ({report['path']}), {cfg.iterations} iterations of {cfg.batch_size} "
                f"episodes, {cfg.ppo_epochs} epochs x {cfg.minibatches} minibatches, β {state['beta']:.3f}"
                f"{' (adaptive, target KL ' + str(cfg.target_kl) + ')' if cfg.adaptive_kl else ''}, "
                f"ptx γ {cfg.ptx_coef}, {d.world_size} process(es)"
                f"{'; reward: the gold judge (a perfect reward model)' if cfg.reward == 'judge' else ''}")
    for it in range(state["step"], cfg.iterations):
        t0 = time.perf_counter()
        lr = scheduled_lr(optimizers["policy"], cfg.optim, it, cfg.iterations)
        scheduled_lr(optimizers["value"], cfg.optim, it, cfg.iterations, peak=cfg.value_lr)
        mine = [prompts[i] for i in dist.my_share(order.indices(it, cfg.batch_size))]
        batch = rollout(models, scorer, mine, cfg, state["beta"], judge, d.device)
        stats = _mean_over_processes({**batch.stats, **optimise(*train, models, optimizers, batch, cfg, ptx, it, d)}, d)
        beta = state["beta"]
        if cfg.adaptive_kl:
            state["beta"] = adaptive_kl(beta, stats["kl"], cfg.target_kl, cfg.kl_horizon, cfg.batch_size)
        seconds = time.perf_counter() - t0
        state = {**state, "step": it + 1, "seconds": state["seconds"] + seconds}
        record = {"step": it + 1, **{k: round(v, 5) for k, v in stats.items()}, "beta": round(beta, 6), "lr": lr,
                  "seconds": round(seconds, 3),
                  "tokens_per_s": round(stats["gen_tokens"] * d.world_size / max(stats["gen_seconds"], 1e-9), 1)}
        frame.end_step(state, record, rm=f"{stats['reward/rm']:+.2f}", kl=f"{stats['kl']:.2f}",
                       gold=f"{stats.get('reward/gold', float('nan')):+.2f}")
    return _finish(frame, models, state, report, cfg, d)


def _scorer(cfg: PPOConfig, models: Models, judge: Judge | None, prompts: list[dict], context: int):
    """What scores the answers: the reward model, or with ppo.reward=judge the gold judge (the world's prompts only)."""
    if cfg.reward == "model":
        return Scorer(models.reward, models.bias, models.tokenizer, context, cfg.unfinished_penalty,
                      cfg.micro_batch_size)
    if judge is None or not all("gold" in p for p in prompts):
        raise UserError("ppo.reward=judge scores answers with the world's gold judge, so it needs the world's own "
                        "prompts (with their gold); use ppo.reward=model with your own prompts")
    return JudgeScorer(judge, cfg.unfinished_penalty)


def _ptx_sampler(run_dir: Path, recipe: Recipe, tokenizer) -> MixtureSampler | None:
    """Windows of the pretraining mixture in an order of their own (not pretraining's, not SFT replay's); None, and
    plain PPO, where the run has no pretraining text (your own model, no pretrain.corpus)."""
    if not has_corpus(run_dir, recipe.pretrain.corpus):
        dist.print0("ppo: no pretraining corpus in this run, so no PPO-ptx (ppo.ptx_coef is ignored)")
        return None
    sampler, _ = load_mixture(corpus_dir(run_dir, recipe.pretrain.corpus), token_cache(run_dir), tokenizer,
                              recipe.pretrain.mixture, recipe.ppo.ptx_len, recipe.ppo.seed + 2)
    dist.print0(f"ppo: ptx mixture {sampler.describe()}")
    return sampler


def _mean_over_processes(stats: dict, d: dist.Dist) -> dict:
    if d.world_size == 1:
        return stats
    keys = sorted(stats)
    values = dist.all_reduce_mean(torch.tensor([float(stats[k]) for k in keys], device=d.device, dtype=torch.float64))
    return dict(zip(keys, values.tolist()))


def _finish(frame: StageRun, models: Models, state: dict, report: dict, cfg: PPOConfig, d: dist.Dist) -> dict:
    summary = {"iterations": state["step"], "train_seconds": round(state["seconds"], 1),
               "final_beta": round(state["beta"], 6), "prompts": report["prompts"], "world_size": d.world_size}
    records = read_metrics(frame.dir / "metrics.jsonl") if d.is_main else []
    summary.update(overoptimisation(records))

    def save(out: Path, weights: dict | None):
        policy = models.policy
        if isinstance(policy, AdapterView):  # the policy's adapter alone: merged into the base, or kept
            policy = models.trained["policy"]
            policy.set_adapter("default")
            policy.delete_adapter("value")
        save_pretrained(policy, models.tokenizer, out, cfg.lora, weights)
        plot_overoptimisation(records, out / "overoptimisation.png")

    last = records[-1] if records else {}
    result = frame.finish(summary, models.policy, save, f"in {summary['train_seconds']:.0f}s; last iteration: RM reward "
                          f"{last.get('reward/rm', float('nan')):+.3f}, gold {last.get('reward/gold', float('nan')):+.3f}, "
                          f"KL {last.get('kl', float('nan')):.2f} nats")
    if summary.get("overoptimised"):
        dist.print0(f"ppo: over-optimisation: {summary['overoptimised']}")
    return result


# ----------------------------------------------------------------------------- over-optimisation


def _smooth(xs: list[float], window: int) -> list[float]:
    return [sum(xs[max(0, i - window + 1) : i + 1]) / len(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]


def overoptimisation(records: list[dict], window: int = 5, margin: float = 0.05) -> dict:
    """Summary of the proxy (RM) and gold rewards against KL over training; says when the RM reward kept
    rising after the gold reward had peaked (both smoothed over `window` iterations), by more than `margin`
    (the gold reward of one iteration is a mean over its episodes, ~0.05 of noise at 64)."""
    out: dict = {"curve": [{"step": r["step"], "kl": r.get("kl"), "rm": r.get("reward/rm"), "gold": r.get("reward/gold")}
                           for r in records]}
    gold = [r.get("reward/gold") for r in records]
    if len(records) < 2 * window or any(g is None for g in gold):
        return out
    rm, gold = _smooth([r["reward/rm"] for r in records], window), _smooth(gold, window)
    # the peak is looked for where a whole window is behind it: before that the running mean is of one or two
    # iterations, as noisy as a single batch, and a lucky first batch would read as a peak that PPO then fell from
    peak = max(range(window - 1, len(gold)), key=gold.__getitem__)
    out["gold_peak"] = {"step": records[peak]["step"], "gold": round(gold[peak], 4), "kl": records[peak]["kl"]}
    if gold[-1] < gold[peak] - margin and rm[-1] > rm[peak] + margin:
        out["overoptimised"] = (f"the RM reward rose {rm[-1] - rm[peak]:+.3f} after iteration {records[peak]['step']} "
                                f"(KL {records[peak]['kl']:.2f}) while the gold reward fell {gold[-1] - gold[peak]:+.3f}")
    return out


def plot_overoptimisation(records: list[dict], path: Path, window: int = 5):
    """PNG: the RM (proxy) and gold rewards against KL to the SFT model (one point per iteration, and their running
    means over `window` iterations as lines), and the same against the iteration; the data is in metrics.jsonl."""
    import matplotlib  # deferred: plotting is heavy, and only the end of the stage needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("reward/rm", "reward model (proxy)", "tab:blue")]
    if records and all("reward/gold" in r for r in records):
        series.append(("reward/gold", "gold judge", "tab:orange"))
    steps, kl = [r["step"] for r in records], [r["kl"] for r in records]
    fig, (by_kl, by_step) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for key, label, colour in series:
        values = [r[key] for r in records]
        by_kl.scatter(kl, values, s=10, alpha=0.35, color=colour)
        by_kl.plot(_smooth(kl, window), _smooth(values, window), color=colour, label=label)
        by_step.plot(steps, values, color=colour, alpha=0.35)
        by_step.plot(steps, _smooth(values, window), color=colour, label=label)
    by_kl.set_xlabel("KL(π || π_SFT), nats per answer")
    by_kl.set_ylabel("mean reward of the iteration's answers")
    by_kl.set_title("proxy and gold reward against KL")
    by_step.set_xlabel("iteration")
    by_step.set_title(f"the same over training (lines: running mean of {window})")
    for ax in (by_kl, by_step):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
