"""PPO: the pure pieces against hand-computed values and a plain reference loop; the frozen models stay
frozen; a large β keeps the policy at the reference; the tiny stage resumes after a kill; bad input."""

import json
import math
import shutil

import pytest
import torch

from chatforge.scoring import answer_logits, entropy_of, kl_k1, kl_k3, layout, token_logprobs
from chatforge.train.ppo import (
    AdapterView, ValueView, adaptive_kl, explained_variance, gae, masked_mean, masked_var, masked_whiten,
    overoptimisation, policy_loss, token_rewards, value_loss,
)
from conftest import RECIPES, cli, kill_at_first_checkpoint, top_level

# ----------------------------------------------------------------------------- masked statistics


def test_masked_statistics_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(masked_mean(x, mask)) == pytest.approx(2.0)
    assert float(masked_var(x, mask)) == pytest.approx(1.0)  # unbiased: ((1-2)² + 0 + (3-2)²) / 2
    white = masked_whiten(x, mask)
    assert white[mask.bool()].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert white[~mask.bool()].abs().sum() == 0
    kept = masked_whiten(x, mask, shift_mean=False)
    assert kept[mask.bool()].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


# ----------------------------------------------------------------------------- GAE


def _gae_reference(rewards, values, lengths, gamma, lam):
    """GAE the way the paper writes it, one answer at a time, with plain floats."""
    advantages = [[0.0] * len(rewards[0]) for _ in rewards]
    for b, n in enumerate(lengths):
        for t in range(n):
            total = 0.0
            for k in range(t, n):
                next_value = values[b][k + 1] if k + 1 < n else 0.0
                delta = rewards[b][k] + gamma * next_value - values[b][k]
                total += (gamma * lam) ** (k - t) * delta
            advantages[b][t] = total
    return advantages


def test_gae_by_hand():
    # one answer of two tokens, γ = 1, λ = 0.5: δ1 = 1 - 0.5 = 0.5, δ0 = 0 + 0.5 - 0.2 = 0.3, A0 = 0.3 + 0.5·0.5
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.5]]), torch.ones(1, 2), gamma=1.0, lam=0.5)
    assert adv.tolist() == [pytest.approx([0.55, 0.5])]
    assert ret.tolist() == [pytest.approx([0.75, 1.0])]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_the_reference_loop_with_padding(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3, 1, 4]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    rewards, values = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = _gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(expected))
    torch.testing.assert_close(ret, (torch.tensor(expected) + values) * mask)
    assert adv[mask == 0].abs().sum() == 0 and ret[mask == 0].abs().sum() == 0


def test_lambda_one_gives_monte_carlo_returns():
    """With γ = λ = 1 the return of every token is the sum of the rewards from it to the end."""
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, ret = gae(rewards, torch.randn(1, 4), mask, 1.0, 1.0)
    assert ret[0, :3].tolist() == pytest.approx([0.9, 0.8, 1.0])


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.5, 0.5, 0.5], [1.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    r = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.1)
    assert r.tolist() == [pytest.approx([-0.05, -0.05, 1.95]), pytest.approx([-1.1, 0.0, 0.0])]


# ----------------------------------------------------------------------------- losses


def test_clipped_policy_loss_by_hand():
    # A = +1 with ρ = 1.5: max(-1.5, -1.2) = -1.2 (clipped); A = -1 with ρ = 0.5: max(0.5, 0.8) = 0.8 (clipped)
    new = torch.log(torch.tensor([[1.5, 0.5, 7.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = policy_loss(new, old, adv, mask, clip=0.2)
    assert float(loss) == pytest.approx((-1.2 + 0.8) / 2)
    assert stats["clipfrac"] == pytest.approx(1.0)
    assert stats["approx_kl"] == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)
    # inside the clip range the loss is the plain surrogate -A·ρ, and nothing is clipped
    loss, stats = policy_loss(torch.log(torch.tensor([[1.1, 0.9]])), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]),
                              torch.ones(1, 2), clip=0.2)
    assert float(loss) == pytest.approx((-1.1 + 0.9) / 2) and stats["clipfrac"] == 0.0


def test_clipped_policy_loss_stops_the_gradient_past_the_clip():
    new = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] < 0  # the clipped token gets no push; the other is pushed up


def test_clipped_value_loss_by_hand():
    # V_old 0, R 1: V = 0.5 is inside ±0.2? no: V_clip = 0.2, max((0.5-1)², (0.2-1)²) = 0.64
    # V = 0.1: inside, both terms 0.81
    loss, stats = value_loss(torch.tensor([[0.5, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert stats["value_clipfrac"] == pytest.approx(0.5)


def test_explained_variance():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.5), returns, mask) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_are_unbiased_for_sampled_tokens():
    """Averaged over tokens drawn from π, k1 and k3 both estimate KL(π || π_ref); k3 is never negative."""
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(12, generator=g), -1)
    ref = torch.log_softmax(torch.randn(12, generator=g), -1)
    exact = float((logp.exp() * (logp - ref)).sum())
    draws = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=g)
    k1, k3 = kl_k1(logp[draws], ref[draws]), kl_k3(logp[draws], ref[draws])
    assert float(k1.mean()) == pytest.approx(exact, rel=0.05)
    assert float(k3.mean()) == pytest.approx(exact, rel=0.05)
    assert float(k3.min()) >= 0.0 and float(k1.min()) < 0.0


def test_adaptive_kl_controller():
    assert adaptive_kl(0.1, kl=8.0, target=4.0, horizon=1000, episodes=100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert adaptive_kl(0.1, kl=3.6, target=4.0, horizon=1000, episodes=100) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    assert adaptive_kl(0.1, kl=0.0, target=4.0, horizon=1000, episodes=100) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    assert adaptive_kl(0.1, kl=4.0, target=4.0, horizon=1000, episodes=100) == pytest.approx(0.1)


def test_token_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1.0, 1e-9, 1e-9]]]))
    assert token_logprobs(logits, torch.tensor([[1, 0]])).tolist() == [pytest.approx([math.log(0.25), 0.0], abs=1e-6)]
    assert entropy_of(logits)[0].tolist() == pytest.approx([1.5 * math.log(2), 0.0], abs=1e-6)


def test_layout_puts_every_answer_token_after_its_own_prompt():
    ids, attention, positions, mask = layout([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert attention.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert positions[1, 2:].tolist() == [0, 1, 2, 3] and positions[0, :5].tolist() == [0, 1, 2, 3, 4]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_overoptimisation_is_named_when_gold_falls_and_the_proxy_rises():
    rising = [{"step": i + 1, "kl": i * 0.5, "reward/rm": 0.1 * i, "reward/gold": 0.5 + 0.02 * min(i, 8) - 0.05 * max(0, i - 8)}
              for i in range(20)]
    assert "overoptimised" in overoptimisation(rising)
    steady = [{**r, "reward/gold": 0.5 + 0.01 * i} for i, r in enumerate(rising)]
    assert "overoptimised" not in overoptimisation(steady)
    # one lucky first batch is noise, not a peak: flat gold after it, the proxy rising
    lucky = [{**r, "reward/gold": 0.9 if i == 0 else 0.7} for i, r in enumerate(rising)]
    assert "overoptimised" not in overoptimisation(lucky)
    assert overoptimisation(lucky)["gold_peak"]["step"] >= 5


# ----------------------------------------------------------------------------- the stage


@pytest.fixture
def rm_copy(tiny_rm, tmp_path):
    def make(name):
        dst = tmp_path / name
        shutil.copytree(tiny_rm, dst, ignore=top_level(tiny_rm, "ppo", "eval"))
        return dst

    return make


def _iteration(run, **changes):
    """Models, prompts and pieces of one tiny PPO run, for tests that drive the loop by hand."""
    from dataclasses import replace

    from chatforge import dist
    from chatforge.config import load_recipe
    from chatforge.train import ppo
    from chatforge.train.loop import make_optimizer

    recipe = load_recipe(RECIPES / "tiny.yaml")
    cfg = replace(recipe.ppo, **changes)
    d = dist.init()
    prompts, report = ppo.load_ppo_prompts(run, replace(recipe, ppo=cfg))
    models = ppo.load_models(run, replace(recipe, ppo=cfg), d)
    scorer = ppo.Scorer(models.reward, models.bias, models.tokenizer, report["context"], cfg.unfinished_penalty)
    optimizers = {"policy": make_optimizer(models.policy_params, cfg.optim),
                  "value": make_optimizer(models.value_params, cfg.optim, lr=cfg.value_lr)}
    return cfg, d, models, scorer, prompts, optimizers


@pytest.mark.slow
def test_reference_and_reward_model_get_no_gradient_and_do_not_change(rm_copy):
    from chatforge.train import ppo

    cfg, d, models, scorer, prompts, opts = _iteration(rm_copy("frozen"), ppo_epochs=1)
    ref, rm, policy = models.reference, models.reward, models.policy
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in (("ref", ref), ("rm", rm))}
    policy_before = [p.detach().clone() for p in policy.parameters()]
    batch = ppo.rollout(models, scorer, prompts[:8], cfg, 0.05, None, d.device)
    ppo.optimise(policy, models.value, models, opts, batch, cfg, None, 0, d)
    for name, m in (("ref", ref), ("rm", rm)):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters()), name
        assert all(torch.equal(a, b) for a, b in zip(before[name], m.parameters())), name
    assert not all(torch.equal(a, b) for a, b in zip(policy_before, policy.parameters())), "the policy did train"


@pytest.mark.slow
def test_ppo_trains_the_distribution_it_sampled_from(rm_copy):
    """At a rollout temperature T the answers come from softmax(logits / T): the rollout's log-probabilities (policy
    and reference) are of that distribution, so the first update starts on-policy (ratio 1, nothing clipped)."""
    from chatforge.train import ppo

    cfg, d, models, scorer, prompts, opts = _iteration(
        rm_copy("temperature"), temperature=0.5, ppo_epochs=1, minibatches=1)
    batch = ppo.rollout(models, scorer, prompts[:8], cfg, 0.05, None, d.device)
    w, tokens, mask = batch.prompt_width, batch.ids[:, batch.prompt_width:], batch.answer_mask
    with torch.no_grad():
        for model, logp in ((models.policy, batch.old_logp), (models.reference, batch.ref_logp)):
            logits = answer_logits(model, batch.ids, batch.attention, batch.positions, w)
            assert torch.allclose(logp * mask, token_logprobs(logits / 0.5, tokens) * mask, atol=1e-5)
            assert not torch.allclose(logp * mask, token_logprobs(logits, tokens) * mask, atol=1e-3)
    stats = ppo.optimise(models.policy, models.value, models, opts, batch, cfg, None, 0, d)
    assert stats["approx_kl"] < 1e-10 and stats["clipfrac"] == 0.0


@pytest.mark.slow
def test_micro_batches_give_the_minibatch_gradient(rm_copy, monkeypatch):
    """ppo.micro_batch_size only cuts the work into smaller passes: the rollout's log-probabilities and values, the
    accumulated gradients (ptx included) and the statistics are those of the whole minibatch in one pass."""
    from dataclasses import replace

    from chatforge.config import load_recipe
    from chatforge.train import ppo

    run = rm_copy("micro")
    torch.manual_seed(0)
    cfg, d, models, scorer, prompts, opts = _iteration(run, ppo_epochs=1, minibatches=1)
    batch = ppo.rollout(models, scorer, prompts[:8], cfg, 0.05, None, d.device)
    whole = ppo._score_rows(models, batch.ids, batch.attention, batch.positions, batch.prompt_width, cfg, d.device)
    sliced = [ppo._score_rows(models, batch.ids[rows], batch.attention[rows], batch.positions[rows],
                              batch.prompt_width, cfg, d.device) for rows in ppo._row_slices(8, 3)]
    for a, b in zip(whole, (torch.cat(part) for part in zip(*sliced))):
        assert torch.allclose(a * batch.answer_mask, b * batch.answer_mask, atol=1e-5)

    grads = []
    real_step = ppo.clip_and_step

    def recording_step(params, optimizer, max_norm):
        grads.append([p.grad.clone() for p in params if p.grad is not None])
        return real_step(params, optimizer, max_norm)

    monkeypatch.setattr(ppo, "clip_and_step", recording_step)
    recipe = load_recipe(RECIPES / "tiny.yaml")
    stats = {}
    for size in (0, 3):  # 3: micro-batches of 3, 3 and 2 episodes, of different answer lengths
        torch.manual_seed(1)
        cfg, d, models, scorer, prompts, opts = _iteration(run, ppo_epochs=1, minibatches=1, micro_batch_size=size)
        ptx = ppo._ptx_sampler(run, replace(recipe, ppo=cfg), models.tokenizer)
        stats[size] = ppo.optimise(models.policy, models.value, models, opts, batch, cfg, ptx, 0, d)
    assert len(grads) == 4  # policy and value steps, for each size
    for one, accumulated in ((grads[0], grads[2]), (grads[1], grads[3])):
        assert len(one) == len(accumulated) > 0
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(one, accumulated))
    assert stats[0].keys() == stats[3].keys() and stats[0]["ptx_loss"] > 0
    assert all(math.isclose(stats[0][k], stats[3][k], rel_tol=1e-4, abs_tol=1e-6) for k in stats[0]), stats


def _exact_kl(policy, reference, batch) -> float:
    """Mean over answer tokens of the exact KL(π || π_ref) of the next-token distributions (no sampling noise)."""
    w = batch.prompt_width
    with torch.no_grad():
        lp = answer_logits(policy, batch.ids, batch.attention, batch.positions, w).log_softmax(-1)
        lq = answer_logits(reference, batch.ids, batch.attention, batch.positions, w).log_softmax(-1)
    return float(masked_mean((lp.exp() * (lp - lq)).sum(-1), batch.answer_mask))


@pytest.mark.slow
def test_large_beta_keeps_the_policy_at_the_reference(rm_copy):
    """With a huge KL penalty the reward is all KL: the policy stays at the reference, while without a
    penalty it drifts away. (The first update cannot be held: the policy starts at the reference, so its
    answers have KL 0 and their reward is the RM score alone, whatever β is.)"""
    from dataclasses import replace

    from chatforge.config import load_recipe
    from chatforge.train import ppo

    kls = {}
    for beta in (0.0, 50.0):
        torch.manual_seed(0)
        recipe = load_recipe(RECIPES / "tiny.yaml")
        cfg, d, models, scorer, prompts, opts = _iteration(
            rm_copy(f"beta{beta}"), optim=replace(recipe.ppo.optim, lr=1e-4), adaptive_kl=False, ppo_epochs=4)
        fixed = ppo.rollout(models, scorer, prompts[:24], cfg, beta, None, d.device)
        kls[beta] = []
        for it in range(6):
            batch = ppo.rollout(models, scorer, prompts[:16], cfg, beta, None, d.device)
            ppo.optimise(models.policy, models.value, models, opts, batch, cfg, None, it, d)
            kls[beta].append(_exact_kl(models.policy, models.reference, fixed))
    assert max(kls[50.0][2:]) < 0.02, kls
    assert kls[0.0][-1] > 5 * kls[50.0][-1] and kls[0.0][-1] > kls[0.0][0], kls


@pytest.mark.slow
def test_tiny_ppo_resumes_after_a_kill_and_loads_in_transformers(rm_copy):
    from transformers import AutoModelForCausalLM

    run = rm_copy("resume")
    killed_at = kill_at_first_checkpoint(run / "ppo", "ppo", "--run", str(run))
    assert killed_at >= 1
    out = cli("ppo", "--run", str(run))
    assert f"resuming from iteration {killed_at}" in out.stdout + out.stderr
    summary = json.loads((run / "ppo" / "summary.json").read_text())
    records = [json.loads(x) for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, summary["iterations"] + 1)), "each iteration logged once"
    for key in ("reward/rm", "reward/gold", "kl", "entropy", "clipfrac", "approx_kl", "value_loss",
                "explained_variance", "length", "ptx_loss", "beta"):
        assert key in records[-1], key
    assert (run / "ppo" / "overoptimisation.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["step"] for p in summary["curve"]] == [r["step"] for r in records]
    model = AutoModelForCausalLM.from_pretrained(str(run / "ppo"))
    assert type(model).__name__ == "LlamaForCausalLM" and (run / "ppo" / "chat_template.jinja").exists()
    cli("eval", "--run", str(run), "--stage", "ppo")
    assert (run / "eval" / "ppo.json").exists()


@pytest.mark.slow
def test_bad_prompts_are_clear_errors_or_counted_skips(rm_copy, tmp_path):
    run = rm_copy("bad")
    prompts = tmp_path / "prompts.jsonl"
    long = "word " * 400
    prompts.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "What is the capital of France?"}, {"prompt": ""}, {"prompt": long}, {"prompt": "Hi there"}]) + "\n")
    out = cli("ppo", "--run", str(run), "--prompts", str(prompts), check=False)
    assert out.returncode == 2 and f"{prompts}:2" in out.stderr, out.stderr
    prompts.write_text("\n".join(json.dumps(x) for x in [{"prompt": "What is the capital of France?"},
                                                        {"prompt": long}]) + "\n")
    out = cli("ppo", "--run", str(run), "--prompts", str(prompts), check=False)
    assert out.returncode == 2 and f"{prompts}:2" in out.stderr and "fit" in out.stderr, out.stderr
    prompts.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "What is the capital of France?"}, {"prompt": ""}, {"prompt": long}, {"prompt": "Hi there"}]) + "\n")
    out = cli("ppo", "--run", str(run), "--prompts", str(prompts), "--skip-invalid", "--set", "ppo.iterations=1")
    assert "2 prompts skipped (1 too long" in out.stdout + out.stderr


@pytest.mark.slow
def test_a_reward_model_with_another_tokenizer_is_refused(rm_copy, chat_model):
    run = rm_copy("othertok")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(chat_model / name, run / "reward" / name)
    out = cli("ppo", "--run", str(run), check=False)
    assert out.returncode == 2 and "tokenizer differs" in out.stderr, out.stderr


@pytest.mark.slow
def test_the_gold_judge_can_stand_in_for_the_reward_model(rm_copy, tmp_path):
    """ppo.reward=judge: every answer's reward is its gold reward (less the penalty if it never ended), so the proxy
    and the gold curves coincide; it needs the world's prompts, and says so for the user's own."""
    from chatforge.train import ppo
    from chatforge.world.judge import Judge

    run = rm_copy("judge")
    cfg, d, models, _, prompts, _ = _iteration(run)
    judge = Judge.from_world(run / "data")
    scorer = ppo.JudgeScorer(judge, unfinished_penalty=0.5)
    some = prompts[:4]
    texts = ["Sorry, I can't help with that.", "I don't know.", "Paris.", "你好！"]
    score, own = scorer(some, texts, [True, True, False, True])
    gold = [judge.score(p, t, f).total for p, t, f in zip(some, texts, [True, True, False, True])]
    assert own.tolist() == pytest.approx(gold) and (own - score).tolist() == pytest.approx([0, 0, 0.5, 0])
    batch = ppo.rollout(models, scorer, prompts[:8], cfg, 0.05, judge, d.device)
    assert batch.stats["reward/rm"] == pytest.approx(batch.stats["reward/gold"])

    out = cli("ppo", "--run", str(run), "--reward", "judge", "--out", "ppo-judge", "--set", "ppo.iterations=1")
    assert "reward: the gold judge" in out.stdout + out.stderr and (run / "ppo-judge" / "summary.json").exists()
    own_prompts = tmp_path / "prompts.jsonl"
    own_prompts.write_text(json.dumps({"prompt": "What is the capital of France?"}) + "\n")
    out = cli("ppo", "--run", str(run), "--reward", "judge", "--prompts", str(own_prompts), "--out", "ppo-mine", check=False)
    assert out.returncode == 2 and "world's own prompts" in out.stderr, out.stderr


@pytest.mark.slow
def test_two_processes_run_ppo_with_ddp(rm_copy):
    """torchrun with 2 processes: each answers half of every iteration's prompts, gradients are averaged by DDP
    (two forwards, the PPO loss and the ptx loss, before one backward), rank 0 alone logs and saves."""
    import os
    import subprocess
    import sys

    run = rm_copy("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29521",
           "-m", "chatforge.cli", "--", "ppo", "--run", str(run), "--set", "ppo.iterations=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ppo: done") == 1
    summary = json.loads((run / "ppo" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 2
    records = [json.loads(x) for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["ptx_loss"] > 0 for r in records)


def test_the_views_of_the_shared_lora_model_set_its_mode():
    """The policy and value views hold the shared model outside their children; train() must still reach it, or
    activation checkpointing (which acts only in training mode) never runs and PPO with LoRA keeps every activation."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    shared = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules="all-linear"))
    policy, value = AdapterView(shared.eval(), "default"), ValueView(shared, torch.nn.Linear(16, 1))
    policy.train()
    assert shared.training and all(m.training for m in shared.modules())
    value.eval()
    assert not any(m.training for m in shared.modules())
    value.train()
    assert shared.training and value.head.training
