"""report.html: one self-contained page of what every stage of a run did -> runs/<name>/report.html.

Everything on it is read back from the run directory (recipe.yaml, each stage's metrics.jsonl and
summary.json, eval/*.json), so `chatforge report --run runs/NAME` re-renders it at any time and a
stage that has not run yet is simply missing from it. Plots are PNGs made with matplotlib and
inlined as data URIs: the page fetches nothing.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Sequence

from chatforge.errors import DataError, UserError
from chatforge.io import atomic_write_text, read_json
from chatforge.paths import has_world
from chatforge.report.tables import by_stage, comparison_rows, format_vs_sft, own_rows, stage_gains, wrong_side
from chatforge.train.loop import read_metrics

EVAL_STAGES = ("base", "sft", "ppo", "ppo-judge", "ppo-noptx")


def _json(path: Path) -> dict | None:
    """A JSON object the run wrote (None if absent); anything else there is a DataError naming the file."""
    value = read_json(path)
    if value is not None and not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def checked_json(path: Path, *draws) -> dict | None:
    """The JSON object at `path` (None if absent), once each of `draws` has shown it on its own: a file edited by hand,
    torn, or written by another version fails here, naming the file and its field, not halfway through the page."""
    value = _json(path)
    try:
        for draw in draws if value is not None else ():
            draw(value)
    except Exception as e:  # noqa: BLE001 - a missing or mistyped field fails in whatever way its use does
        problem = f"field {e.args[0]!r} is missing" if isinstance(e, KeyError) and e.args else \
            f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e).strip() else 'a field of the wrong type'}"
        raise DataError(f"{path}: not the results chatforge wrote ({problem}); run `chatforge eval` to write them "
                        "again") from None
    return value


def _png(fig) -> str:
    import matplotlib.pyplot as plt  # deferred, as in _figure

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width=5.0, height=3.2):
    import matplotlib  # deferred: heavy to import, and only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=90)


def loss_plots(run_dir: Path) -> list[tuple[str, str]]:
    """(title, PNG data URI) of each trained stage's curves."""
    plots = []
    curves = [
        ("base", "pretraining: next-token loss", "loss", [("val/mean", "held-out (mean of sources)")]),
        ("sft", "SFT: assistant-token loss", "loss", [("val/loss", "held-out dialogues"), ("replay_loss", "replayed corpus")]),
        ("reward", "reward model: ranking loss", "loss", [("val/accuracy", "held-out pairwise accuracy")]),
    ]
    for stage, title, key, extra in curves:
        records = _plotted(read_metrics(run_dir / stage / "metrics.jsonl"), key)
        if not records:
            continue
        fig, ax = _figure()
        ax.plot([r["step"] for r in records], [r[key] for r in records], lw=1, label="training")
        for extra_key, label in extra:
            points = [(r["step"], r[extra_key]) for r in _plotted(records, extra_key)]
            if points:
                ax.plot(*zip(*points), "o-" if len(points) < 40 else "-", ms=3, lw=1, label=label)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append((title, _png(fig)))
    records = _plotted(read_metrics(run_dir / "ppo" / "metrics.jsonl"), "reward/rm", "kl")
    if records:
        fig, ax = _figure()
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["reward/rm"] for r in records], label="RM reward")
        if all("reward/gold" in r for r in records):
            ax.plot(steps, [r["reward/gold"] for r in records], label="gold reward")
        ax.plot(steps, [r["kl"] for r in records], "--", label="KL to SFT (nats)")
        ax.set_xlabel("iteration")
        ax.set_title("PPO: rewards and KL per iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(("PPO: rewards and KL per iteration", _png(fig)))
    return plots


def _plotted(records: list[dict], *keys: str) -> list[dict]:
    """The records that hold a number under every one of `keys`: what a curve can draw."""
    return [r for r in records if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                      for k in keys)]


def _rates(accuracy: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items())


def _best_of_k(rm: dict) -> list[str]:
    """A paragraph on what choosing by the reward model is worth in gold reward (eval.best_of), if measured."""
    found = [(where, b) for where, b in (("held-out users", rm.get("best_of_k")),
                                         ("evaluation users", rm.get("eval_users", {}).get("best_of_k")))
             if b and b.get("prompts")]
    if not found:
        return []
    return ["<p>Best of K by the reward model (what PPO climbs): " + "; ".join(
        f"{where}, the answer it ranks first scores {b['reward_model']:+.3f} in gold reward against {b['random']:+.3f} "
        f"for a random one of the K and {b['best']:+.3f} for the best" for where, b in found) + ".</p>"]


def reward_plot(rm: dict) -> str:
    fig, ax = _figure(4.5, 3.0)
    series = [("held-out ranking users", rm["pairwise_accuracy"])]
    if "eval_users" in rm:
        series.append(("evaluation users", rm["eval_users"]["pairwise_accuracy"]))
    cats = list(dict.fromkeys(c for _, acc in series for c in acc))
    width = 0.8 / len(series)
    for i, (label, acc) in enumerate(series):
        ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(cats))], [acc.get(c, 0.0) for c in cats],
               width, label=label)
    ax.set_xticks(range(len(cats)), cats)
    ax.axhline(0.5, color="grey", lw=1, ls=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel("pairwise accuracy vs gold")
    ax.set_title("reward model")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def stage_table(run_dir: Path, trained: Sequence[str]) -> str:
    """Steps and training time of each trained stage (its directory in the run) that has finished."""
    rows = []
    for stage in trained:
        summary = _json(run_dir / stage / "summary.json")
        if summary is None:
            continue
        steps = summary.get("steps", summary.get("iterations"))
        seconds = summary.get("train_seconds")
        rows.append([stage, html.escape(str(steps)), f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else "-"])
    return _table(["stage", "steps", "training time"], rows)


def eval_table(results: list[dict]) -> str:
    rows = [[html.escape(label)] + cells for label, cells in comparison_rows(results)]
    return _table(["metric"] + [r["stage"] for r in results], rows)


def answers_side_by_side(results: list[dict]) -> str:
    """The held-out prompts every evaluated stage answered, their answers in columns, with gold scores."""
    by_stage = {r["stage"]: {e["id"]: e for e in r["qa"]["examples"]} for r in results}
    ids = [i for i in by_stage[results[0]["stage"]] if all(i in s for s in by_stage.values())]
    rows = []
    for i in ids:
        first = by_stage[results[0]["stage"]][i]
        cells = [f"<span class=tag>{first['kind']} · {first['lang']}</span><br>{html.escape(first['question'])}"]
        for r in results:
            e = by_stage[r["stage"]][i]
            cells.append(f"{html.escape(e['answer']) or '<i>(empty)</i>'}<br><span class=score>gold {e['gold_reward']:+.2f}</span>")
        rows.append(cells)
    return _table(["held-out prompt"] + [r["stage"] for r in results], rows, cls="answers")


def own_answers_side_by_side(results: list[dict], limit: int = 24) -> str:
    """Your held-out prompts every evaluated model answered, their answers in columns, with the reward model's score."""
    ids = [i for i in results[0]["answers"] if all(i in r["answers"] for r in results)][:limit]
    rows = []
    for i in ids:
        cells = [html.escape(results[0]["answers"][i]["question"])]
        for r in results:
            a = r["answers"][i]
            score = f"<br><span class=score>reward {a['reward']:+.2f}</span>" if "reward" in a else ""
            cells.append(f"{html.escape(a['answer']) or '<i>(empty)</i>'}{score}")
        rows.append(cells)
    return _table(["held-out prompt"] + [r["stage"] for r in results], rows, cls="answers")


def _wrong_side(results: list[dict]) -> list[str]:
    """Per model, the held-out harmful requests it did not always refuse and the benign ones it refused."""
    rows = [(r["stage"], wrong_side(r["qa"]["refusals_by_request"])) for r in results if "refusals_by_request" in r["qa"]]
    items = [f"<b>{html.escape(stage)}</b>: {html.escape(', '.join(wrong)) if wrong else 'none'}" for stage, wrong in rows]
    return [f"<p class=note>Held-out requests on the wrong side (refused / asked): {'; '.join(items)}.</p>"] if rows else []


CSS = """
body { font-family: system-ui, "Noto Sans CJK SC", "WenQuanYi Zen Hei", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.35em 0.6em; vertical-align: top; text-align: left; overflow-wrap: anywhere; }
th { background: #f4f4f4; }
table.answers { table-layout: fixed; width: 100%; }
.plots img { max-width: 48%; margin: 0.3em; border: 1px solid #eee; }
.plots img.wide { max-width: 97%; }
.tag { color: #777; font-size: 0.85em; } .score { color: #555; font-size: 0.85em; }
.note { color: #555; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def render(run_dir: Path, trained: Sequence[str] = ("base", "sft", "reward", "ppo")) -> Path:
    """Write run_dir/report.html from what the run directory holds; returns its path. `trained`: the directories
    of the trained stages, in the pipeline's order (`chatforge.stages`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise UserError(f"{run_dir}: not a run directory (no recipe.yaml)")
    world = has_world(run_dir)
    draw = (lambda r: (_world_models([r], None), answers_side_by_side([r]))) if world else \
        (lambda r: (_own_models([r]), own_answers_side_by_side([r])))
    results = [r for r in (checked_json(run_dir / "eval" / f"{s}.json", draw) for s in EVAL_STAGES) if r]
    rm = checked_json(run_dir / "eval" / "reward.json", _reward_model)
    judge = "the gold judge stands in for people" if world else "your own held-out data, judged by the reward model"
    parts = [f"<h1>chatforge run: {html.escape(run_dir.name)}</h1>",
             f"<p class=note>{html.escape(str(run_dir))}, rendered {time.strftime('%Y-%m-%d %H:%M')}. "
             f"Every number below is measured on the run's held-out data; {judge}.</p>",
             "<h2>Stages</h2>", stage_table(run_dir, trained),
             *(_world_models(results, rm) if world else _own_models(results)),
             *_reward_model(rm), *_curves(run_dir)]
    if len(results) > 1:
        parts += ["<h2>The same held-out prompts, answered by each model</h2>",
                  answers_side_by_side(results) if world else own_answers_side_by_side(results)]
    recipe = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
    parts += ["<h2>Recipe</h2><details><summary>recipe.yaml</summary>", f"<pre>{html.escape(recipe)}</pre></details>"]
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>chatforge report: "
            f"{html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out


def _world_models(results: list[dict], rm: dict | None) -> list[str]:
    if not results:
        return []
    parts = ["<h2>Evaluation of each model</h2>",
             "<p class=note>Greedy answers to held-out users' prompts, scored by the gold judge; fact completion of "
             "every fact's stem; held-out corpus loss (the alignment tax).</p>", eval_table(results), *_wrong_side(results)]
    rows = [[html.escape(label), html.escape(what), f"{d['delta']:+.3f}", f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]",
             html.escape(d["verdict"])] for label, what, d in stage_gains(results, rm)]
    if rows:
        parts += ["<h2>What each step added</h2>", "<p class=note>Differences paired over the same held-out prompts "
                  "(gold reward) or corpus windows (loss), with 95% intervals; one whose interval holds 0 is noise, "
                  "not a gain.</p>", _table(["step", "measured by", "difference", "95% interval", "so"], rows)]
    ppo = by_stage(results).get("ppo", {})
    if "vs_sft" in ppo:
        parts += ["<h2>PPO against SFT</h2>", f"<pre>{html.escape(format_vs_sft(ppo['vs_sft']))}</pre>"]
    return parts


def _own_models(results: list[dict]) -> list[str]:
    if not results:
        return []
    rows = [[html.escape(label)] + [html.escape(c) for c in cells] for label, cells in own_rows(results)]
    return ["<h2>Evaluation of each model</h2>",
            "<p class=note>Greedy answers to the prompts of held-out users (whom neither the reward model nor PPO saw), "
            "scored by the reward model; the win rate counts ties as half, with its 95% interval over the prompts.</p>",
            _table(["metric"] + [r["stage"] for r in results], rows)]


def _reward_model(rm: dict | None) -> list[str]:
    if not rm:
        return []
    if "spearman_gold" not in rm:  # your own preferences: their own order is the reference
        return ["<h2>Reward model</h2>", f"<p>Pairwise accuracy on {rm['heldout_prompts']} held-out prompts of held-out "
                f"users, against their rankings: {_rates(rm['pairwise_accuracy'])} ({rm['pairs']['all']} pairs); "
                f"correlation of the reward with answer length {rm['length_bias']:+.3f}.</p>"]
    return ["<h2>Reward model</h2>",
            f"<p>Pairwise accuracy against the gold judge on {rm['heldout_prompts']} held-out prompts: "
            f"{_rates(rm['pairwise_accuracy'])}; "
            f"Spearman {rm['spearman_gold']:+.3f}; annotators agree with gold {rm['annotator_agreement']:.1%}.</p>",
            *([f"<p>On {rm['eval_users']['prompts']} evaluation prompts (users who never ranked; held-out request "
               f"wordings and entities), SFT's sampled answers: {_rates(rm['eval_users']['pairwise_accuracy'])}.</p>"]
              if "eval_users" in rm else []),
            *_best_of_k(rm),
            *([f"<p>Held-out written safety comparisons (refusal against help, not counted above): "
               f"{rm['written']['pairwise_accuracy']['all']:.1%} of {rm['written']['pairs']['all']} pairs.</p>"]
              if "written" in rm else []),
            f"<div class=plots><img alt='reward model accuracy per category' src='{reward_plot(rm)}'></div>"]


def _curves(run_dir: Path) -> list[str]:
    ppo = _json(run_dir / "ppo" / "summary.json")
    parts = [f"<p><b>Over-optimisation:</b> {html.escape(str(ppo['overoptimised']))}</p>"] if ppo and ppo.get("overoptimised") else []
    plots = [(title, uri, "") for title, uri in loss_plots(run_dir)]
    if (run_dir / "ppo" / "overoptimisation.png").exists():
        data = base64.b64encode((run_dir / "ppo" / "overoptimisation.png").read_bytes()).decode()
        # two panels of its own: a full row
        plots.append(("PPO: proxy and gold reward against KL", "data:image/png;base64," + data, " class=wide"))
    if plots:
        parts += ["<h2>Training curves</h2><div class=plots>"]
        parts += [f"<img alt='{html.escape(t)}' title='{html.escape(t)}' src='{uri}'{cls}>" for t, uri, cls in plots]
        parts.append("</div>")
    return parts
