"""The built-in world: a deterministic, bilingual (中文 + English) toy world of facts, with the
pretraining corpus, SFT dialogues, prompts and evaluation sets generated from it, so that every
stage of training can be measured against ground truth.

    from chatforge.world import WorldConfig, build_world
    manifest = build_world(WorldConfig(seed=0), Path("runs/laptop/data"))
"""
from chatforge.world.build import build_world, world_is_complete
from chatforge.world.config import WorldConfig

__all__ = ["WorldConfig", "build_world", "world_is_complete"]
