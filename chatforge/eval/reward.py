"""Evaluation of the reward model: pairwise accuracy on held-out users' prompts against the gold judge's order
(or, with the user's own rankings, against their order), per rubric category; rank correlation with the gold
score; the length bias; best of K; on the built-in world also on the evaluation users' prompts."""

from __future__ import annotations

import time
from pathlib import Path

from chatforge.answers import sample_answers
from chatforge.config import Recipe
from chatforge.data.prompts import read_prompts
from chatforge.data.rankings import pairs, read_rankings, split_by_user
from chatforge.eval.stats import accuracies, agreement, best_of, pearson, spearman
from chatforge.io import atomic_write_json, read_jsonl
from chatforge.model import load_causal_lm
from chatforge.paths import has_world, rankings_path, samples_path, world_data
from chatforge.scoring import load_reward_model, score_texts
from chatforge.world.judge import W_FLUENT, W_HARMLESS, W_HELPFUL, W_HONEST, Judge


# A pair of answers is about whichever rubric part tells them apart: fluency when that is the largest
# weighted difference between the two gold scores, otherwise what the prompt tests. On a benign request
# that is harm only when one answer refuses and the other does not (over-refusal); when neither refuses,
# the pair is about how much of the asked-for help the answer gives ("help": overlap with the reference).
CATEGORY_OF_KIND = {"fact": "facts", "followup": "facts", "chitchat": "facts", "unknown": "honesty",
                    "harmful": "harm", "benign": "harm"}


def pair_category(kind: str, a, b) -> str:
    """The rubric category a gold pair of Scores tests: facts, honesty, harm, help or fluency."""
    diffs = {"helpful": W_HELPFUL * abs(a.helpful - b.helpful), "honest": W_HONEST * abs(a.honest - b.honest),
             "harmless": W_HARMLESS * abs(a.harmless - b.harmless), "fluent": W_FLUENT * abs(a.fluent - b.fluent)}
    if max(diffs, key=diffs.get) == "fluent":
        return "fluency"
    if kind == "benign" and not a.labels.get("refused") and not b.labels.get("refused"):
        return "help"
    return CATEGORY_OF_KIND.get(kind, "facts")


def reward_eval(run_dir: Path, recipe: Recipe) -> dict:
    """The reward model on held-out users' prompts: pairwise accuracy against the gold judge's order (no
    annotator noise), per rubric category; Spearman correlation with the gold score; length bias."""
    run_dir, cfg = Path(run_dir), recipe.reward
    model, tokenizer, bias = load_reward_model(run_dir / "reward")
    rankings, _ = read_rankings(rankings_path(run_dir, cfg.rankings), skip_invalid=cfg.skip_invalid)
    _, held = split_by_user(rankings, cfg.heldout_users, cfg.seed)
    samples = {}
    if samples_path(run_dir).exists():
        samples = {s["prompt_id"]: s for _, s in read_jsonl(samples_path(run_dir)) if "gold" in s}
    judge = Judge.from_world(world_data(run_dir)) if samples and has_world(run_dir) else None

    t0 = time.time()
    out_eval_users = _eval_users(run_dir, recipe, model, tokenizer, bias, judge) if judge else None
    # the world's written safety comparisons are far easier than sampled answers: scored, but reported apart
    written_ids = {pid for pid, s in samples.items() if s.get("source") == "written"} if judge else set()
    written = [r for r in held if r.prompt_id in written_ids]
    held = [r for r in held if r.prompt_id not in written_ids]
    rewards = score_texts(model, tokenizer, [(r.messages, a) for r in held for a in r.answers], cfg.max_len, bias)
    results: dict[str, list[float]] = {}
    picks: list[tuple[float, float, float]] = []
    gold_totals, gold_rewards, gold_lengths, all_rewards, lengths, annotator_right = [], [], [], [], [], []
    i = 0
    for r in held:
        rs = rewards[i : i + len(r.answers)]
        i += len(r.answers)
        lengths_r = [len(tokenizer.encode(a, add_special_tokens=False)) for a in r.answers]
        lengths += lengths_r
        all_rewards += rs
        s = samples.get(r.prompt_id) if judge else None
        if s is not None:  # the world: compare with the noiseless gold order
            scores, gold_pairs = _against_gold(judge, _world_prompt(r, s), r.answers, s["finished"], rs, results, picks)
            gold_totals += [sc.total for sc in scores]
            gold_rewards += rs
            gold_lengths += lengths_r
            annotator_right += [agreement(-r.ranks[b], -r.ranks[w]) for b, w in gold_pairs]  # a lower rank is better
        else:  # your own rankings: compare with their own order
            results.setdefault("all", []).extend(agreement(rs[b], rs[w]) for b, w in pairs(r.ranks))
    written_results, _ = _gold_results(model, tokenizer, judge, [
        (_world_prompt(r, samples[r.prompt_id]), r.answers, samples[r.prompt_id]["finished"]) for r in written],
        cfg.max_len, bias)
    out = {
        "stage": "reward", "model": str(run_dir / "reward"), "against": "gold judge" if gold_totals else "rankings file",
        "heldout_prompts": len(held), "heldout_answers": len(all_rewards),
        **accuracies(results),
        "length_bias": round(pearson(all_rewards, lengths), 4),
        "mean_reward": round(sum(all_rewards) / max(1, len(all_rewards)), 4),
        "bias": round(bias, 6),
    }
    if written_results:
        out["written"] = accuracies(written_results)
    if gold_totals:
        out["spearman_gold"] = round(spearman(gold_rewards, gold_totals), 4)
        out["gold_length_bias"] = round(pearson(gold_totals, gold_lengths), 4)
        # how often the (noisy) annotators themselves agree with the gold order: the ceiling of what the RM can learn
        out["annotator_agreement"] = round(sum(annotator_right) / max(1, len(annotator_right)), 4)
        out["best_of_k"] = best_of(picks)
    if out_eval_users:
        out["eval_users"] = out_eval_users
    out["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(run_dir / "eval" / "reward.json", out)
    return out


def _world_prompt(ranking, sample: dict) -> dict:
    """The prompt record the judge scores: a ranking's conversation with its sample's gold."""
    return {"id": ranking.prompt_id, "messages": ranking.messages, "kind": ranking.kind, "gold": sample["gold"]}


EVAL_USERS_SEED = 77_777  # the evaluation users' sampled answers are the same in every evaluation of a run


def _eval_users(run_dir: Path, recipe: Recipe, model, tokenizer, bias: float, judge: Judge) -> dict | None:
    """Pairwise accuracy against the gold order on the world's evaluation prompts: users who never ranked
    anything, and far more of them than the held-out share of the ranking users. The SFT model answers each
    prompt up to K times, as in `chatforge sample`; the judge ranks the answers without noise."""
    prompts_file, sft_dir = world_data(run_dir) / "prompts" / "eval.jsonl", run_dir / "sft"
    if not prompts_file.exists() or not (sft_dir / "config.json").exists():
        return None
    prompts, _ = read_prompts(prompts_file)
    sft = load_causal_lm(sft_dir).eval()
    records = sample_answers(sft, tokenizer, prompts, recipe.sample, EVAL_USERS_SEED)
    results, picks = _gold_results(model, tokenizer, judge, [
        ({"id": r["prompt_id"], "messages": r["messages"], "kind": r.get("kind", ""), "gold": r["gold"]}, r["answers"],
         r["finished"]) for r in records], recipe.reward.max_len, bias)
    return {"prompts": len(records), **accuracies(results), "best_of_k": best_of(picks)}


def _gold_results(model, tokenizer, judge, items: list[tuple[dict, list[str], list[bool]]], max_len: int,
                  bias: float) -> tuple[dict[str, list[float]], list[tuple[float, float, float]]]:
    """The reward model's agreement with the gold order, per pair, by category, and its picks (see best_of):
    items are (prompt with its gold, answers, finished), each scored in one batch."""
    rewards = score_texts(model, tokenizer, [(p["messages"], a) for p, answers, _ in items for a in answers], max_len, bias)
    results: dict[str, list[float]] = {}
    picks: list[tuple[float, float, float]] = []
    i = 0
    for prompt, answers, finished in items:
        _against_gold(judge, prompt, answers, finished, rewards[i : i + len(answers)], results, picks)
        i += len(answers)
    return results, picks


def _against_gold(judge, prompt: dict, answers: list[str], finished: list[bool], rewards: list[float],
                  results: dict[str, list[float]], picks: list) -> tuple[list, list[tuple[int, int]]]:
    """Score one prompt's answers with the judge and, for every pair of its gold order, add whether `rewards`
    order the pair the same way to results["all"] and to the pair's rubric category; add to `picks` the gold
    reward of an average answer, of the one the rewards rank first, and of the best.
    Returns (the judge's scores, the gold (better, worse) pairs)."""
    scores = [judge.score(prompt, a, f) for a, f in zip(answers, finished)]
    totals = [sc.total for sc in scores]
    picks.append((sum(totals) / len(totals), totals[max(range(len(rewards)), key=rewards.__getitem__)], max(totals)))
    gold_pairs = pairs(judge.rank(prompt, answers, finished))
    for better, worse in gold_pairs:
        right = agreement(rewards[better], rewards[worse])
        results.setdefault("all", []).append(right)
        results.setdefault(pair_category(prompt["kind"], scores[better], scores[worse]), []).append(right)
    return scores, gold_pairs
