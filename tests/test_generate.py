"""Batched KV-cached generation: greedy parity with transformers' generate, left padding, sampling filters."""

from __future__ import annotations

import pytest
import torch

from chatforge.generate import generate, sample_next


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def test_greedy_matches_transformers_generate_with_left_padding(model):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, 97, (n,), generator=g).tolist() for n in (3, 9, 6, 1)]
    ours = generate(model, prompts, 12, pad_id=0, stop_ids=[1])
    for prompt, gen in zip(prompts, ours):  # each prompt alone, no padding, through transformers
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=0)
        ref_new = ref[0, len(prompt):].tolist()
        if 1 in ref_new:
            ref_new = ref_new[: ref_new.index(1)]
        assert gen.tokens == ref_new


def test_stop_token_ends_a_row_and_is_not_returned(model):
    prompts = [[5, 6, 7], [8, 9]]
    free = generate(model, prompts, 6, pad_id=0, stop_ids=[1])
    first = free[0].tokens[0]
    stopped = generate(model, prompts, 6, pad_id=0, stop_ids=[first])
    assert stopped[0].tokens == [] and stopped[0].finished
    assert not free[0].finished or 1 not in free[0].tokens


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits).item() == 3
    top1 = {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)}
    assert top1 == {3}
    top2 = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert top2 == {2, 3}
    # top_p 0.5: token 3 alone holds 64% of the mass, so it is the only candidate
    nucleus = {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(50)}
    assert nucleus == {3}
