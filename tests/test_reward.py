"""The reward model: the K-way ranking loss against hand-computed values, and the tiny pipeline
sample -> rank -> reward end to end, killed and resumed, loaded back by `transformers`."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli, kill_at_first_checkpoint

from chatforge.train.reward import pairwise_accuracy, preference_pairs, ranking_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # -log σ(m) = log(1 + e^-m) = softplus(-m)


def loss_of(rewards, ranks, valid=None):
    r = torch.tensor([rewards], dtype=torch.float)
    k = torch.tensor([ranks])
    v = torch.ones_like(k, dtype=torch.bool) if valid is None else torch.tensor([valid])
    loss, pairs = ranking_loss(r, k, v)
    return float(loss[0]), int(pairs[0])


def test_k2_loss_by_hand():
    loss, pairs = loss_of([1.0, 0.0], [0, 1])
    assert pairs == 1 and loss == pytest.approx(softplus(-1.0))
    loss, _ = loss_of([1.0, 0.0], [1, 0])  # the worse answer scored higher: a larger loss
    assert loss == pytest.approx(softplus(1.0))


def test_k3_loss_by_hand_with_and_without_ties():
    loss, pairs = loss_of([2.0, 1.0, 0.0], [0, 1, 2])  # pairs (0,1) m=1, (0,2) m=2, (1,2) m=1
    assert pairs == 3 and loss == pytest.approx((softplus(-1) + softplus(-2) + softplus(-1)) / 3)
    loss, pairs = loss_of([2.0, 1.0, 0.0], [0, 1, 1])  # answers 1 and 2 tie: (1,2) is skipped
    assert pairs == 2 and loss == pytest.approx((softplus(-1) + softplus(-2)) / 2)
    loss, pairs = loss_of([2.0, 1.0, 0.0], [0, 0, 0])  # all tied: nothing to learn
    assert pairs == 0 and loss == 0.0


def test_k4_loss_by_hand_with_a_tie_group():
    rewards, ranks = [0.5, -1.0, 2.0, 0.0], [1, 2, 0, 1]  # 2 best, then {0, 3} tied, then 1
    expected = [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    loss, pairs = loss_of(rewards, ranks)
    assert pairs == len(expected)
    assert loss == pytest.approx(sum(softplus(-(rewards[i] - rewards[j])) for i, j in expected) / len(expected))


def test_k_way_loss_is_the_mean_of_its_pairwise_losses():
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 4, 6, 9):
        rewards = torch.randn(k, generator=g).tolist()
        ranks = torch.randperm(k, generator=g).tolist()
        whole, _ = loss_of(rewards, ranks)
        singles = [loss_of([rewards[i], rewards[j]], [ranks[i], ranks[j]])[0]
                   for i in range(k) for j in range(i + 1, k)]
        assert whole == pytest.approx(sum(singles) / len(singles))


def test_padding_answers_changes_nothing():
    loss3, pairs3 = loss_of([0.3, -0.2, 1.0], [2, 0, 1])
    loss4, pairs4 = loss_of([0.3, -0.2, 1.0, 99.0], [2, 0, 1, 0], valid=[True, True, True, False])
    assert (loss4, pairs4) == (pytest.approx(loss3), pairs3)


def test_prompts_with_fewer_answers_add_no_rows():
    """A batch mixing K = 3 and K = 2 prompts runs 5 answers, not 6; each reward lands on its prompt's row of the
    [B, K] grid, and the loss is the same as for the two prompts alone."""
    from types import SimpleNamespace

    from chatforge.train.reward import collate, on_grid

    items = [SimpleNamespace(seqs=[[5, 6, 7], [5, 8], [5, 9, 9, 9]], ranks=[1, 0, 2]),
             SimpleNamespace(seqs=[[4, 4], [4]], ranks=[0, 1])]
    ids, lengths, ranks, valid = collate(items, pad_id=0)
    assert ids.shape == (5, 4) and lengths.tolist() == [3, 2, 4, 2, 1]
    assert ranks.tolist() == [[1, 0, 2], [0, 1, 0]] and valid.tolist() == [[True] * 3, [True, True, False]]
    rewards = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], requires_grad=True)
    grid = on_grid(rewards, valid)
    torch.testing.assert_close(grid, torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]]))
    loss, pairs = ranking_loss(grid, ranks, valid)
    assert pairs.tolist() == [3, 1]
    assert float(loss[1].detach()) == pytest.approx(loss_of([0.4, 0.5], [0, 1])[0])
    loss.sum().backward()
    assert rewards.grad.abs().min() > 0, "every answer gets a gradient through the grid"


def test_pairs_and_accuracy():
    ranks = torch.tensor([[0, 1, 1]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert preference_pairs(ranks, valid)[0].nonzero().tolist() == [[0, 1], [0, 2]]
    right, total = pairwise_accuracy(torch.tensor([[1.0, 2.0, 0.0]]), ranks, valid)
    assert (right, total) == (1.0, 2)
    right, _ = pairwise_accuracy(torch.tensor([[1.0, 1.0, 0.0]]), ranks, valid)  # a reward tie is half right
    assert right == 1.5


def test_best_of_k_by_hand():
    from chatforge.eval.stats import best_of

    # (mean gold of the K answers, gold of the RM's pick, gold of the best), per prompt
    b = best_of([(0.5, 1.0, 1.0), (0.2, -0.4, 0.6), (0.7, 0.7, 0.7)])
    assert b["prompts"] == 3
    assert (b["random"], b["reward_model"], b["best"]) == pytest.approx((0.4667, 0.4333, 0.7667), abs=1e-4)
    assert b["share"] == pytest.approx((0.4333 - 0.4667) / (0.7667 - 0.4667), abs=1e-3)  # below 0: worse than chance
    assert best_of([(0.3, 0.3, 0.3)])["share"] is None and best_of([]) == {"prompts": 0}


def test_loss_gradient_reaches_only_what_made_the_rewards():
    rewards = torch.tensor([[0.2, -0.1, 0.4]], requires_grad=True)
    frozen = torch.tensor([[1.0, 2.0, 3.0]])  # e.g. a reference: not part of the loss
    loss, _ = ranking_loss(rewards, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool))
    loss.sum().backward()
    assert rewards.grad is not None and rewards.grad.abs().sum() > 0
    assert rewards.grad[0, 0] < 0 < rewards.grad[0, 2]  # the best answer is pushed up, the worst down
    assert frozen.grad is None


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_tiny_reward_pipeline_resumes_and_loads_in_transformers(tiny_copy):
    from transformers import AutoModelForSequenceClassification

    from chatforge.data.rankings import read_rankings, split_by_user
    from chatforge.scoring import answer_ids, load_reward_model, pad_right, rewards_of

    run = tiny_copy("rm")
    cli("sft", "--run", str(run))
    sft_before = _tree_hash(run / "sft")
    cli("sample", "--run", str(run))
    cli("rank", "--run", str(run))
    rankings, _ = read_rankings(run / "rankings" / "rankings.jsonl")
    assert rankings and all(2 <= len(r.answers) <= 4 for r in rankings)
    # the world's written safety comparisons are ranked with the samples: the demonstrated behaviour first
    samples = [json.loads(x) for x in (run / "rankings" / "samples.jsonl").read_text().splitlines()]
    written = {s["prompt_id"] for s in samples if s.get("source") == "written"}
    safety = (run / "data" / "prompts" / "safety.jsonl").read_text().splitlines()
    assert len(written) == len(safety) > 0
    assert all(r.ranks == [0, 1] for r in rankings if r.prompt_id in written)
    assert all(len(set(r.answers)) == len(r.answers) for r in rankings), "answers are de-duplicated"
    train, held = split_by_user(rankings, 0.25, 4321)
    assert not {r.user_id for r in train} & {r.user_id for r in held}
    assert not {r.prompt_id for r in train} & {r.prompt_id for r in held}

    killed_at = kill_at_first_checkpoint(run / "reward", "reward", "--run", str(run))
    assert killed_at >= 1
    out = cli("reward", "--run", str(run))
    assert f"resuming from step {killed_at}" in out.stdout + out.stderr
    summary = json.loads((run / "reward" / "summary.json").read_text())
    steps = [json.loads(x)["step"] for x in (run / "reward" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, summary["steps"] + 1)), "a resumed run logs every step once"
    assert _tree_hash(run / "sft") == sft_before, "the SFT model is not touched"

    # transformers loads the directory as is and computes our reward (minus the bias we add)
    model, tokenizer, bias = load_reward_model(run / "reward")
    hf = AutoModelForSequenceClassification.from_pretrained(str(run / "reward")).eval()
    seqs = [answer_ids(tokenizer, r.messages, a, 64) for r in rankings[:3] for a in r.answers]
    ids, lengths = pad_right(seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = rewards_of(model, ids, lengths)
        theirs = torch.stack([hf(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert bias == pytest.approx(summary["reward_bias"], abs=1e-6)

    out = cli("eval", "--run", str(run), "--stage", "reward")
    result = json.loads((run / "eval" / "reward.json").read_text())
    assert result["against"] == "gold judge" and "all" in result["pairwise_accuracy"]
    written_held = [r for r in held if r.prompt_id in written]  # reported on their own line, not in the rows
    assert result["heldout_prompts"] == len(held) - len(written_held)
    assert ("written" in result) == bool(written_held)
    assert "Spearman" in out.stdout and -1 <= result["length_bias"] <= 1
    # the world's evaluation users: answers sampled from SFT with a fixed seed, ranked by the noiseless judge
    users = result["eval_users"]
    assert users["prompts"] >= 1 and "evaluation prompts" in out.stdout
    assert users["pairs"]["all"] == sum(n for k, n in users["pairs"].items() if k != "all")
    for b in (result["best_of_k"], users["best_of_k"]):  # the RM's pick lies between the worst and the best answer
        assert b["prompts"] >= 1 and b["random"] <= b["best"] and -1 <= b["reward_model"] <= b["best"]
    assert "best of K by the RM" in out.stdout
    cli("eval", "--run", str(run), "--stage", "reward")
    assert json.loads((run / "eval" / "reward.json").read_text())["eval_users"] == users, "the same answers every time"


@pytest.mark.slow
def test_bad_rankings_file_is_a_clear_error(tiny_copy, tmp_path):
    run = tiny_copy("bad")
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}], "answers": ["a", "b", "c"], "order": [0, 1, 2]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "order": [0, 1, 1]}) + "\n")
    out = cli("reward", "--run", str(run), "--rankings", str(bad), check=False)
    assert out.returncode == 2
    assert f"{bad}:2" in out.stderr and "order" in out.stderr


def test_annotators_tie_equally_good_answers_and_order_the_rest():
    import random

    from chatforge.world.annotators import annotate, dense

    assert dense([0, 2, 0, 1]) == [0, 2, 0, 1] and dense([0, 2, 0]) == [0, 1, 0]
    assert annotate([1.0, 0.2, 1.0, -0.9], noise=0.0, rng=random.Random(0)) == [0, 1, 0, 2]
    rng = random.Random(0)
    runs = [annotate([1.0, 0.97, -0.5], noise=0.05, rng=rng) for _ in range(200)]
    assert all(r[2] == max(r) for r in runs), "a much worse answer stays last under small noise"
    assert any(r[0] == r[1] for r in runs), "near-equal answers are often called a tie"
