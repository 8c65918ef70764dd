"""The plain baseline: the same model, data order and augmentation, one process, no boundary."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from caltrain.data.datasets import ArrayDataset
from caltrain.training.config import TrainConfig
from caltrain.training.core import (
    build_split,
    check_data,
    dropout_seed,
    loss_fn,
    make_optimizer,
    seed_dropout,
    state_digest,
    steps_per_epoch,
    training_batch,
)

Progress = Callable[[dict[str, Any]], None]
EpochEnd = Callable[[int, nn.Module], None]


@dataclass
class EpochStats:
    epoch: int
    loss: float | None  # None in full-enclave mode: the loss never leaves the enclave
    train_accuracy: float | None
    eval_accuracy: float | None
    seconds: float
    samples_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainingReport:
    config: TrainConfig
    epochs: list[EpochStats] = field(default_factory=list)
    front_digest: str = ""
    model_digest: str = ""

    @property
    def final_accuracy(self) -> float | None:
        return self.epochs[-1].eval_accuracy if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epochs": [e.to_dict() for e in self.epochs],
            "front_digest": self.front_digest,
            "model_digest": self.model_digest,
            "final_accuracy": self.final_accuracy,
        }


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    model.train()
    return correct / max(1, len(y))


def train_plain(
    config: TrainConfig, train: ArrayDataset, test: ArrayDataset | None = None, *, progress: Progress | None = None,
    on_epoch_end: EpochEnd | None = None,
) -> tuple[nn.Module, TrainingReport]:
    """Train the whole model in this process exactly as the partitioned trainer does across the boundary.

    `on_epoch_end(epoch, model)` runs after each epoch (1-based), e.g. to keep the checkpoints TracIn replays.
    Dropout in the FrontNet and in the BackNet draws from their own streams, as across the boundary.
    """
    model, part = build_split(config)
    streams = [(part.front, dropout_seed(config, "front")), (part.back, dropout_seed(config, "back"))]
    opt = make_optimizer(list(model.parameters()), config)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    check_data(config, x, y)
    spe = steps_per_epoch(len(y), config.batch_size)
    report = TrainingReport(config)
    model.train()
    for epoch in range(config.epochs):
        started, total_loss, correct = time.perf_counter(), 0.0, 0
        for k in range(spe):
            step = epoch * spe + k
            xb, yb = training_batch(x, y, config, step)
            for half, stream in streams:
                seed_dropout(half, stream, step)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        seconds = time.perf_counter() - started
        acc = evaluate(model, torch.from_numpy(test.x), torch.from_numpy(test.y)) if test is not None else None
        stats = EpochStats(epoch + 1, total_loss / len(y), correct / len(y), acc, seconds, len(y) / seconds)
        report.epochs.append(stats)
        if progress:
            progress({"trainer": "plain", **stats.to_dict()})
        if on_epoch_end:
            on_epoch_end(epoch + 1, model)
    report.front_digest = state_digest(part.front)
    report.model_digest = state_digest(model)
    return model, report
