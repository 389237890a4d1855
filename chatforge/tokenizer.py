"""Byte-level BPE tokenizer, trained on the corpus, with ChatML special tokens and chat template.

Lossless by construction: no normaliser, every one of the 256 bytes in the base alphabet, and a
byte-level decoder, so `decode(encode(text)) == text` for any Unicode string.

Two pre-tokenisation choices matter at this scale:
- each CJK character (and full-width punctuation mark) is its own piece, so BPE never merges two
  Chinese characters: a name the model has never seen splits exactly like one it has;
- digits are split one by one, so 8849 and 8848 share their pieces.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterable

from jinja2 import TemplateError, TemplateSyntaxError
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from chatforge.data.corpus import corpus_dir, discover_sources, read_documents
from chatforge.errors import DataError
from chatforge.io import read_json, read_jsonl

EOS = "<|endoftext|>"  # ends a pretraining document; also the padding token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends a chat turn: an assistant answer is complete when it emits this
SPECIAL_TOKENS = [EOS, IM_START, IM_END]
# The JSON files a Hugging Face tokenizer folder may hold, each an object
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

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
    """A directory's tokenizer (as `transformers` loads it), with a pad token (its end of sequence, if it has
    none: padding is never attended to); a missing or damaged one is a DataError."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"{path}: no tokenizer.json here (run `chatforge tokenizer` first)")
    # read first, so that a damaged one is named, not a message without a file (AutoTokenizer reads config.json too)
    for name in (*TOKENIZER_FILES, "config.json"):
        if not isinstance(read_json(path / name), (dict, type(None))):
            raise DataError(f"{path / name}: expected a JSON object")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception kinds for a damaged file
        problem = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"{path / 'tokenizer.json'}: cannot be read as a tokenizer ({problem})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _check_template(tokenizer, path)
    return tokenizer


def _check_template(tokenizer, path: Path):
    """A chat template that is not valid Jinja is named when its folder is loaded, not at the first conversation
    (in the middle of a chat, or of a stage). Only syntax: a template may refuse conversations on purpose."""
    if not isinstance(tokenizer.chat_template, str):
        return
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    except TemplateSyntaxError as e:
        where = path / "chat_template.jinja" if (path / "chat_template.jinja").is_file() else path / "tokenizer_config.json"
        raise DataError(f"{where}: the chat template is not valid Jinja (line {e.lineno}: {e.message})") from None
    except TemplateError:  # the template's own raise_exception, or a variable it wants: the conversations' business
        pass


def run(run_dir: Path, recipe, out: Path):
    """The tokenizer stage: train on the corpus (the user's `pretrain.corpus`, else the world's name-scrambled
    tokenizer corpus) and write out/ whole or not at all."""
    t0 = time.time()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = train_tokenizer(training_texts(run_dir, recipe.pretrain.corpus), tmp, recipe.tokenizer.vocab_size,
                          recipe.tokenizer.min_frequency)
    tmp.rename(out)
    print(f"tokenizer: {len(tok)} tokens, trained in {time.time() - t0:.1f}s -> {out}")
    return tok


def training_texts(run_dir: Path, own_corpus: str) -> Iterable[str]:
    """The user's corpus `own_corpus` if given; else the world's tokenizer corpus (the corpus with fresh names, so
    that names the world never uses split like those it does), else every training document of the run's corpus."""
    special = Path(run_dir) / "data" / "tokenizer_corpus.jsonl"
    if not own_corpus and special.exists():
        for lineno, obj in read_jsonl(special):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f"{special}:{lineno}: field 'text' is missing or not a string")
            yield obj["text"]
        return
    for src in discover_sources(corpus_dir(run_dir, own_corpus)).values():
        for f in src.train_files:
            yield from read_documents(f)


# The tokens chat templates close an assistant turn with: ChatML's (ours), Llama 3's, Gemma's, Phi's.
END_OF_TURN = (IM_END, "<|eot_id|>", "<end_of_turn>", "<|end|>")


def answer_stop_ids(tokenizer) -> list[int]:
    """The tokens that end a sampled answer: the template's end of turn (<|im_end|> in ours), and the end of
    sequence (<|endoftext|> from a model that never learnt the first)."""
    turn = [tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN]
    turn = [i for i, t in zip(turn, END_OF_TURN) if i is not None and tokenizer.convert_ids_to_tokens(i) == t]
    return list(dict.fromkeys(i for i in [*turn, tokenizer.eos_token_id] if i is not None))


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """The one place a conversation becomes (ids, loss_mask), for any chat template: the model's own rendering of the
    whole conversation, tokenised as the model's tokenizer does, with mask 1 on every assistant answer and the token
    that ends its turn. Message text stays text: a `<|im_end|>` typed by a user is not a turn boundary.

    max_tokens: only that many tokens will be used, so text past where they could reach is not tokenised (a 20 MB
    dialogue is cut to what its first max_tokens tokens can cover, not tokenised whole to be cut afterwards)."""
    text = _apply(tokenizer, messages, add_generation_prompt)
    contents = _content_spans(text, messages)
    answers = [_answer_span(tokenizer, messages, i, text) for i, m in enumerate(messages) if m["role"] == "assistant"]
    if max_tokens is not None:  # twice the reach of the longest tokens, and room for a word cut at the end
        text = text[: 2 * max_tokens * _longest_token(tokenizer) + 1024]
    ids, offsets = _encode(tokenizer, text, contents)
    mask = [int(any(s < b and e > a for a, b in answers) and e > s) for s, e in offsets]
    return ids, mask


def _longest_token(tokenizer) -> int:
    """The most characters one token of the vocabulary stands for (cached on the tokenizer)."""
    if not hasattr(tokenizer, "_chatforge_longest"):
        tokenizer._chatforge_longest = max(len(tokenizer.convert_tokens_to_string([t])) for t in tokenizer.get_vocab())
    return max(1, tokenizer._chatforge_longest)


def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template's text of `messages`; a template that refuses them (e.g. one without a system role) is a
    DataError in its own words."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateError and the template's own raise_exception
        if not tokenizer.chat_template:
            raise DataError("the tokenizer has no chat template, so conversations cannot be rendered") from None
        raise DataError(f"the chat template cannot render this conversation: {e}") from None


def _content_spans(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Where each message's text sits in the rendered conversation, in order (a template may trim it)."""
    spans, at = [], 0
    for m in messages:
        for content in (m["content"], m["content"].strip()):
            start = text.find(content, at) if content else -1
            if start >= 0:
                spans.append((start, start + len(content)))
                at = start + len(content)
                break
    return spans


def _answer_span(tokenizer, messages: list[dict], i: int, text: str) -> tuple[int, int]:
    """The characters of assistant turn i that a model learns to write: from where the generation prompt leaves
    off to the end of the answer and the special token that closes the turn. Found by rendering the conversation
    before the answer (with the generation prompt) and with it; both must be prefixes of the whole rendering, or
    the template rewrites earlier turns and no mask can be trusted."""
    before = _apply(tokenizer, messages[:i], add_generation_prompt=True)
    upto = _apply(tokenizer, messages[: i + 1], add_generation_prompt=False)
    if not (upto.startswith(before) and text.startswith(upto)):
        raise DataError("the chat template does not render a conversation turn by turn (an earlier turn changes "
                        "when a later one is added), so the assistant's tokens cannot be told apart")
    content = messages[i]["content"]
    found = upto.find(content, len(before)) if content else -1
    end = found + len(content) if found >= 0 else len(upto.rstrip())
    return len(before), end + _closer_length(tokenizer, upto[end:])


def _closer_length(tokenizer, tail: str) -> int:
    """How far past an answer the special token that closes its turn ends, when one follows (after whitespace)."""
    stripped = tail.lstrip()
    for token in _turn_closers(tokenizer):
        if stripped.startswith(token):
            return len(tail) - len(stripped) + len(token)
    return 0


def _segments(length: int, contents: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """(start, end, is a message's text) pieces that cover [0, length), the messages' spans among them."""
    pieces, at = [], 0
    for start, end in contents:
        pieces += [(at, start, False), (start, end, True)]
        at = end
    return [p for p in [*pieces, (at, length, False)] if p[1] > p[0]]


def _turn_closers(tokenizer) -> list[str]:
    """The special tokens that can end an assistant turn: the end-of-sequence and end-of-turn markers."""
    return [tokenizer.convert_ids_to_tokens(i) for i in answer_stop_ids(tokenizer) if i is not None]


def _encode(tokenizer, text: str, contents: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character span of each token) of the rendered text. Tokenised whole, as the model's tokenizer does; but
    where a special token turns up inside a message's text, the text is tokenised piece by piece, the messages
    with special tokens read as plain text, so no one can forge a turn by typing its markers."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.added_tokens_decoder)
    forged = any(i in special and any(a <= s and e <= b for a, b in contents)
                 for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]))
    if not forged:
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids, offsets = [], []
    for start, end, plain in _segments(len(text), contents):
        part = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True,
                         split_special_tokens=plain)
        ids += part["input_ids"]
        offsets += [(s + start, e + start) for s, e in part["offset_mapping"]]
    return ids, offsets
