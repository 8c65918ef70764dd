"""The built-in zoo: specs like any model owner's (models/spec.py), named so a config can say "digits-cnn".

Written here as Python literals rather than JSON files because the enclave's measurement covers its Python
source: a zoo name means exactly the spec measured with the enclave. `caltrain model show NAME` prints any of
them as JSON, a starting point for one's own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from caltrain.models.spec import ModelSpec, UnknownArchitecture, parse_spec

Doc = dict[str, Any]


def _conv(out: int, *, pool: bool = False, norm: bool = False) -> list[Doc]:
    layers: list[Doc] = [{"type": "conv2d", "out_channels": out, "kernel_size": 3, "padding": 1, "bias": not norm}]
    if norm:
        layers.append({"type": "batchnorm2d"})
    layers.append({"type": "relu"})
    if pool:
        layers.append({"type": "maxpool2d", "kernel_size": 2})
    return layers


def _head(hidden: int, classes: int) -> list[Doc]:
    return [
        {"name": "flatten", "layers": [{"type": "flatten"}]},
        {"name": "fc1", "layers": [{"type": "linear", "out_features": hidden}, {"type": "relu"}]},
        {"name": "logits", "layers": [{"type": "linear", "out_features": classes}]},
    ]


def _cnn(name: str, shape: list[int], widths: list[int], pools: list[bool], hidden: int) -> Doc:
    blocks = [
        {"name": f"conv{i}", "layers": _conv(w, pool=p)} for i, (w, p) in enumerate(zip(widths, pools, strict=True), 1)
    ]
    return {"name": name, "input_shape": shape, "num_classes": 10, "blocks": blocks + _head(hidden, 10)}


def _residual(name: str, channels: int) -> Doc:
    """relu(x + conv(relu(conv(x)))): the skip connection makes the block's inside uncuttable."""
    conv = {"type": "conv2d", "out_channels": channels, "kernel_size": 3, "padding": 1}
    return {"name": name, "type": "residual", "body": [conv, {"type": "relu"}, conv], "after": [{"type": "relu"}]}


def _basic_block(name: str, channels: int, stride: int) -> Doc:
    """ResNet's basic block (He et al. 2016): two 3×3 conv+BN, a 1×1 conv+BN shortcut where the shape changes."""
    conv = {"type": "conv2d", "out_channels": channels, "kernel_size": 3, "padding": 1, "bias": False}
    body = [{**conv, "stride": stride}, {"type": "batchnorm2d"}, {"type": "relu"}, conv, {"type": "batchnorm2d"}]
    block: Doc = {"name": name, "type": "residual", "body": body, "after": [{"type": "relu"}]}
    if stride != 1:
        block["shortcut"] = [
            {"type": "conv2d", "out_channels": channels, "kernel_size": 1, "stride": stride, "bias": False},
            {"type": "batchnorm2d"},
        ]
    return block


DOCUMENTS: tuple[Doc, ...] = (
    _cnn("digits-cnn", [1, 8, 8], [16, 32], [False, True], 64),
    {
        "name": "digits-resnet",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "blocks": [
            {"name": "stem", "layers": _conv(16)},
            _residual("block1", 16),
            {"name": "down", "layers": _conv(32, pool=True)},
            _residual("block2", 32),
            {"name": "flatten", "layers": [{"type": "flatten"}]},
            {"name": "logits", "layers": [{"type": "linear", "out_features": 10}]},
        ],
    },
    _cnn("fmnist-cnn", [1, 28, 28], [32, 64, 128], [True, True, True], 128),
    _cnn("cifar-cnn", [3, 32, 32], [32, 64, 128], [True, True, True], 128),
    {
        "name": "cifar-resnet",
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "blocks": [
            {"name": "stem", "layers": _conv(16, norm=True)},
            _basic_block("block1", 16, 1),
            _basic_block("block2", 32, 2),
            _basic_block("block3", 64, 2),
            {"name": "pool", "layers": [{"type": "adaptiveavgpool2d", "output_size": 1}, {"type": "flatten"}]},
            {"name": "logits", "layers": [{"type": "linear", "out_features": 10}]},
        ],
    },
)

ZOO: dict[str, ModelSpec] = {doc["name"]: parse_spec(doc) for doc in DOCUMENTS}

# The zoo model each dataset trains by default (`caltrain assess`, the demo).
DEFAULT_FOR_DATASET = {
    "digits": "digits-cnn",
    "fashion-mnist": "fmnist-cnn",
    "mnist": "fmnist-cnn",
    "cifar10": "cifar-cnn",
    "colour-digits": "cifar-resnet",
}


def resolve_model(ref: str | dict[str, Any] | ModelSpec) -> ModelSpec:
    """The spec a config means: a zoo name, or an inline spec document (parsed and validated here)."""
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, str):
        try:
            return ZOO[ref]
        except KeyError:
            raise UnknownArchitecture(f"unknown model {ref!r}; the zoo has {sorted(ZOO)} (or give a spec)") from None
    return parse_spec(ref)


def build_model(ref: str | dict[str, Any] | ModelSpec, *, seed: int | None = None) -> nn.Sequential:
    """`resolve_model(ref).build(seed)`: the model at its seeded initial weights (or torch's, without a seed)."""
    return resolve_model(ref).build(seed)


def spec_for_dataset(dataset: str) -> ModelSpec:
    """The zoo model trained on `dataset` by default."""
    try:
        return ZOO[DEFAULT_FOR_DATASET[dataset]]
    except KeyError:
        raise UnknownArchitecture(
            f"no zoo model for dataset {dataset!r}; the zoo covers {sorted(DEFAULT_FOR_DATASET)}"
        ) from None
