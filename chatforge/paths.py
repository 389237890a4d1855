"""Where a run keeps the files that several stages and the evaluation read, named in one place so that
none of them has to import another to find them (each stage's own directory is its registry entry's)."""

from __future__ import annotations

from pathlib import Path


def world_data(run_dir: Path) -> Path:
    """The built-in world's files: corpus, dialogues, prompts, evaluation sets (`chatforge world`)."""
    return Path(run_dir) / "data"


def has_world(run_dir: Path) -> bool:
    return (world_data(run_dir) / "world.json").exists()


def samples_path(run_dir: Path) -> Path:
    """K sampled answers per prompt (`chatforge sample`), the annotators' tasks."""
    return Path(run_dir) / "rankings" / "samples.jsonl"


def rankings_path(run_dir: Path, own: str = "") -> Path:
    """The user's rankings `own`, else the run's (made by `chatforge rank` or exported by `chatforge label`)."""
    return Path(own) if own else Path(run_dir) / "rankings" / "rankings.jsonl"


def base_model(run_dir: Path, model_base: str) -> Path:
    """The model SFT starts from: the user's own (`model.base`), else the run's pretrained base/."""
    return Path(model_base) if model_base else Path(run_dir) / "base"


def has_corpus(run_dir: Path, own_corpus: str) -> bool:
    """Whether there is pretraining text to replay in SFT and mix into PPO (ptx): the user's or the world's."""
    return (Path(own_corpus) if own_corpus else world_data(run_dir) / "corpus").is_dir()
