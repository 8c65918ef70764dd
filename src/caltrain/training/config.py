"""A training job's configuration: validated on load (it comes from users), serialisable to JSON."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from caltrain.errors import CaltrainError, TrainingError
from caltrain.jsonfile import JsonFileModel


class TrainConfig(JsonFileModel):
    """Model, cut (`frontnet_layers` = m blocks in the enclave), schedule, optimizer, seed, datasets."""

    what: ClassVar[str] = "training config"
    error: ClassVar[type[CaltrainError]] = TrainingError

    model: str = "digits-cnn"
    frontnet_layers: int = Field(default=2, ge=1)
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int | None = Field(
        default=None, description="set by the enclave when it admits a job (never by the requester); plain runs set it"
    )
    augment: bool = True
    datasets: list[str] = Field(default_factory=list, description="training dataset ids; empty = all but eval")
    eval_datasets: list[str] = Field(default_factory=list, description="held-out dataset ids for accuracy")
    checkpoint_every: int = Field(default=0, ge=0, description="also checkpoint every N steps (0 = epochs only)")
