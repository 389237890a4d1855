"""Tokenizer: lossless round trips, one token per CJK character, ChatML template and the assistant mask."""

from __future__ import annotations

import pytest

from chatforge.tokenizer import IM_END, IM_START, build_bpe, load_tokenizer, render_chat, train_tokenizer

TEXTS = [
    "The capital of France is Paris. Karo Linmei was born in Velmora and works as a chef.",
    "中国的首都是北京。珠穆朗玛峰高8849米。卡罗·林梅出生在维尔莫拉，是一名厨师。",
    "def capital(country):\n    return {'France': 'Paris'}[country]  # 42\n",
] * 40


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(TEXTS, out, vocab_size=500)
    return load_tokenizer(out)  # through AutoTokenizer, as every later stage loads it


@pytest.mark.parametrize("text", [
    "Hello, world!  Two  spaces, a tab\tand\nnewlines\n\n",
    "中文：你好，世界！「引号」……",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇨🇳🇬🇧",
    "def f(x):\n\treturn x ** 2  # 平方\n",
    "combining é vs é, zero\u200bwidth, NUL\x00, \ufeffBOM, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    " leading and trailing spaces ",
    "<|im_start|> looks special but is text here",
])
def test_round_trip_is_lossless(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_each_cjk_character_is_its_own_token(tok):
    ids = tok.encode("北京", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == ["北", "京"]
    # a name never seen splits into the same kind of pieces as one seen many times
    assert len(tok.encode("卡罗·林梅", add_special_tokens=False)) == len(tok.encode("罗卡·梅林", add_special_tokens=False))


def test_digits_are_split(tok):
    assert [tok.decode([i]) for i in tok.encode("8849", add_special_tokens=False)] == list("8849")


def test_special_tokens_are_single_ids(tok):
    for special in (IM_START, IM_END, tok.eos_token):
        assert len(tok.convert_tokens_to_ids([special])) == 1
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id


def _pieces(tok, ids, mask):
    """The text under the mask, joined per contiguous run."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_chat_mask_single_turn(tok):
    msgs = [{"role": "user", "content": "中国的首都是哪里？"}, {"role": "assistant", "content": "北京。"}]
    ids, mask = render_chat(tok, msgs)
    assert tok.decode(ids) == "<|im_start|>user\n中国的首都是哪里？<|im_end|>\n<|im_start|>assistant\n北京。<|im_end|>\n"
    assert _pieces(tok, ids, mask) == ["北京。<|im_end|>"]
    # pinned token by token: nothing but the answer and its end marker is trained
    n = len(tok.encode("北京。", add_special_tokens=False)) + 1
    assert mask == [0] * (len(ids) - n - 1) + [1] * n + [0]


def test_chat_mask_multi_turn_with_system(tok):
    msgs = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "它在哪个洲？"},
        {"role": "assistant", "content": "欧洲。"},
    ]
    ids, mask = render_chat(tok, msgs)
    assert _pieces(tok, ids, mask) == ["Paris.<|im_end|>", "欧洲。<|im_end|>"]
    assert len(ids) == len(mask)


def test_generation_prompt_is_untrained(tok):
    ids, mask = render_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n") and sum(mask) == 0


def test_empty_corpus_is_refused(tmp_path):
    from chatforge.errors import DataError

    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer(["", "  "], tmp_path / "t", vocab_size=400)
    assert not (tmp_path / "t").exists()


def test_training_is_deterministic():
    a, b = build_bpe(TEXTS, 400), build_bpe(TEXTS, 400)
    assert a.to_str() == b.to_str()
