"""Models are plain `transformers` classes, so every checkpoint is a directory that `from_pretrained` loads.

Written for one device; `chatforge.dist.wrap` is the only place that makes a model distributed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from chatforge.config import ModelConfig
from chatforge.errors import UserError
from chatforge.tokenizer import IM_END


def build_model(cfg: ModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A fresh Llama-style decoder (RMSNorm, RoPE, SwiGLU) sized by `cfg`, vocabulary from `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_causal_lm(path: Path) -> torch.nn.Module:
    """Load a local Hugging Face causal-LM directory, or fail with a message that says why."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"{config_file}: cannot be read as a model config ({e})") from None
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise UserError(f"{config_file}: field 'architectures' is {archs}, not a causal language model")
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{path}: cannot be loaded as a causal language model ({e})") from None


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding lookup.

    With tied embeddings the shared matrix is counted once, as the unembedding, which does a matmul.
    """
    cfg = model.config
    embed = cfg.vocab_size * cfg.hidden_size
    return num_params(model) - (0 if cfg.tie_word_embeddings else embed)


def train_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6·N (forward 2N + backward 4N) plus attention scores and values: 12·layers·d·T (no causal discount)."""
    cfg = model.config
    return 6 * matmul_params(model) + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def save_pretrained(model: torch.nn.Module, tokenizer, out_dir: Path):
    """A directory `AutoModelForCausalLM` and `AutoTokenizer` load as is (weights, config, tokenizer, template)."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
