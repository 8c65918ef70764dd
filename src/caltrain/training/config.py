"""A training job's configuration: validated on load (it comes from users), serialisable to JSON."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from caltrain.errors import CaltrainError, TrainingError
from caltrain.jsonfile import JsonFileModel
from caltrain.models import resolve_model


class TrainConfig(JsonFileModel):
    """Model, cut (`frontnet_layers` = m blocks in the enclave), schedule, optimizer, seed, datasets."""

    what: ClassVar[str] = "training config"
    error: ClassVar[type[CaltrainError]] = TrainingError

    model: str | dict[str, Any] = Field(default="digits-cnn", description="a zoo name or an inline model spec")
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

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str | dict[str, Any]) -> str | dict[str, Any]:
        resolve_model(model)  # an unknown name or a bad spec raises its own ModelError, before any job exists
        return model

    @model_validator(mode="after")
    def _cut_in_range(self) -> Self:
        resolve_model(self.model).cut_shape(self.frontnet_layers)  # PartitionError when out of range
        return self
