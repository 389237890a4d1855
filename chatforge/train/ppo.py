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

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from chatforge import dist
from chatforge.config import Recipe
from chatforge.errors import DataError, UserError
from chatforge.train.loop import (
    Checkpointer, EpochOrder, MetricsLog, autocast, clip_and_step, make_optimizer, progress, read_metrics, set_lr,
)

STAGE = "ppo"


def is_complete(run_dir: Path, out: str = STAGE) -> bool:
    return (Path(run_dir) / out / "summary.json").exists()


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


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """log π(token) [B, T] from the logits that predict each token (logits_BTV[:, t] predicts tokens_BT[:, t])."""
    return torch.gather(logits_BTV.float().log_softmax(-1), 2, tokens_BT[:, :, None]).squeeze(-1)


def entropy_of(logits_BTV: torch.Tensor) -> torch.Tensor:
    """Entropy [B, T] of each position's next-token distribution, in nats."""
    logp = logits_BTV.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log π - log π_ref [B, T] (Schulman's k1): unbiased, can be negative per token.
    Its sum over an answer sampled from π is an unbiased estimate of KL(π || π_ref) for that prompt."""
    return logp_BT - ref_logp_BT


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate (ρ - 1) - log ρ with ρ = π_ref / π [B, T] (Schulman's k3): unbiased and never negative."""
    log_ratio = ref_logp_BT - logp_BT
    return log_ratio.exp() - 1 - log_ratio


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


class TokenValues(torch.nn.Module):
    """The reward model's transformer and scalar head read at every position: V(x, y_<t) [B, L].

    A module of its own so that the one distributed wrapper (`dist.wrap`) sees its forward."""

    def __init__(self, seq_cls_model):
        super().__init__()
        self.backbone = getattr(seq_cls_model, seq_cls_model.base_model_prefix)
        self.score = seq_cls_model.score

    def forward(self, input_ids, attention_mask, position_ids):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.score(hidden)[..., 0].float()


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and (a.chat_template or "") == (b.chat_template or "")


def load_models(run_dir: Path, d):
    """(policy, value, reference, reward model, reward bias, tokenizer); refuses a reward model whose tokenizer
    is not the policy's (its scores would be of other token ids)."""
    from transformers import AutoModelForSequenceClassification

    from chatforge.model import load_causal_lm
    from chatforge.tokenizer import load_tokenizer
    from chatforge.train.reward import load_reward_model

    sft_dir, rm_dir = Path(run_dir) / "sft", Path(run_dir) / "reward"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to start the policy from (run `chatforge sft` first)")
    if not (rm_dir / "config.json").exists():
        raise UserError(f"{rm_dir}: no reward model (run `chatforge reward` first)")
    tokenizer = load_tokenizer(sft_dir)
    reward_model, rm_tokenizer, bias = load_reward_model(rm_dir)
    if not _same_tokenizer(tokenizer, rm_tokenizer):
        raise UserError(f"{rm_dir}: the reward model's tokenizer differs from the policy's ({sft_dir}); a reward model "
                        f"must be trained from the same SFT model (same vocabulary and chat template)")
    policy = load_causal_lm(sft_dir).to(d.device)
    reference = load_causal_lm(sft_dir).to(d.device).eval().requires_grad_(False)
    value = TokenValues(AutoModelForSequenceClassification.from_pretrained(str(rm_dir), dtype=torch.float32)).to(d.device)
    reward_model = reward_model.to(d.device).eval().requires_grad_(False)
    return policy, value, reference, reward_model, bias, tokenizer


# ----------------------------------------------------------------------------- prompts


def load_ppo_prompts(run_dir: Path, cfg, tokenizer, max_prompt_tokens: int) -> tuple[list[dict], dict]:
    """Prompts with their rendered ids ("ids"); (prompts, report). A prompt longer than max_prompt_tokens
    leaves no room for an answer: an error naming its line, or a counted skip (always for the world's own)."""
    from chatforge.feedback import read_prompts
    from chatforge.tokenizer import render_chat

    path = Path(cfg.prompts) if cfg.prompts else Path(run_dir) / "data" / "prompts" / "ppo.jsonl"
    world = not cfg.prompts
    prompts, skipped = read_prompts(path, skip_invalid=cfg.skip_invalid)
    kept, too_long = [], 0
    for p in prompts:
        p["ids"] = render_chat(tokenizer, p["messages"], add_generation_prompt=True)[0]
        if len(p["ids"]) <= max_prompt_tokens:
            kept.append(p)
            continue
        message = (f"{p['where']}: the prompt is {len(p['ids'])} tokens; with answers of up to ppo.max_new_tokens "
                   f"tokens, at most {max_prompt_tokens} fit in the model's context")
        if not (cfg.skip_invalid or world):
            raise DataError(message)
        too_long += 1
        skipped.append(message)
    if not kept:
        raise DataError(f"{path}: no usable prompts ({len(skipped)} skipped; first: {skipped[:1]})")
    return kept, {"path": str(path), "prompts": len(kept), "skipped": len(skipped), "too_long": too_long,
                  "first_skipped": skipped[:3]}


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


def layout(prompts: list[list[int]], answers: list[list[int]], pad_id: int):
    """(ids [B, P+T], attention [B, P+T], positions [B, P+T], answer mask [B, T]): prompts right-aligned at
    column P, answers left-aligned after them, so every answer token t sits in column P + t."""
    from chatforge.generate import left_pad

    ids_p, mask_p = left_pad(prompts, pad_id, "cpu")
    width = max(1, max(len(a) for a in answers))
    ids_a = torch.full((len(answers), width), pad_id, dtype=torch.long)
    mask_a = torch.zeros((len(answers), width), dtype=torch.long)
    for i, a in enumerate(answers):
        ids_a[i, : len(a)] = torch.tensor(a, dtype=torch.long)
        mask_a[i, : len(a)] = 1
    ids, attention = torch.cat([ids_p, ids_a], 1), torch.cat([mask_p, mask_a], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return ids, attention, positions, mask_a.float()


def answer_logits(model, ids, attention, positions, prompt_width: int, temperature: float = 1.0):
    """Logits [B, T, V] that predict the answer tokens: columns P-1 .. P+T-2 (the unembedding skips the prompt),
    divided by the sampling temperature: PPO trains the distribution its answers were sampled from."""
    answer_len = ids.shape[1] - prompt_width
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=answer_len + 1).logits
    return logits[:, :-1] if temperature == 1.0 else logits[:, :-1] / temperature


def answer_values(value_model, ids, attention, positions, prompt_width: int):
    """Values [B, T] of the states before each answer token (the same columns as answer_logits)."""
    return value_model(ids, attention, positions)[:, prompt_width - 1 : -1]


class Scorer:
    """The frozen reward model's score of decoded answers (re-encoded exactly as it was trained: conversation,
    answer, <|im_end|>), plus bias; an answer that never ended is scored as cut there, less the penalty."""

    def __init__(self, reward_model, bias: float, tokenizer, max_len: int, unfinished_penalty: float):
        self.model, self.bias, self.tokenizer = reward_model, bias, tokenizer
        self.max_len, self.penalty = max_len, unfinished_penalty

    @torch.no_grad()
    def __call__(self, prompts: list[dict], texts: list[str], finished: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(score with penalty [B], the reward model's own score [B])."""
        from chatforge.train.reward import answer_ids, rewards_of_seqs

        seqs = [answer_ids(self.tokenizer, p["messages"], t, self.max_len) for p, t in zip(prompts, texts)]
        raw = torch.tensor(rewards_of_seqs(self.model, seqs, self.tokenizer.pad_token_id)) + self.bias
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
def rollout(policy, value_model, reference, scorer, prompts: list[dict], tokenizer, cfg, beta: float, judge, device,
            stop_ids: list[int] | None = None) -> Rollout:
    """Sample one answer per prompt, score it, and compute per-token rewards, advantages and returns.
    stop_ids: the tokens that end an answer (default: <|im_end|> and the tokenizer's eos)."""
    from chatforge.generate import generate
    from chatforge.tokenizer import answer_stop_ids

    t0 = time.perf_counter()
    if stop_ids is None:
        stop_ids = answer_stop_ids(tokenizer)
    policy.eval()
    gens = generate(policy, [p["ids"] for p in prompts], cfg.max_new_tokens, pad_id=tokenizer.pad_token_id,
                    stop_ids=stop_ids, temperature=cfg.temperature)
    gen_seconds = time.perf_counter() - t0
    answers = [g.tokens + ([g.stop] if g.finished else []) for g in gens]  # the policy is trained to stop, too
    texts = [tokenizer.decode(g.tokens, skip_special_tokens=True) for g in gens]
    finished = [g.finished for g in gens]
    ids, attention, positions, mask = (x.to(device) for x in layout([p["ids"] for p in prompts], answers, tokenizer.pad_token_id))
    width = ids.shape[1] - mask.shape[1]
    tokens = ids[:, width:]
    with autocast(device, cfg.dtype):
        # both models at the rollout temperature: the policy's is what sampled the answers, and the KL is between the two
        old_logits = answer_logits(policy, ids, attention, positions, width, cfg.temperature)
        old_logp = token_logprobs(old_logits, tokens)
        ref_logp = token_logprobs(answer_logits(reference, ids, attention, positions, width, cfg.temperature), tokens)
        values = answer_values(value_model, ids, attention, positions, width) * mask
    score, rm_score = scorer(prompts, texts, finished)
    score, rm_score = score.to(device), rm_score.to(device)
    kl = kl_k1(old_logp, ref_logp) * mask
    rewards = token_rewards(score, kl, mask, beta)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)
    lengths = mask.sum(1)
    stats = {
        "reward/rm": float(rm_score.mean()),  # the scorer's own score: the proxy (the judge's with ppo.reward=judge)
        "reward/score": float(score.mean()),  # with the unfinished penalty: what PPO maximises, less the KL term
        "reward/total": float((rewards * mask).sum(1).mean()),  # score - β·KL per answer
        "kl": float(kl.sum(1).mean()),  # nats per answer, k1 summed over its tokens
        "kl_k3": float((kl_k3(old_logp, ref_logp) * mask).sum(1).mean()),
        "entropy": float(masked_mean(entropy_of(old_logits), mask)),
        "length": float(lengths.mean()),
        "unfinished": 1 - sum(finished) / len(finished),
        "gen_tokens": int(lengths.sum()),
        "gen_seconds": gen_seconds,
        "explained_variance": explained_variance(values, returns, mask),
    }
    if isinstance(scorer, JudgeScorer):  # the scorer's own score is the gold reward: no need to judge twice
        stats["reward/gold"] = stats["reward/rm"]
    elif judge is not None:
        gold = [judge.score(p, t, f).total for p, t, f in zip(prompts, texts, finished) if "gold" in p]
        if gold:
            stats["reward/gold"] = sum(gold) / len(gold)
    return Rollout(ids, attention, positions, mask, old_logp, ref_logp, values, advantages, returns, stats)


# ----------------------------------------------------------------------------- optimisation


def optimise(policy, value_model, opt_policy, opt_value, batch: Rollout, cfg, ptx, iteration: int, d) -> dict:
    """ppo_epochs passes over the episodes in minibatches: clipped policy loss (+ γ·ptx), clipped value loss."""
    policy.train()
    value_model.train()
    n = batch.ids.shape[0]
    size = n // cfg.minibatches if n >= cfg.minibatches else n
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration)
    # Minibatches of episodes with similar prompt lengths: prompts run from a few tokens to most of the context, and
    # a random minibatch would pad every row to its longest (half the compute was padding). Each epoch visits the
    # same minibatches in a fresh order; every episode is still used once per epoch.
    by_length = batch.attention[:, : batch.prompt_width].sum(1).argsort(stable=True).cpu()
    groups = [by_length[start : start + size] for start in range(0, n - size + 1, size)]
    sums: dict[str, float] = {}
    count = 0
    for epoch in range(cfg.ppo_epochs):
        for k, group in enumerate(torch.randperm(len(groups), generator=g).tolist()):
            idx = groups[group].to(batch.ids.device)
            ids, attention, positions, width, keep = _trim(batch, idx)
            mask = batch.answer_mask[idx][:, :keep]
            old_logp, advantages = batch.old_logp[idx][:, :keep], batch.advantages[idx][:, :keep]
            old_values, returns = batch.old_values[idx][:, :keep], batch.returns[idx][:, :keep]
            with autocast(d.device, cfg.dtype):
                logits = answer_logits(policy, ids, attention, positions, width, cfg.temperature)
                logp = token_logprobs(logits, ids[:, width:])
                pg, pg_stats = policy_loss(logp, old_logp, advantages, mask, cfg.clip_range)
                loss = pg
                ptx_loss = torch.zeros(())
                if ptx is not None:
                    step = (iteration * cfg.ppo_epochs + epoch) * cfg.minibatches + k
                    windows = ptx.rank_rows(step, cfg.ptx_batch_size).to(d.device)
                    ptx_loss = F.cross_entropy(policy(input_ids=windows[:, :-1]).logits.flatten(0, 1).float(),
                                               windows[:, 1:].flatten())
                    loss = loss + cfg.ptx_coef * ptx_loss
            loss.backward()
            policy_norm = clip_and_step(policy, opt_policy, cfg.grad_clip)
            with autocast(d.device, cfg.dtype):
                values = answer_values(value_model, ids, attention, positions, width)
                vf, vf_stats = value_loss(values, old_values, returns, mask, cfg.value_clip_range)
            vf.backward()
            clip_and_step(value_model, opt_value, cfg.grad_clip)
            with torch.no_grad():
                entropy = float(masked_mean(entropy_of(logits.detach()), mask))
            for key, v in {"policy_loss": pg.item(), "value_loss": vf.item(), "ptx_loss": ptx_loss.item(),
                           "entropy_now": entropy, "grad_norm": policy_norm, **pg_stats, **vf_stats}.items():
                sums[key] = sums.get(key, 0.0) + v
            count += 1
    return {k: v / max(count, 1) for k, v in sums.items()}


def _trim(batch: Rollout, idx: torch.Tensor):
    """A minibatch's (ids, attention, positions, prompt width, answer width) without the columns that are padding
    in every one of its rows: the batch is padded for its longest prompt and answer, a minibatch rarely is."""
    attention = batch.attention[idx]
    width = batch.prompt_width
    first = int(attention[:, :width].any(0).float().argmax())  # the first prompt column some row uses
    keep = max(1, int(batch.answer_mask[idx].sum(1).max()))  # answer columns some row uses
    cols = slice(first, width + keep)
    return batch.ids[idx][:, cols], attention[:, cols], batch.positions[idx][:, cols], width - first, keep


# ----------------------------------------------------------------------------- the stage


def run(run_dir: Path, recipe: Recipe, out: str = STAGE) -> dict:
    from chatforge.io import atomic_write_json

    run_dir, cfg = Path(run_dir), recipe.ppo
    stage_dir = run_dir / out
    if is_complete(run_dir, out):
        dist.print0(f"ppo: {stage_dir} is complete, skipping")
        return json.loads((stage_dir / "summary.json").read_text())
    d = dist.init()
    torch.manual_seed(cfg.seed)
    # the user's prompts first: their errors come before any model is loaded
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        raise UserError(f"{sft_dir}: no SFT model to start the policy from (run `chatforge sft` first)")
    from transformers import AutoConfig

    from chatforge.tokenizer import load_tokenizer

    context = AutoConfig.from_pretrained(str(sft_dir)).max_position_embeddings
    prompts, report = load_ppo_prompts(run_dir, cfg, load_tokenizer(sft_dir), context - cfg.max_new_tokens)
    policy, value_model, reference, reward_model, bias, tokenizer = load_models(run_dir, d)
    if report["skipped"]:
        dist.print0(f"ppo: {report['skipped']} prompts skipped ({report['too_long']} too long for the context); "
                    f"first: {report['first_skipped'][0]}")
    if cfg.batch_size % d.world_size or (cfg.batch_size // d.world_size) % cfg.minibatches:
        raise UserError(f"ppo.batch_size ({cfg.batch_size}) must divide over {d.world_size} process(es) "
                        f"into a multiple of ppo.minibatches ({cfg.minibatches})")
    judge = _judge(run_dir) if any("gold" in p for p in prompts) else None
    if cfg.reward == "judge":
        if judge is None or not all("gold" in p for p in prompts):
            raise UserError("ppo.reward=judge scores answers with the world's gold judge, so it needs the world's own "
                            "prompts (with their gold); use ppo.reward=model with your own prompts")
        scorer = JudgeScorer(judge, cfg.unfinished_penalty)
    else:
        scorer = Scorer(reward_model, bias, tokenizer, context, cfg.unfinished_penalty)
    ptx = _ptx_sampler(run_dir, recipe, tokenizer) if cfg.ptx_coef > 0 else None
    opt_policy = make_optimizer(policy, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    opt_value = make_optimizer(value_model, cfg.value_lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    both = torch.nn.ModuleDict({"policy": policy, "value": value_model})  # one checkpoint holds both
    ckpt = Checkpointer(stage_dir)
    state = {"step": 0, "seconds": 0.0, "beta": cfg.kl_coef}
    if ckpt.latest():
        state = ckpt.load(both, {"policy": opt_policy, "value": opt_value})
        dist.print0(f"ppo: resuming from iteration {state['step']} ({ckpt.latest()}), β = {state['beta']:.4f}")
    elif d.is_main:
        atomic_write_json(stage_dir / "stage_config.json", {"stage": STAGE, "ppo": asdict(cfg), "prompts": report,
                                                            "world_size": d.world_size})
    train_policy, train_value = dist.wrap(policy), dist.wrap(value_model)
    order = EpochOrder(len(prompts), cfg.seed)
    log = MetricsLog(stage_dir / "metrics.jsonl", resume_step=state["step"])
    dist.print0(f"ppo: {len(prompts)} prompts ({report['path']}), {cfg.iterations} iterations of {cfg.batch_size} "
                f"episodes, {cfg.ppo_epochs} epochs x {cfg.minibatches} minibatches, β {state['beta']:.3f}"
                f"{' (adaptive, target KL ' + str(cfg.target_kl) + ')' if cfg.adaptive_kl else ''}, "
                f"ptx γ {cfg.ptx_coef}, {d.world_size} process(es)"
                f"{'; reward: the gold judge (a perfect reward model)' if cfg.reward == 'judge' else ''}")
    bar = progress(cfg.iterations, state["step"], "ppo")
    for it in range(state["step"], cfg.iterations):
        t0 = time.perf_counter()
        scale = min(1.0, (it + 1) / cfg.warmup_iterations) if cfg.warmup_iterations else 1.0
        set_lr(opt_policy, cfg.lr * scale)
        set_lr(opt_value, cfg.value_lr * scale)
        mine = [prompts[i] for i in dist.my_share(order.indices(it, cfg.batch_size))]
        batch = rollout(policy, value_model, reference, scorer, mine, tokenizer, cfg, state["beta"], judge, d.device)
        opt_stats = optimise(train_policy, train_value, opt_policy, opt_value, batch, cfg, ptx, it, d)
        stats = _mean_over_processes({**batch.stats, **opt_stats}, d)
        beta = state["beta"]
        if cfg.adaptive_kl:
            state["beta"] = adaptive_kl(beta, stats["kl"], cfg.target_kl, cfg.kl_horizon, cfg.batch_size)
        seconds = time.perf_counter() - t0
        state = {**state, "step": it + 1, "seconds": state["seconds"] + seconds}
        record = {"step": it + 1, **{k: round(v, 5) for k, v in stats.items()}, "beta": round(beta, 6),
                  "lr": cfg.lr * scale, "seconds": round(seconds, 3),
                  "tokens_per_s": round(stats["gen_tokens"] * d.world_size / max(stats["gen_seconds"], 1e-9), 1)}
        log.log(record)
        bar.set_postfix(rm=f"{stats['reward/rm']:+.2f}", gold=f"{stats.get('reward/gold', float('nan')):+.2f}",
                        kl=f"{stats['kl']:.2f}", refresh=False)
        bar.update(1)
        if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iterations:
            ckpt.save(it + 1, both, {"policy": opt_policy, "value": opt_value}, state)
    bar.close()
    return _finish(stage_dir, policy, tokenizer, state, report, d)


def _judge(run_dir: Path):
    from chatforge.world.judge import Judge

    data = Path(run_dir) / "data"
    return Judge.from_world(data) if (data / "world.json").exists() else None


def _ptx_sampler(run_dir: Path, recipe: Recipe, tokenizer):
    from chatforge.train.pretrain import load_mixture

    # Windows of the pretraining mixture in an order of their own (not pretraining's, not SFT replay's).
    cfg = replace(recipe.pretrain, seq_len=recipe.ppo.ptx_len, seed=recipe.ppo.seed + 2)
    sampler, _ = load_mixture(run_dir, cfg, tokenizer)
    return sampler


def _mean_over_processes(stats: dict, d) -> dict:
    if d.world_size == 1:
        return stats
    keys = sorted(stats)
    values = dist.all_reduce_mean(torch.tensor([float(stats[k]) for k in keys], device=d.device, dtype=torch.float64))
    return dict(zip(keys, values.tolist()))


def _finish(stage_dir: Path, policy, tokenizer, state: dict, report: dict, d) -> dict:
    from chatforge.io import atomic_write_json
    from chatforge.model import save_pretrained

    summary = {"stage": STAGE, "iterations": state["step"], "train_seconds": round(state["seconds"], 1),
               "final_beta": round(state["beta"], 6), "prompts": report["prompts"], "world_size": d.world_size}
    if d.is_main:
        records = read_metrics(stage_dir / "metrics.jsonl")
        summary.update(overoptimisation(records))
        save_pretrained(policy, tokenizer, stage_dir)
        plot_overoptimisation(records, stage_dir / "overoptimisation.png")
        atomic_write_json(stage_dir / "summary.json", summary)
        last = records[-1] if records else {}
        print(f"ppo: done, {stage_dir} in {summary['train_seconds']:.0f}s (last iteration: RM reward "
              f"{last.get('reward/rm', float('nan')):+.3f}, gold {last.get('reward/gold', float('nan')):+.3f}, "
              f"KL {last.get('kl', float('nan')):.2f} nats)", flush=True)
        if summary.get("overoptimised"):
            print(f"ppo: over-optimisation: {summary['overoptimised']}", flush=True)
    dist.barrier()
    return summary


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
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chatforge.io import atomic_write_bytes

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
