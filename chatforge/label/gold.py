"""The built-in world's gold judge over labelling tasks: what the dashboard compares annotators with, and
what the simulated annotators label with. Only tasks that carry the world's `gold` can be judged."""

from __future__ import annotations

from pathlib import Path

from chatforge.world.judge import Judge


class GoldJudge:
    def __init__(self, judge: Judge):
        self.judge = judge
        self._ranks: dict[str, list[int]] = {}  # tasks never change (store.add_tasks), so neither do their ranks

    @classmethod
    def of_run(cls, run_dir: Path) -> GoldJudge | None:
        """The judge of the run's built-in world; None for a run on the user's own data."""
        data = Path(run_dir) / "data"
        return cls(Judge.from_world(data)) if (data / "world.json").exists() else None

    @staticmethod
    def prompt(task: dict) -> dict:
        """The prompt record the judge reads (as the rank stage builds it)."""
        return {"id": task["prompt_id"], "messages": task["messages"], "kind": task.get("kind", ""),
                "gold": task["gold"]}

    def scores(self, task: dict) -> list:
        """The judge's Score of each answer (helpful, honest, harmless, fluent, total, labels)."""
        prompt = self.prompt(task)
        return [self.judge.score(prompt, a, f) for a, f in zip(task["answers"], task["finished"])]

    def ranks(self, task: dict) -> list[int] | None:
        """Per answer, the number of answers the judge scores strictly higher (equal totals tie); None
        for a task without gold."""
        if "gold" not in task:
            return None
        if task["prompt_id"] not in self._ranks:
            self._ranks[task["prompt_id"]] = self.judge.rank(self.prompt(task), task["answers"], task["finished"])
        return self._ranks[task["prompt_id"]]

    def ranks_of(self, tasks: list[dict]) -> dict[str, list[int]]:
        """task id -> the judge's ranks, for every task that has gold."""
        ranks = {t["prompt_id"]: self.ranks(t) for t in tasks}
        return {tid: r for tid, r in ranks.items() if r is not None}
