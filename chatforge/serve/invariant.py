"""Batch invariance: a row's numbers do not depend on the rows batched with it.

A greedy answer must be the same whether it is asked alone or among 31 others. Batching changes two
things a row's arithmetic sees, and each gives it different last bits (measured: logits up to 1.7e-5
apart on the laptop model, enough to flip an argmax where two tokens are that close):

1. **The number of rows of a matmul.** BLAS libraries take another kernel for a few rows than for
   many (on the development machine's MKL: 1-3, 5-7, 9-11 rows differ from any larger count), and the
   kernels sum in different orders. `pad_small_matmuls` pads every linear layer's input to the fewest
   rows this device computes like a large batch, found by `matmul_row_floor` at start-up; the extra
   rows are zeros, and cost almost nothing next to reading the weights.
2. **Padding in attention.** Prompts of different lengths are padded on the left; a padded row's
   softmax and weighted sum run over more keys, and vectorised sums group them differently even
   though the padded keys weigh exactly 0. `invariant_attention` gives each row its own keys only:
   the prompt is attended row by row over its real tokens (one call per request, as if alone), and
   each decoding step sums over keys strictly in order (cumulative sums), where a padded key adds an
   exact 0 and so changes nothing.

Everything else in a decoder (norms, rotary embeddings, activations) works row by row already.
This holds on the CPU, where a cumulative sum runs in order; a GPU's scan is parallel, and nothing
here claims exactness there.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger("chatforge.serve")
ATTENTION = "chatforge_invariant"
PROBE_ROWS = 64  # matmul_row_floor compares 1..63 rows with 64
PROBE_MAX_OUT = 4096  # output features of a probe matmul: enough to pick the kernel a layer uses, cheap to run


def make_batch_invariant(model) -> bool:
    """Switch `model` (in place) to batch-invariant attention and matmuls; False, with a warning, for a
    model whose attention this cannot replace (sliding windows, soft-capping)."""
    config = model.config
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        log.warning("%s: attention with a sliding window or soft-capping; answers may depend on the batch",
                    type(model).__name__)
        return False
    AttentionInterface.register(ATTENTION, invariant_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the boolean [B, 1, q, S] mask, or None: no padding
    model.set_attn_implementation(ATTENTION)
    floor = matmul_row_floor(model)
    if floor >= PROBE_ROWS:
        log.warning("this device's matmuls give a row different bits up to %d rows; answers may depend on the batch",
                    PROBE_ROWS)
    pad_small_matmuls(model, floor)
    return True


def invariant_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the model's AttentionInterface. query [B, H, q, d], key/value [B, Hkv, S, d] (the cache
    included), attention_mask bool [B, 1, q, S] (True: attend) or None; returns ([B, q, H, d], None)."""
    rows = attention_mask[:, 0, -1, :] if attention_mask is not None else None  # the last query is never padding
    if query.shape[2] == 1:
        return ordered_decode_attention(query, key, value, rows, scaling)[:, None], None
    return prompt_attention(query, key, value, rows, scaling), None


def prompt_attention(query, key, value, keys_BS, scale):
    """Causal attention over each row's real tokens only, one row at a time: exactly the call the row
    would make alone. A prompt is attended once per request, so the loop costs little. [B, q, H, d]."""
    B, H, q, _ = query.shape
    lengths = keys_BS.sum(-1).tolist() if keys_BS is not None else [key.shape[2]] * B
    out = query.new_zeros(B, q, H, value.shape[-1])
    assert key.shape[2] == q, "a prompt is attended from an empty cache"
    for b, n in enumerate(lengths):
        k, v = _repeat_heads(key[b : b + 1, :, -n:], H), _repeat_heads(value[b : b + 1, :, -n:], H)
        o = F.scaled_dot_product_attention(query[b : b + 1, :, -n:].contiguous(), k.contiguous(), v.contiguous(),
                                           is_causal=True, scale=scale)
        out[b, q - n :] = o[0].transpose(0, 1)
    return out


def ordered_decode_attention(query, key, value, keys_BS, scale):
    """One new token per row over its cache, with every sum taken in key order. query [B, H, 1, d], key/value
    [B, Hkv, S, d], keys_BS bool [B, S] or None; returns [B, H, d].

    A padded key gets probability exactly 0 and adds exactly 0 to a running sum, so a row sums the same
    numbers in the same order alone or padded. Cumulative sums do the in-order summing (a plain sum
    vectorises, and which keys share a lane then depends on the padding)."""
    H, d = query.shape[1], query.shape[3]
    k, v = _repeat_heads(key, H), _repeat_heads(value, H)
    scores_BHS = (query * k).cumsum(-1)[..., -1] * (scale if scale is not None else d**-0.5)
    if keys_BS is not None:
        scores_BHS = scores_BHS.masked_fill(~keys_BS[:, None, :], float("-inf"))
    weights_BHS = (scores_BHS - scores_BHS.amax(-1, keepdim=True)).exp()
    total_BH1 = weights_BHS.cumsum(-1)[..., -1:]
    summed_BHd = (weights_BHS[..., None] * v).cumsum(-2)[..., -1, :]
    return summed_BHd / total_BH1


def _repeat_heads(kv, heads: int):
    """[B, Hkv, S, d] -> [B, heads, S, d] for grouped-query attention (a view when Hkv == heads)."""
    groups = heads // kv.shape[1]
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def matmul_row_floor(model) -> int:
    """The fewest rows from which this device's matmul gives every row the bits it has in a 64-row
    batch, over the shapes of the model's linear layers (measured: 12 with MKL on the development CPU)."""
    device = next(model.parameters()).device
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    g = torch.Generator().manual_seed(0)
    floor = 1
    for out_features, in_features in sorted(shapes):
        w = torch.randn(min(out_features, PROBE_MAX_OUT), in_features, generator=g).to(device)
        x = torch.randn(PROBE_ROWS, in_features, generator=g).to(device)
        full = F.linear(x, w)
        for rows in range(1, PROBE_ROWS):
            if not torch.equal(F.linear(x[:rows], w), full[:rows]):
                floor = max(floor, rows + 1)
    return floor


def pad_small_matmuls(model, floor: int):
    """Make every linear layer compute an input of fewer than `floor` rows (all leading dims together) as
    `floor` rows, zeros after the real ones, and keep the real rows of the output."""
    if floor <= 1:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.forward = partial(_padded_linear, m, floor)  # an instance attribute: this model's layers only


def _padded_linear(layer: torch.nn.Linear, floor: int, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows >= floor:
        return F.linear(x, layer.weight, layer.bias)
    flat = F.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, floor - rows))
    return F.linear(flat, layer.weight, layer.bias)[:rows].reshape(*x.shape[:-1], layer.weight.shape[0])
