"""What a model says about a given text, shared by the stages and the evaluation: the next-token and
masked losses, log-probabilities of chosen tokens, KL estimators, the layout of prompt + answer batches,
and the reward and value heads.

Shapes: B rows, T tokens (right-padded unless said otherwise), V the vocabulary. A mask is 1 on the
positions that count.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from chatforge.errors import UserError
from chatforge.generate import left_pad
from chatforge.model import load_sequence_classifier
from chatforge.tokenizer import answer_stop_ids, load_tokenizer, render_chat

# ----------------------------------------------------------------------------- losses


def next_token_loss(model, windows_BT1: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting windows[:, 1:] from windows[:, :-1]; windows [B, T+1]."""
    inputs, targets = windows_BT1[:, :-1], windows_BT1[:, 1:]
    logits_BTV = model(input_ids=inputs).logits
    return F.cross_entropy(logits_BTV.flatten(0, 1).float(), targets.flatten())


def masked_token_loss(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, number of tokens) over the positions where mask_BT is 1.

    Position t's logits predict token t+1, so the target mask is mask_BT[:, 1:]: a token is
    trained exactly when the chat template marked it as assistant output.
    """
    targets = ids_BT[:, 1:]
    weights = mask_BT[:, 1:].float()
    ce = F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (ce * weights.flatten()).sum(), weights.sum()


def pad_right(rows: list, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded [N, T], lengths [N]) of N sequences (lists or 1-d tensors), `fill` after each: causal attention
    never looks ahead, so right padding changes nothing before it."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out, torch.tensor([len(r) for r in rows])


# ----------------------------------------------------------------------------- log-probabilities and KL


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


# ----------------------------------------------------------------------------- prompt + answer batches


def layout(prompts: list[list[int]], answers: list[list[int]], pad_id: int):
    """(ids [B, P+T], attention [B, P+T], positions [B, P+T], answer mask [B, T]): prompts right-aligned at
    column P, answers left-aligned after them, so every answer token t sits in column P + t."""
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


class TokenValues(torch.nn.Module):
    """A sequence-classification model's transformer and scalar head read at every position: V(x, y_<t) [B, L].

    A module of its own so that the one distributed wrapper (`dist.wrap`) sees its forward."""

    def __init__(self, seq_cls_model):
        super().__init__()
        self.backbone = getattr(seq_cls_model, seq_cls_model.base_model_prefix)
        self.score = seq_cls_model.score

    def forward(self, input_ids, attention_mask, position_ids):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.score(hidden)[..., 0].float()


# ----------------------------------------------------------------------------- the reward head


def answer_ids(tokenizer, messages: list[dict], answer: str, max_len: int) -> list[int]:
    """The conversation and the answer through the chat template, ending with the token that closes the answer's
    turn (<|im_end|> in ChatML), which is where the reward is read. Too long: the start of the conversation goes,
    never the answer."""
    ids, mask = render_chat(tokenizer, messages + [{"role": "assistant", "content": answer}])
    last = max(i for i, m in enumerate(mask) if m)
    return ids[: last + 1][-max_len:]


def reward_pad_id(tokenizer) -> int:
    """The token that pads reward-model batches. transformers reads a classifier's score at the last token that is
    not padding, so the pad must never be the token that closes a turn: a model whose pad token is its end of turn
    (SmolLM2 pads with <|im_end|>) would be read one token early, and a finished answer would score as the same
    answer cut short. Such a model pads with another special token."""
    closers = set(answer_stop_ids(tokenizer)) - {tokenizer.eos_token_id} or set(answer_stop_ids(tokenizer))
    candidates = [tokenizer.pad_token_id, *tokenizer.all_special_ids, tokenizer.eos_token_id]
    usable = [i for i in candidates if i is not None and i not in closers]
    if not usable:
        raise UserError("the tokenizer has no special token besides its end of turn to pad reward-model batches with")
    return usable[0]


def rewards_of(model, ids_NT: torch.Tensor, lengths_N: torch.Tensor) -> torch.Tensor:
    """Scalar reward [N] per right-padded sequence (no bias): the classification model's own forward, which
    reads the head at the last token that is not padding (answers end with <|im_end|>, never with the pad
    token), so a DDP wrapper sees the call and `transformers` computes exactly the same number."""
    mask = (torch.arange(ids_NT.shape[1], device=ids_NT.device)[None, :] < lengths_N[:, None]).long()
    return model(input_ids=ids_NT, attention_mask=mask).logits[:, 0].float()


@torch.no_grad()
def rewards_of_seqs(model, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Rewards (no bias) of encoded sequences, in batches."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, lengths = pad_right(seqs[i : i + batch_size], pad_id)
        out += rewards_of(model, ids.to(device), lengths.to(device)).tolist()
    return out


def score_texts(model, tokenizer, items: list[tuple[list[dict], str]], max_len: int, bias: float = 0.0,
                batch_size: int = 64) -> list[float]:
    """Rewards of (messages, answer) pairs, bias included."""
    seqs = [answer_ids(tokenizer, m, a, max_len) for m, a in items]
    return [r + bias for r in rewards_of_seqs(model, seqs, model.config.pad_token_id, batch_size)]


def load_reward_model(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer, bias) of a reward directory; the reward is model score + bias."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: no reward model here (run `chatforge reward` first)")
    model = load_sequence_classifier(path, device, dtype).eval()
    return model, load_tokenizer(path), float(getattr(model.config, "reward_bias", 0.0))
