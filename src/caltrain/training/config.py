"""A training job's configuration: validated on load (it comes from users), serialisable to JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from caltrain.errors import TrainingError


class TrainConfig(BaseModel):
    """Model, cut (`frontnet_layers` = m blocks in the enclave), schedule, optimizer, seed, datasets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "digits-cnn"
    frontnet_layers: int = Field(default=2, ge=1)
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0
    augment: bool = True
    datasets: list[str] = Field(default_factory=list, description="training dataset ids; empty = all but eval")
    eval_datasets: list[str] = Field(default_factory=list, description="held-out dataset ids for accuracy")
    checkpoint_every: int = Field(default=0, ge=0, description="also checkpoint every N steps (0 = epochs only)")

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise TrainingError(f"invalid training config: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"cannot read training config {path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
