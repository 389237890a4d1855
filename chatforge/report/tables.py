"""The evaluation as text: the tables `chatforge eval` and `chatforge run` print, and their rows, which the
HTML report shows too."""

from __future__ import annotations

from chatforge.eval.stats import paired_delta, verdict


def wrong_side(by_request: dict[str, dict[str, list[int]]]) -> list[str]:
    """The requests answered on the wrong side at least once: harmful ones not always refused, benign ones refused."""
    return ([f"harmful {key} {n}/{asked}" for key, (n, asked) in by_request.get("harmful", {}).items() if n < asked]
            + [f"benign {key} {n}/{asked}" for key, (n, asked) in by_request.get("benign", {}).items() if n > 0])


_QA_FORMAT = {"gold_reward": "{:+.3f}", "refusal_auc": "{:.2f}", "act_knowledge": "{:.2f}"}


def format_table(result: dict) -> str:
    acc = result["fact_completion"]["accuracy"]
    counts = result["fact_completion"]["counts"]
    lines = [f"eval of {result['stage']} ({result['model']})", "  fact completion (greedy, stem -> value):"]
    lines += [f"    {k:<22} {v:6.1%}  (n={counts[k]})" for k, v in acc.items()]
    lines.append("  questions through the chat template (greedy, gold judge):")
    lines += [f"    {k:<22} {_QA_FORMAT.get(k, '{:.1%}').format(v):>6}" for k, v in result["qa"]["metrics"].items() if "/" not in k]
    wrong = wrong_side(result["qa"].get("refusals_by_request", {}))
    if wrong:
        lines.append("    held-out requests on the wrong side (refused / asked):")
        lines += ["      " + ", ".join(wrong[i : i + 3]) for i in range(0, len(wrong), 3)]
    lines.append("  held-out corpus:")
    lines += [f"    {k:<22} loss {v['loss']:.3f}  ppl {v['perplexity']:.2f}" for k, v in result["heldout"].items()]
    if "vs_sft" in result:
        lines.append(format_vs_sft(result["vs_sft"]))
    return "\n".join(lines)


def format_vs_sft(vs: dict) -> str:
    w = vs["win_rate"]["all"]
    g = vs["gold_reward"]
    lines = ["  against the SFT model (held-out users, greedy, gold judge; 95% intervals over the prompts):",
             f"    win rate               {w['win_rate']:6.1%}  ({w['wins']} wins, {w['ties']} ties, {w['losses']} losses)"
             + (f"  [{w['ci95'][0]:.1%}, {w['ci95'][1]:.1%}]" if "ci95" in w else ""),
             f"    gold reward            {g['this']:+.3f} vs {g['sft']:+.3f} ({g['delta']:+.3f}"
             + (f", [{g['delta_ci95'][0]:+.3f}, {g['delta_ci95'][1]:+.3f}])" if "delta_ci95" in g else ")")]
    for k, v in vs["fact_accuracy"].items():
        lines.append(f"    {k:<22} {v['this']:6.1%} vs {v['sft']:6.1%}")
    lines.append(f"    KL to SFT              {vs['kl_to_sft']:.2f} nats per answer (sampled at temperature 1)")
    lines += [f"      win rate on {k:<9} {v['win_rate']:6.1%}" for k, v in vs["win_rate"].items() if k != "all"]
    return "\n".join(lines)


def comparison_rows(results: list[dict]) -> list[tuple[str, list[str]]]:
    """(metric, a formatted cell per stage): what each stage adds, for the terminal table and the report."""
    rows = [("fact completion", lambda r: r["fact_completion"]["accuracy"]["all"], "{:.1%}")]
    for key in ("fact_covered", "fact_heldout", "complete", "hedged", "followup", "dont_know", "refusal", "over_refusal",
                "refusal_auc", "act_knowledge", "gold_reward"):
        rows.append((key, lambda r, k=key: r["qa"]["metrics"].get(k), _QA_FORMAT.get(key, "{:.1%}")))
    rows.append(("held-out loss (mean)", lambda r: sum(v["loss"] for v in r["heldout"].values()) / len(r["heldout"]), "{:.3f}"))
    return [(label, [fmt.format(get(r)) if get(r) is not None else "-" for r in results]) for label, get, fmt in rows]


def format_comparison(results: list[dict]) -> str:
    """One table, a column per stage: what each stage adds."""
    lines = ["metric".ljust(24) + "".join(r["stage"].rjust(10) for r in results)]
    lines += [label.ljust(24) + "".join(c.rjust(10) for c in cells) for label, cells in comparison_rows(results)]
    return "\n".join(lines)


def _accuracy_rows(result: dict) -> list[str]:
    return [f"    pairwise accuracy {k:<10} {v:6.1%}  ({result['pairs'][k]} pairs)" for k, v in result["pairwise_accuracy"].items()]


def _best_of_rows(b: dict | None) -> list[str]:
    if not b or not b.get("prompts"):
        return []
    share = f"{b['share']:+.0%} of the way from random to best" if b["share"] is not None else "all answers equal"
    return [f"    best of K by the RM (gold) {b['reward_model']:+.3f}  (random answer {b['random']:+.3f}, best {b['best']:+.3f}: "
            f"{share})"]


def format_reward_table(result: dict) -> str:
    lines = [f"eval of the reward model ({result['model']}), {result['heldout_prompts']} held-out prompts "
             f"of held-out users, against the {result['against']}:"]
    lines += _accuracy_rows(result)
    if "written" in result:
        w = result["written"]
        lines.append(f"    written safety comparisons {w['pairwise_accuracy']['all']:6.1%}  ({w['pairs']['all']} pairs, not in the rows above)")
    if "spearman_gold" in result:
        lines.append(f"    Spearman with gold score {result['spearman_gold']:+.3f}")
        lines.append(f"    annotators vs gold       {result['annotator_agreement']:6.1%}")
        lines += _best_of_rows(result.get("best_of_k"))
    if "eval_users" in result:
        ev = result["eval_users"]
        lines.append(f"  on {ev['prompts']} evaluation prompts (users who never ranked), answers sampled from SFT, gold order:")
        lines += _accuracy_rows(ev)
        lines += _best_of_rows(ev.get("best_of_k"))
    lines.append(f"    length bias (corr. of reward with answer length) {result['length_bias']:+.3f}"
                 + (f", gold's {result['gold_length_bias']:+.3f}" if "gold_length_bias" in result else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- your own data (chatforge.eval.own)


def own_rows(results: list[dict]) -> list[tuple[str, list[str]]]:
    """(metric, a cell per model) of evaluations on your own data: what the reward model and the held-out loss say."""
    def vs(r: dict, key: str, fmt: str) -> str:
        w = r.get("vs_sft", {}).get("win_rate", {}).get("all") if key == "win" else None
        if key == "win":
            return f"{w['win_rate']:.1%} [{w['ci95'][0]:.1%}, {w['ci95'][1]:.1%}]" if w else "-"
        value = r.get("vs_sft", {}).get(key)
        return fmt.format(value) if value is not None else "-"

    rows = [("held-out prompts", [str(r["prompts"]) for r in results]),
            ("reward model score", [f"{r['reward']:+.3f}" if "reward" in r else "-" for r in results]),
            ("answer length (tokens)", [f"{r['length']:.1f}" for r in results]),
            ("held-out SFT loss", [f"{r['heldout_sft_loss']:.3f}" if "heldout_sft_loss" in r else "-" for r in results]),
            ("RM win rate vs SFT", [vs(r, "win", "") for r in results]),
            ("LLM judge win rate vs SFT", [_llm(r) for r in results]),
            ("KL to SFT (nats)", [vs(r, "kl_to_sft", "{:.2f}") for r in results])]
    return rows


def _llm(result: dict) -> str:
    j = result.get("vs_sft", {}).get("llm_judge")
    return f"{j['win_rate']:.1%} [{j['ci95'][0]:.1%}, {j['ci95'][1]:.1%}]" if j and j.get("win_rate") is not None else "-"


def format_own_comparison(results: list[dict]) -> str:
    """One table of the run's models on your own held-out data, a column per model."""
    width = max(12, *(len(c) + 2 for _, cells in own_rows(results) for c in cells))
    lines = ["metric".ljust(26) + "".join(r["stage"].rjust(width) for r in results)]
    lines += [label.ljust(26) + "".join(c.rjust(width) for c in cells) for label, cells in own_rows(results)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the results card (the README's)


def results_card(results: list[dict], rm: dict | None, timings: dict[str, float]) -> str:
    """A few lines of Markdown that say what the run's stages added, read from its evaluation files: what the README
    shows of the demo, with every number from the run itself."""
    if not results:
        return "(no evaluation yet: run `chatforge eval`)"
    if "qa" not in results[0]:
        rows = own_rows(results)
        lines = ["| | " + " | ".join(r["stage"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        return "\n".join(lines + card_footer(rm, timings))
    metrics = [("gold reward, held-out users", "gold_reward", "{:+.3f}"), ("facts of covered entities", "fact_covered", "{:.1%}"),
               ("facts of held-out entities", "fact_heldout", "{:.1%}"), ("\"I don't know\" on unknown ones", "dont_know", "{:.1%}"),
               ("harmful requests refused", "refusal", "{:.1%}"), ("benign requests refused", "over_refusal", "{:.1%}")]
    lines = ["| | " + " | ".join(r["stage"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for label, key, fmt in metrics:
        cells = [fmt.format(r["qa"]["metrics"][key]) if key in r["qa"]["metrics"] else "-" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    vs = by_stage(results).get("ppo", {}).get("vs_sft")
    if vs:
        w, g = vs["win_rate"]["all"], vs["gold_reward"]
        lines.append(f"\nPPO against SFT: win rate {w['win_rate']:.1%} [{w['ci95'][0]:.1%}, {w['ci95'][1]:.1%}] "
                     f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses); gold reward {g['delta']:+.3f} "
                     f"[{g['delta_ci95'][0]:+.3f}, {g['delta_ci95'][1]:+.3f}]; KL to SFT {vs['kl_to_sft']:.2f} nats.")
    gains = stage_gains(results, rm)
    if gains:
        lines += ["", "| step | measured by | difference [95% interval] | so |", "|---|---|---|---|"]
        lines += [f"| {label} | {what} | {d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {d['verdict']} |"
                  for label, what, d in gains]
    return "\n".join(lines + card_footer(rm, timings))


def card_footer(rm: dict | None, timings: dict[str, float]) -> list[str]:
    """The card's lines on the reward model and the time each stage took."""
    lines = []
    if rm:
        best = rm.get("best_of_k") or {}
        share = f"; best of K by it closes {best['share']:.0%} of the gap from a random answer to the best" \
            if best.get("share") is not None else ""
        lines.append(f"Reward model: {rm['pairwise_accuracy']['all']:.1%} pairwise accuracy on held-out users' "
                     f"prompts ({rm['pairs']['all']} pairs){share}.")
    if timings:
        total = sum(timings.values())
        lines.append("Time: " + ", ".join(f"{s} {int(t) // 60}:{int(t) % 60:02d}" for s, t in timings.items() if t >= 1)
                     + f"; {int(total) // 60}:{int(total) % 60:02d} in all.")
    return ["", *lines] if lines else []


# ----------------------------------------------------------------------------- what each stage added (the world)


def by_stage(results: list[dict]) -> dict[str, dict]:
    return {r["stage"]: r for r in results}


def stage_gains(results: list[dict], rm: dict | None) -> list[tuple[str, str, dict]]:
    """(step, what is measured, {delta, ci95, verdict, ...}) for each step of the pipeline the run can tell apart, from
    its own evaluations: paired over the same held-out prompts (gold reward) or corpus windows (loss)."""
    m, rows = by_stage(results), []

    def gold(stage: str) -> dict[str, float]:
        return m[stage]["qa"]["gold"]

    for before, after, label in (("base", "sft", "base → SFT"), ("sft", "ppo", "SFT → PPO"),
                                 ("ppo", "ppo-judge", "PPO → PPO against the gold judge (a perfect reward model)")):
        if before in m and after in m and "gold" in m[before]["qa"] and "gold" in m[after]["qa"]:
            rows.append((label, "gold reward", paired_delta(gold(after), gold(before))))
    best = ((rm or {}).get("eval_users") or {}).get("best_of_k") or {}
    if best.get("gain_ci95"):
        low, high = best["gain_ci95"]
        rows.insert(1, ("SFT → best of K by the reward model", "gold reward of its pick over a random answer",
                        {"delta": round(best["reward_model"] - best["random"], 4), "ci95": [low, high],
                         "n": best["prompts"], "verdict": verdict(low, high), "share": best.get("share")}))
    if "ppo" in m and "ppo-noptx" in m:
        rows.append(("PPO-ptx against plain PPO", "gold reward", paired_delta(gold("ppo"), gold("ppo-noptx"))))
        rows.append(("PPO-ptx against plain PPO", "held-out corpus loss (lower is better)",
                     _loss_delta(m["ppo"], m["ppo-noptx"])))
    return rows


def _loss_delta(after: dict, before: dict) -> dict:
    """The held-out corpus loss of `after` less `before`, window by window over every source: a drop is the gain."""
    windows = lambda r: {f"{s}/{i}": x for s, v in r["heldout"].items() for i, x in enumerate(v.get("windows", []))}  # noqa: E731
    out = paired_delta(windows(after), windows(before))
    out["verdict"] = {"gain": "loss", "loss": "gain"}.get(out["verdict"], out["verdict"])
    return out


def format_gains(rows: list[tuple[str, str, dict]]) -> str:
    """The table of what each step added, every number with its 95% interval and what it is: gain, loss or noise."""
    lines = ["what each step added (95% intervals over the same held-out prompts or corpus windows):"]
    for label, what, d in rows:
        lines.append(f"  {label:<58} {what:<42} {d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]  "
                     f"{d['verdict']}")
    return "\n".join(lines)
