"""Small CNNs for the data we have, built of named top-level blocks so every block edge is a cut.

Most are `nn.Sequential`; `digits-resnet` has residual blocks (cuts only between blocks, found by torch.fx).
The last block is the classifier layer; the input to it is the penultimate-layer embedding that
accountability fingerprints use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from caltrain.errors import ModelError


def _conv(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _head(features: int, hidden: int, classes: int) -> list[tuple[str, nn.Module]]:
    return [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Sequential(nn.Linear(features, hidden), nn.ReLU())),
        ("logits", nn.Linear(hidden, classes)),
    ]


def _digits_cnn() -> nn.Sequential:
    blocks = [("conv1", _conv(1, 16, pool=False)), ("conv2", _conv(16, 32, pool=True))]
    return nn.Sequential(OrderedDict(blocks + _head(32 * 4 * 4, 64, 10)))


def _fmnist_cnn() -> nn.Sequential:
    blocks = [("conv1", _conv(1, 32, True)), ("conv2", _conv(32, 64, True)), ("conv3", _conv(64, 128, True))]
    return nn.Sequential(OrderedDict(blocks + _head(128 * 3 * 3, 128, 10)))


def _cifar_cnn() -> nn.Sequential:
    blocks = [("conv1", _conv(3, 32, True)), ("conv2", _conv(32, 64, True)), ("conv3", _conv(64, 128, True))]
    return nn.Sequential(OrderedDict(blocks + _head(128 * 4 * 4, 128, 10)))


class ResidualBlock(nn.Module):
    """relu(x + conv(relu(conv(x)))): the skip connection makes the block's inside uncuttable."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class DigitsResNet(nn.Module):
    """A tiny residual network for 8×8 digits; not `nn.Sequential`, so partitioning goes through torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(1, 16, pool=False)
        self.block1 = ResidualBlock(16)
        self.down = _conv(16, 32, pool=True)
        self.block2 = ResidualBlock(32)
        self.logits = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.logits(torch.flatten(x, 1))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    datasets: tuple[str, ...]
    builder: Callable[[], nn.Module]


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("digits-cnn", (1, 8, 8), 10, ("digits",), _digits_cnn),
        ModelSpec("digits-resnet", (1, 8, 8), 10, ("digits",), DigitsResNet),
        ModelSpec("fmnist-cnn", (1, 28, 28), 10, ("fashion-mnist", "mnist"), _fmnist_cnn),
        ModelSpec("cifar-cnn", (3, 32, 32), 10, ("cifar10",), _cifar_cnn),
    )
}


def build_model(name: str, *, seed: int | None = None) -> nn.Module:
    """Build a zoo model; with `seed`, its initial weights are a pure function of the seed."""
    try:
        spec = ZOO[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; the zoo has {sorted(ZOO)}") from None
    if seed is None:
        return spec.builder()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.builder()


def spec_for_dataset(dataset: str) -> ModelSpec:
    """The first zoo model trained on `dataset` (the plain CNN where there are several)."""
    for spec in ZOO.values():
        if dataset in spec.datasets:
            return spec
    raise ModelError(f"no zoo model for dataset {dataset!r}")
