"""The knobs of `chatforge label` (the recipe's `label:` section)."""

from dataclasses import dataclass

from chatforge.errors import ConfigError


@dataclass
class LabelConfig:
    annotators_per_task: int = 3  # N: each task goes to this many annotators, never twice to one
    # a task handed to an annotator is held for them this long, so that two people never both take its last slot;
    # past it, the slot goes back to the pool (a label submitted late is still taken while the slot is free)
    lease_seconds: float = 900.0
    shuffle: bool = True  # show each annotator the answers in their own random order (no position bias)
    max_body_bytes: int = 65536  # an API request body larger than this is refused (413)
    pace_window_seconds: float = 3600.0  # the dashboard's pace and time left count the labels of this last stretch

    def __post_init__(self):  # each field's type is checked where recipes are read (config.from_dict)
        if not 1 <= self.annotators_per_task <= 100:
            raise ConfigError(f"label.annotators_per_task must be in [1, 100], got {self.annotators_per_task}")
        for name in ("lease_seconds", "pace_window_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"label.{name} must be positive, got {getattr(self, name)}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"label.max_body_bytes must be at least 1024, got {self.max_body_bytes}")
