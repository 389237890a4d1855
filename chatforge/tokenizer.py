"""Byte-level BPE tokenizer, trained on the corpus, with ChatML special tokens and chat template.

Lossless by construction: no normaliser, every one of the 256 bytes in the base alphabet, and a
byte-level decoder, so `decode(encode(text)) == text` for any Unicode string.

Two pre-tokenisation choices matter at this scale:
- each CJK character (and full-width punctuation mark) is its own piece, so BPE never merges two
  Chinese characters: a name the model has never seen splits exactly like one it has;
- digits are split one by one, so 8849 and 8848 share their pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from chatforge.errors import DataError

EOS = "<|endoftext|>"  # ends a pretraining document; also the padding token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends a chat turn: an assistant answer is complete when it emits this
SPECIAL_TOKENS = [EOS, IM_START, IM_END]

CJK = r"[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"

# ChatML. Assistant turns sit inside {% generation %} so that
# apply_chat_template(..., return_assistant_tokens_mask=True) marks exactly the tokens trained on:
# the answer and its closing <|im_end|> (the model must learn to stop), not the "\n" after it.
CHAT_TEMPLATE = """\
{%- for message in messages %}
{%- if message['role'] == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}
{%- else %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Seen by the trainer so the chat scaffolding is a few tokens, not a dozen bytes.
_CHAT_WORDS = ["system\n", "user\n", "assistant\n"] * 200


def build_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_with_chat_words(texts), trainer)
    return tok


def _with_chat_words(texts: Iterable[str]):
    yield from _CHAT_WORDS
    yield from texts


def wrap(tok: Tokenizer, max_len: int = 4096):
    """A `transformers` tokenizer around a trained `tokenizers.Tokenizer`, chat template included."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # would rewrite " ." as "." and break round trips
        model_max_length=max_len,
        padding_side="left",  # generation pads on the left so every prompt ends at the same column
    )


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int, min_frequency: int = 2):
    """Train on `texts` and save a Hugging Face tokenizer directory (tokenizer.json, config, chat_template.jinja)."""
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise DataError(f"cannot train a tokenizer on an empty corpus (output would be {out_dir})")
    hf = wrap(build_bpe(texts, vocab_size, min_frequency))
    hf.save_pretrained(str(out_dir))
    return hf


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise DataError(f"{path}: no tokenizer.json here (run `chatforge tokenizer` first)")
    return AutoTokenizer.from_pretrained(str(path))


def answer_stop_ids(tokenizer) -> list[int]:
    """The tokens that end a sampled answer: <|im_end|>, and <|endoftext|> from a model that never learnt it."""
    return [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """The one place a conversation becomes (ids, loss_mask): mask 1 on assistant answers and their <|im_end|>."""
    out = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
    )
    return list(out["input_ids"]), list(out["assistant_masks"])
