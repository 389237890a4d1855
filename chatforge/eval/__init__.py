"""Evaluation of every stage's model: `policy` measures a base or chat model (greedy answers scored by the gold
judge, fact completion, held-out loss, PPO against SFT), `reward` the reward model (pairwise accuracy, best of K),
`stats` the pure statistics both use. The text tables are the report's (`chatforge.report.tables`)."""

from pathlib import Path

from chatforge.config import Recipe
from chatforge.eval.own import evaluate_own
from chatforge.eval.policy import evaluate_stage
from chatforge.eval.reward import reward_eval
from chatforge.paths import has_world


def evaluate(run_dir: Path, recipe: Recipe, stage: str) -> dict:
    """A stage's model, evaluated against the world's gold judge, or, on your own data, as `own` says."""
    if stage == "reward":
        return reward_eval(run_dir, recipe)
    return evaluate_stage(run_dir, stage) if has_world(run_dir) else evaluate_own(run_dir, recipe, stage)


__all__ = ["evaluate", "evaluate_own", "evaluate_stage", "reward_eval"]
