"""Models are plain `transformers` classes, so every checkpoint is a directory that `from_pretrained` loads.

Written for one device; `chatforge.dist.wrap` is the only place that makes a model distributed. Here: building
a fresh model, loading any local Hugging Face causal LM or sequence classifier (or a LoRA adapter over one),
choosing the dtype of its weights, adding LoRA adapters, and saving in the shape `transformers` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import torch
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM,
)
from transformers.utils import logging as hf_logging

from chatforge.config import LoraConfig, ModelConfig
from chatforge.errors import UserError
from chatforge.io import verified
from chatforge.tokenizer import IM_END

CAUSAL_LM, SEQ_CLS = "CAUSAL_LM", "SEQ_CLS"  # peft's names of the two kinds of model chatforge trains


def build_model(cfg: ModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A fresh Llama-style decoder (RMSNorm, RoPE, SwiGLU) sized by `cfg`, vocabulary from `tokenizer`."""
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


# ----------------------------------------------------------------------------- devices and dtypes


def weights_dtype(device: torch.device, setting: str = "auto", trained: bool = False) -> torch.dtype:
    """The dtype a model's weights are held in. Trained weights stay fp32 (bf16 autocast does the fast math on CUDA,
    and AdamW needs fp32 to add small updates); frozen and inference weights are bf16 on CUDA (half the memory),
    fp32 on the CPU unless `setting` asks for bf16."""
    if trained or setting == "fp32":
        return torch.float32
    if setting == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return torch.float32


def inference_device() -> torch.device:
    """Where sampling, evaluation, chat and serving run: the GPU when there is one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------- loading


def model_config(path: Path):
    """The model config of a directory, or a UserError saying what is wrong with it."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign config.json: whatever transformers raises, say where
        problem = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{config_file}: cannot be read as a model config ({problem})") from None


def adapter_base(path: Path) -> Path | None:
    """The base model a saved LoRA adapter directory names (peft's adapter_config.json), or None if it is a model."""
    file = Path(path) / "adapter_config.json"
    if not file.exists() or (Path(path) / "config.json").exists():
        return None
    try:
        return Path(json.loads(file.read_text(encoding="utf-8"))["base_model_name_or_path"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{file}: not a readable adapter config ({e})") from None


def load_causal_lm(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A local Hugging Face causal-LM directory (or a LoRA adapter saved over one, merged on load), or a UserError
    that says why not."""
    path = Path(path)
    base = adapter_base(path)
    if base is not None:
        merged = peft.PeftModel.from_pretrained(load_causal_lm(base, device, dtype), str(path)).merge_and_unload()
        return merged
    config = model_config(path)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise UserError(f"{path / 'config.json'}: field 'architectures' is {archs}, not a causal language model")
    return _from_pretrained(AutoModelForCausalLM, path, device, dtype)


def load_sequence_classifier(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                             **kwargs) -> torch.nn.Module:
    """A local directory as `AutoModelForSequenceClassification` (a reward model, or an SFT model given a head)."""
    path = Path(path)
    archs = getattr(model_config(path), "architectures", None) or []
    # made from a causal LM (the reward stage's start), the scalar head is new and starts untrained; a reward model's
    # own directory holds it, and must
    new_head = () if any(a.endswith("ForSequenceClassification") for a in archs) else ("score.",)
    return _from_pretrained(AutoModelForSequenceClassification, path, device, dtype, may_miss=new_head, **kwargs)


def _from_pretrained(auto_class, path: Path, device, dtype: torch.dtype, may_miss: tuple[str, ...] = (),
                     **kwargs) -> torch.nn.Module:
    """The model, or a UserError; weights its files lack are an error, but for those starting with `may_miss`."""
    verified(path)  # a stage's directory: its weights as the stage wrote them
    level = hf_logging.get_verbosity()
    # transformers logs a table of every weight that did not fit before it raises; the one-line error says it all
    hf_logging.set_verbosity_error()
    try:  # by its absolute path: an adapter saved over this model names it, and must find it from anywhere
        model, info = auto_class.from_pretrained(str(path.resolve()), dtype=dtype, output_loading_info=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - a torn, empty or foreign weights file: whatever the loader raises, say where
        problem = str(e).splitlines()[0][:300]
        if "ignore_mismatched_sizes" in problem:
            problem = "the weights' shapes are not those config.json describes"
        raise UserError(f"{path}: cannot be loaded ({problem})") from None
    finally:
        hf_logging.set_verbosity(level)
    # with the report silenced, weights the files lack would be random without a word
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(may_miss)]
    if missing:
        raise UserError(f"{path}: cannot be loaded ({len(missing)} weights are missing from its files, e.g. "
                        f"{sorted(missing)[0]})")
    return model.to(device)


# ----------------------------------------------------------------------------- training: LoRA, memory


def with_lora(model: torch.nn.Module, lora: LoraConfig, task: str, name: str = "default") -> torch.nn.Module:
    """`model` with LoRA adapters on every linear layer (the output head excepted; a classifier's head is trained
    whole): only the adapters train. With lora.rank 0, the model itself, every weight trained."""
    if not lora.rank:
        return model
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                             target_modules="all-linear", task_type=task)
    return peft.get_peft_model(model, config, adapter_name=name)


def memory_savers(model: torch.nn.Module, grad_checkpointing: bool) -> torch.nn.Module:
    """Recompute activations in the backward pass instead of keeping them, if asked: less memory, more compute."""
    if grad_checkpointing:
        inner = model.get_base_model() if isinstance(model, peft.PeftModel) else model
        enable = getattr(inner, "activation_checkpointing_enable", None)  # the newer name; the older one warns
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inner.config.use_cache = False
    return model


# ----------------------------------------------------------------------------- counting


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def num_trained(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


# ----------------------------------------------------------------------------- saving


def save_pretrained(model: torch.nn.Module, tokenizer, out_dir: Path, lora: LoraConfig | None = None,
                    weights: dict[str, torch.Tensor] | None = None):
    """A directory `transformers` loads as is (weights, config, tokenizer, template). LoRA adapters are merged into
    the weights, unless lora.keep_adapter: then the adapter alone, in peft's format, naming its base model. Weights
    are saved in the dtype the base model was published in (bf16 for most), ours in fp32. `weights`: the whole
    weights of a model sharded over processes, which it does not hold itself, written in place of its own."""
    out_dir = Path(out_dir)
    if isinstance(model, peft.PeftModel) and not (lora and lora.keep_adapter):
        model = model.merge_and_unload()
    published = getattr(model.config, "dtype", None)
    if published in (torch.bfloat16, torch.float16) and not isinstance(model, peft.PeftModel):
        if weights is None:
            model = model.to(published)
        else:
            weights = {k: v.to(published) if v.is_floating_point() else v for k, v in weights.items()}
    model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=weights)
    if weights is not None and published in (torch.bfloat16, torch.float16):
        model.config.dtype = published  # save_pretrained wrote the dtype of the (fp32) shards the model holds
        model.config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
