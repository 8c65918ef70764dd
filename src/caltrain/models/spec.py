"""Models as data: a declarative spec over an allow-list of torch.nn layers, built without running its code.

A spec is a JSON object: the input shape (C, H, W), the number of classes, and a sequence of named top-level
blocks. A block is a list of layers, a residual block (body + shortcut, summed) or a concatenation block
(branches side by side along channels). Every block edge is a cut; a cut inside a residual or concatenation
block cannot be written. The last block is the classifier: one `linear` layer with `num_classes` outputs, whose
input is the penultimate embedding accountability fingerprints.

Building maps each allow-listed layer name to its torch constructor with validated arguments: nothing in the
spec is evaluated, unpickled or imported. Shapes are inferred from the spec alone, so a spec that does not fit
its input, or holds more than the limits below, is refused before anything is built. The spec's identity is a
domain-separated SHA-256 over its canonical JSON (defaults filled in, keys sorted, no whitespace), so the same
architecture written two ways has one hash. docs/models.md is the format's reference.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from caltrain.crypto.hashing import tagged_hash
from caltrain.errors import ModelError
from caltrain.models.layers import Concat, Dropout, Dropout2d, Residual
from caltrain.models.partition import PartitionError

SPEC_VERSION = 1
HASH_TAG = "caltrain/model-spec/v1"
INIT_TAG = "caltrain/model-init/v1"

# Limits that keep what an enclave builds from a stranger's spec bounded in memory and time.
MAX_SPEC_BYTES = 1 << 20
MAX_BLOCKS = 64
MAX_LAYERS = 64  # per layer list (a block's layers, a body, a shortcut, a branch, an `after`)
MAX_BRANCHES = 8
MAX_INPUT_CHANNELS = 16
MAX_INPUT_SIDE = 512
MAX_CLASSES = 10_000
MAX_WIDTH = 8192  # channels or features of one layer
MAX_KERNEL = 15
MAX_PARAMETERS = 50_000_000
MAX_ACTIVATIONS = 8 * 1024 * 1024  # values all layers output for one input (32 MiB in float32)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Shape = tuple[int, ...]


class SpecError(ModelError):
    """The spec is malformed: not JSON, a missing or unknown field, a bad value, or a limit exceeded."""


class UnknownLayer(SpecError):
    """A layer or block type outside the allow-list."""


class ShapeMismatch(SpecError):
    """Shapes do not chain through the layers, or the spec does not fit the data it is asked to train on."""


class UnknownArchitecture(ModelError):
    """A model named by a string that is not in the zoo."""


# ---------------------------------------------------------------------------------------------------------------
# Reading values: every check names where it failed and what was expected, in one line.


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise SpecError(f"{where} must be an integer in [{lo}, {hi}], got {_show(value)}")
    return value


def _float(value: Any, where: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    ok = (
        type(value) in (int, float)
        and math.isfinite(value)
        and lo <= value
        and (value < hi if hi_open else value <= hi)
    )
    if not ok:
        raise SpecError(f"{where} must be a number in [{lo}, {hi}{')' if hi_open else ']'}, got {_show(value)}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise SpecError(f"{where} must be true or false, got {_show(value)}")
    return value


def _pair(value: Any, where: str, lo: int, hi: int) -> list[int]:
    """An int or [int, int] (height, width); normalised to the pair."""
    items = [value, value] if type(value) is int else value
    if not isinstance(items, list) or len(items) != 2 or any(type(v) is not int or not lo <= v <= hi for v in items):
        raise SpecError(
            f"{where} must be an integer or [height, width] of integers in [{lo}, {hi}], got {_show(value)}"
        )
    return list(items)


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _object(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SpecError(f"{where} must be a JSON object, got {_show(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise SpecError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(repr(k) for k in (*required, *optional))
        raise SpecError(f"{where} has unknown field {unknown[0]!r} (allowed: {allowed})")
    return value


def _list(value: Any, where: str, lo: int, hi: int) -> list[Any]:
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        raise SpecError(f"{where} must be a list of {lo} to {hi} items, got {_show(value)}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# The allow-list: per layer type, its parameters, how it changes the shape, its parameter count and constructor.


@dataclass(frozen=True)
class Param:
    kind: str  # "int", "pair", "float", "float<" (upper bound open), "bool"
    lo: float
    hi: float
    default: Any = None  # None: required (no parameter defaults to null)

    def read(self, value: Any, where: str) -> Any:
        if self.kind == "int":
            return _int(value, where, int(self.lo), int(self.hi))
        if self.kind == "pair":
            return _pair(value, where, int(self.lo), int(self.hi))
        if self.kind == "bool":
            return _bool(value, where)
        return _float(value, where, self.lo, self.hi, hi_open=self.kind == "float<")


Args = dict[str, Any]


@dataclass(frozen=True)
class LayerType:
    params: dict[str, Param]
    rank: tuple[int, ...]  # accepted input ranks (3: C×H×W, 1: features); () = any
    out_shape: Callable[[Shape, Args], Shape]
    build: Callable[[Shape, Args], nn.Module]


def _same(shape: Shape, _: Args) -> Shape:
    return shape


def _spatial(shape: Shape, args: Args, channels: int) -> Shape:
    """Output of a sliding window (conv or pool) over C×H×W; refuses windows that do not fit."""
    k, s, p = args["kernel_size"], args["stride"], args["padding"]
    d = args.get("dilation", [1, 1])
    sides = []
    for axis, size in enumerate(shape[1:]):
        span = d[axis] * (k[axis] - 1) + 1
        out = (size + 2 * p[axis] - span) // s[axis] + 1
        if out < 1:
            raise ShapeMismatch(
                f"a window of {span} (kernel {k[axis]}, dilation {d[axis]}) does not fit an input side of {size} "
                f"with padding {p[axis]}"
            )
        sides.append(out)
    return (channels, *sides)


def _conv_shape(shape: Shape, a: Args) -> Shape:
    if shape[0] % a["groups"] or a["out_channels"] % a["groups"]:
        raise ShapeMismatch(
            f"groups={a['groups']} must divide the {shape[0]} input and {a['out_channels']} output channels"
        )
    return _spatial(shape, a, a["out_channels"])


def _pool_shape(shape: Shape, a: Args) -> Shape:
    if any(p > k // 2 for p, k in zip(a["padding"], a["kernel_size"], strict=True)):
        raise ShapeMismatch(f"padding {a['padding']} must be at most half the kernel {a['kernel_size']}")
    return _spatial(shape, a, shape[0])


def _group_shape(shape: Shape, a: Args) -> Shape:
    if shape[0] % a["num_groups"]:
        raise ShapeMismatch(f"num_groups={a['num_groups']} must divide the {shape[0]} channels")
    return shape


def _pair_t(v: list[int]) -> tuple[int, int]:
    return v[0], v[1]


def _pool(cls: type[nn.MaxPool2d] | type[nn.AvgPool2d]) -> LayerType:
    window = {
        "kernel_size": Param("pair", 1, MAX_KERNEL),
        "padding": Param("pair", 0, MAX_KERNEL, 0),
        "stride": Param("pair", 1, MAX_KERNEL, "kernel_size"),  # defaults to the kernel, as in torch
    }
    return LayerType(
        window,
        (3,),
        _pool_shape,
        lambda s, a: cls(_pair_t(a["kernel_size"]), stride=_pair_t(a["stride"]), padding=_pair_t(a["padding"])),
    )


NORM = {
    "eps": Param("float", 1e-12, 1.0, 1e-5),
    "momentum": Param("float", 0.0, 1.0, 0.1),
    "affine": Param("bool", 0, 1, True),
}

LAYERS: dict[str, LayerType] = {
    "conv2d": LayerType(
        {
            "out_channels": Param("int", 1, MAX_WIDTH),
            "kernel_size": Param("pair", 1, MAX_KERNEL),
            "stride": Param("pair", 1, MAX_KERNEL, 1),
            "padding": Param("pair", 0, MAX_KERNEL, 0),
            "dilation": Param("pair", 1, MAX_KERNEL, 1),
            "groups": Param("int", 1, MAX_WIDTH, 1),
            "bias": Param("bool", 0, 1, True),
        },
        (3,),
        _conv_shape,
        lambda s, a: nn.Conv2d(
            s[0],
            a["out_channels"],
            _pair_t(a["kernel_size"]),
            stride=_pair_t(a["stride"]),
            padding=_pair_t(a["padding"]),
            dilation=_pair_t(a["dilation"]),
            groups=a["groups"],
            bias=a["bias"],
        ),
    ),
    "linear": LayerType(
        {"out_features": Param("int", 1, MAX_WIDTH), "bias": Param("bool", 0, 1, True)},
        (1,),
        lambda s, a: (a["out_features"],),
        lambda s, a: nn.Linear(s[0], a["out_features"], bias=a["bias"]),
    ),
    "batchnorm2d": LayerType(
        NORM,
        (3,),
        _same,
        lambda s, a: nn.BatchNorm2d(s[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"]),
    ),
    "batchnorm1d": LayerType(
        NORM,
        (1,),
        _same,
        lambda s, a: nn.BatchNorm1d(s[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"]),
    ),
    "groupnorm": LayerType(
        {"num_groups": Param("int", 1, MAX_WIDTH), "eps": NORM["eps"], "affine": NORM["affine"]},
        (3,),
        _group_shape,
        lambda s, a: nn.GroupNorm(a["num_groups"], s[0], eps=a["eps"], affine=a["affine"]),
    ),
    "layernorm": LayerType(
        {"eps": NORM["eps"], "affine": NORM["affine"]},
        (),
        _same,
        lambda s, a: nn.LayerNorm(list(s), eps=a["eps"], elementwise_affine=a["affine"]),
    ),
    "maxpool2d": _pool(nn.MaxPool2d),
    "avgpool2d": _pool(nn.AvgPool2d),
    "adaptiveavgpool2d": LayerType(
        {"output_size": Param("pair", 1, 64)},
        (3,),
        lambda s, a: (s[0], *a["output_size"]),
        lambda s, a: nn.AdaptiveAvgPool2d(_pair_t(a["output_size"])),
    ),
    "relu": LayerType({}, (), _same, lambda s, a: nn.ReLU()),
    "leakyrelu": LayerType(
        {"negative_slope": Param("float", 0.0, 1.0, 0.01)},
        (),
        _same,
        lambda s, a: nn.LeakyReLU(a["negative_slope"]),
    ),
    "gelu": LayerType({}, (), _same, lambda s, a: nn.GELU()),
    "silu": LayerType({}, (), _same, lambda s, a: nn.SiLU()),
    "tanh": LayerType({}, (), _same, lambda s, a: nn.Tanh()),
    "sigmoid": LayerType({}, (), _same, lambda s, a: nn.Sigmoid()),
    "dropout": LayerType({"p": Param("float<", 0.0, 1.0, 0.5)}, (), _same, lambda s, a: Dropout(a["p"])),
    "dropout2d": LayerType({"p": Param("float<", 0.0, 1.0, 0.5)}, (3,), _same, lambda s, a: Dropout2d(a["p"])),
    "flatten": LayerType({}, (), lambda s, a: (math.prod(s),), lambda s, a: nn.Flatten()),
}
RANK_NAMES = {3: "channels × height × width", 1: "a flat vector of features"}
BLOCK_TYPES = ("sequential", "residual", "concat")


# ---------------------------------------------------------------------------------------------------------------
# Parsing: a document in, a normalised document (every default filled in) and its shapes out.


@dataclass(frozen=True)
class _Layer:
    kind: str
    args: Args
    in_shape: Shape

    def build(self) -> nn.Module:
        return LAYERS[self.kind].build(self.in_shape, self.args)


@dataclass
class _Tally:
    """What a spec costs, summed while it is parsed, so a limit fails at the layer that crosses it."""

    parameters: int = 0
    activations: int = 0

    def add(self, where: str, parameters: int, out_shape: Shape) -> None:
        self.parameters += parameters
        self.activations += math.prod(out_shape)
        if self.parameters > MAX_PARAMETERS:
            raise SpecError(f"{where}: the model exceeds {MAX_PARAMETERS:,} parameters")
        if self.activations > MAX_ACTIVATIONS:
            raise SpecError(f"{where}: the model's layers output more than {MAX_ACTIVATIONS:,} values per input")


def _parse_layer(doc: Any, where: str, shape: Shape, tally: _Tally) -> tuple[dict[str, Any], _Layer, Shape]:
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise SpecError(f'{where} must be an object with a "type", got {_show(doc)}')
    kind = doc["type"]
    layer = LAYERS.get(kind)
    if layer is None:
        raise UnknownLayer(f"{where}: unknown layer type {kind!r}; allowed: {', '.join(LAYERS)}")
    where = f"{where} ({kind})"
    _object(doc, where, ("type",), tuple(layer.params))
    args: Args = {}
    for name, param in layer.params.items():
        if name in doc:
            args[name] = param.read(doc[name], f"{where} {name}")
        elif param.default is None:
            raise SpecError(f"{where} lacks {name!r}")
        elif isinstance(param.default, str):
            args[name] = args[param.default]  # defaults to another parameter (a pool's stride: its kernel)
        else:
            args[name] = [param.default] * 2 if param.kind == "pair" else param.default
    if layer.rank and len(shape) not in layer.rank:
        wants = " or ".join(RANK_NAMES[r] for r in layer.rank)
        raise ShapeMismatch(f"{where} needs {wants}, but its input is {_dims(shape)}")
    try:
        out = layer.out_shape(shape, args)
    except ShapeMismatch as exc:
        raise ShapeMismatch(f"{where} on input {_dims(shape)}: {exc}") from None
    with torch.device("meta"):  # counts parameters without allocating them (nor drawing random numbers)
        parameters = sum(p.numel() for p in layer.build(shape, args).parameters())
    tally.add(where, parameters, out)
    return {"type": kind, **args}, _Layer(kind, args, shape), out


def _parse_layers(
    doc: Any, where: str, shape: Shape, tally: _Tally, *, least: int
) -> tuple[list[dict[str, Any]], list[_Layer], Shape]:
    items = _list(doc, where, least, MAX_LAYERS)
    normal, layers = [], []
    for i, item in enumerate(items, start=1):
        n, layer, shape = _parse_layer(item, f"{where} layer {i}", shape, tally)
        normal.append(n)
        layers.append(layer)
    return normal, layers, shape


@dataclass(frozen=True)
class _Block:
    """One top-level block: what it is, its layers, and the shape of its input and output."""

    name: str
    kind: str
    lists: dict[str, list[list[_Layer]]]  # "layers" / "body" / "shortcut" / "after" / "branches"
    in_shape: Shape
    out_shape: Shape
    parameters: int

    def build(self) -> nn.Module:
        def seq(layers: list[_Layer]) -> nn.Sequential:
            return nn.Sequential(*(layer.build() for layer in layers))

        if self.kind == "residual":
            return Residual(seq(self.lists["body"][0]), seq(self.lists["shortcut"][0]), seq(self.lists["after"][0]))
        if self.kind == "concat":
            return Concat([seq(b) for b in self.lists["branches"]], seq(self.lists["after"][0]))
        (layers,) = self.lists["layers"]
        # A block of one layer is that layer (state_dict keys `logits.weight`, and the classifier an nn.Linear).
        return layers[0].build() if len(layers) == 1 else seq(layers)


RESERVED = frozenset(dir(nn.Sequential()))


def _parse_block(doc: Any, index: int, shape: Shape, tally: _Tally) -> tuple[dict[str, Any], _Block]:
    where = f"block {index}"
    if not isinstance(doc, dict):
        raise SpecError(f"{where} must be a JSON object, got {_show(doc)}")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SpecError(f"{where} name must match {NAME.pattern}, got {_show(name)}")
    if name in RESERVED:
        raise SpecError(f"{where} name {name!r} is reserved (an attribute of torch.nn.Sequential)")
    kind = doc.get("type", "sequential")
    where = f"block {name!r}"
    parameters_before = tally.parameters
    if kind not in BLOCK_TYPES:
        raise UnknownLayer(f"{where}: unknown block type {_show(kind)}; allowed: {', '.join(BLOCK_TYPES)}")
    normal: dict[str, Any] = {"name": name, "type": kind}
    lists: dict[str, list[list[_Layer]]] = {}
    if kind == "sequential":
        _object(doc, where, ("name", "layers"), ("type",))
        normal["layers"], layers, out = _parse_layers(doc["layers"], where, shape, tally, least=1)
        lists["layers"] = [layers]
    elif kind == "residual":
        _object(doc, where, ("name", "type", "body"), ("shortcut", "after"))
        normal["body"], body, body_out = _parse_layers(doc["body"], f"{where} body", shape, tally, least=1)
        normal["shortcut"], shortcut, short_out = _parse_layers(
            doc.get("shortcut", []), f"{where} shortcut", shape, tally, least=0
        )
        if body_out != short_out:
            raise ShapeMismatch(
                f"{where}: the body outputs {_dims(body_out)} but the shortcut {_dims(short_out)}; they are summed"
            )
        normal["after"], after, out = _parse_layers(doc.get("after", []), f"{where} after", body_out, tally, least=0)
        lists.update(body=[body], shortcut=[shortcut], after=[after])
    else:
        _object(doc, where, ("name", "type", "branches"), ("after",))
        branches_doc = _list(doc["branches"], f"{where} branches", 2, MAX_BRANCHES)
        normal["branches"], branches, outs = [], [], []
        for i, branch in enumerate(branches_doc, start=1):
            n, layers, branch_out = _parse_layers(branch, f"{where} branch {i}", shape, tally, least=0)
            normal["branches"].append(n)
            branches.append(layers)
            outs.append(branch_out)
        if len({len(o) for o in outs}) != 1 or len({o[1:] for o in outs}) != 1:
            raise ShapeMismatch(
                f"{where}: branches output {', '.join(_dims(o) for o in outs)}; they must agree on all but the "
                "first (channel) dimension to be concatenated"
            )
        joined = (sum(o[0] for o in outs), *outs[0][1:])
        tally.add(where, 0, joined)
        normal["after"], after, out = _parse_layers(doc.get("after", []), f"{where} after", joined, tally, least=0)
        lists.update(branches=branches, after=[after])
    return normal, _Block(name, kind, lists, shape, out, tally.parameters - parameters_before)


def _dims(shape: Shape) -> str:
    return "×".join(map(str, shape))


# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A parsed, validated spec; immutable (its canonical JSON is fixed when parsed). Build with `build(seed)`."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    canonical: str  # the normalised document (defaults filled in) as canonical JSON: what the hash covers
    _blocks: tuple[_Block, ...]

    @property
    def hash(self) -> str:
        """Hex SHA-256 over the tag `caltrain/model-spec/v1` and the canonical JSON: what policies approve."""
        return tagged_hash(HASH_TAG, self.canonical.encode()).hex()

    @property
    def blocks(self) -> tuple[str, ...]:
        """Top-level block names in order: cut m puts the first m in the enclave."""
        return tuple(b.name for b in self._blocks)

    @property
    def block_shapes(self) -> tuple[Shape, ...]:
        """Per-input output shape of each block: the IR crossing a cut after it."""
        return tuple(b.out_shape for b in self._blocks)

    @property
    def block_parameters(self) -> tuple[int, ...]:
        return tuple(b.parameters for b in self._blocks)

    @property
    def parameters(self) -> int:
        return sum(self.block_parameters)

    def to_dict(self) -> dict[str, Any]:
        """The normalised document, a fresh copy (a spec in its own right: it parses to the same hash)."""
        document: dict[str, Any] = json.loads(self.canonical)
        return document

    def cut_shape(self, m: int) -> Shape:
        """The IR shape per input at cut m (after the first m blocks; m = all is full-enclave: the logits)."""
        if not 1 <= m <= len(self._blocks):
            raise PartitionError(
                f"cut m={m} out of range: {self.name} has {len(self._blocks)} blocks {list(self.blocks)}"
            )
        return self._blocks[m - 1].out_shape

    def build(self, seed: int | None = None) -> nn.Sequential:
        """The model: an nn.Sequential of the named blocks. With `seed`, block i is initialised (torch's default
        initialisers) from its own generator seeded by `block_seed(seed, i)`: the weights of one block tell
        nothing about another's. Without, from torch's global generator (for weights loaded afterwards)."""
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        for i, block in enumerate(self._blocks):
            if seed is None:
                modules[block.name] = block.build()
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(block_seed(seed, i))
                modules[block.name] = block.build()
        return nn.Sequential(modules)

    def check_data(self, sample_shape: tuple[int, ...], num_labels: int) -> None:
        """Refuse data the model cannot train on: another input shape, or labels beyond its classes."""
        if tuple(sample_shape) != self.input_shape:
            raise ShapeMismatch(
                f"model {self.name} takes {_dims(self.input_shape)} inputs, the data holds {_dims(tuple(sample_shape))}"
            )
        if num_labels > self.num_classes:
            raise ShapeMismatch(
                f"model {self.name} has {self.num_classes} classes, the data has labels up to {num_labels - 1}"
            )


def block_seed(seed: int, index: int) -> int:
    """The seed of block `index`'s initial weights: a domain-separated hash of (seed, index), 63 bits."""
    digest = tagged_hash(INIT_TAG, str(int(seed)).encode(), str(int(index)).encode())
    return int.from_bytes(digest[:8], "big") >> 1


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def parse_spec(doc: Any) -> ModelSpec:
    """Validate a spec document (parsed JSON) and infer every shape; raises a `SpecError` subclass naming the
    first thing wrong."""
    top = _object(doc, "model spec", ("name", "input_shape", "num_classes", "blocks"), ("version",))
    if top.get("version", SPEC_VERSION) != SPEC_VERSION:
        raise SpecError(f"model spec version {_show(top['version'])} is not supported (this is version {SPEC_VERSION})")
    name = top["name"]
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise SpecError(f"model spec name must match {MODEL_NAME.pattern}, got {_show(name)}")
    dims = _list(top["input_shape"], "input_shape", 3, 3)
    shape: Shape = (
        _int(dims[0], "input_shape channels", 1, MAX_INPUT_CHANNELS),
        _int(dims[1], "input_shape height", 1, MAX_INPUT_SIDE),
        _int(dims[2], "input_shape width", 1, MAX_INPUT_SIDE),
    )
    classes = _int(top["num_classes"], "num_classes", 2, MAX_CLASSES)
    tally = _Tally()
    normal_blocks: list[dict[str, Any]] = []
    blocks: list[_Block] = []
    for i, block_doc in enumerate(_list(top["blocks"], "blocks", 2, MAX_BLOCKS), start=1):
        normal, block = _parse_block(block_doc, i, shape, tally)
        if block.name in {b.name for b in blocks}:
            raise SpecError(f"block {i}: the name {block.name!r} is used twice")
        normal_blocks.append(normal)
        blocks.append(block)
        shape = block.out_shape
    last = blocks[-1]
    layers = last.lists.get("layers", [[]])[0]
    if len(layers) != 1 or layers[0].kind != "linear" or layers[0].args["out_features"] != classes:
        raise ShapeMismatch(
            f"the last block ({last.name!r}) must be the classifier: one linear layer with num_classes={classes} "
            "outputs (its input is the embedding accountability fingerprints)"
        )
    shape_in = blocks[0].in_shape
    document = {
        "version": SPEC_VERSION,
        "name": name,
        "input_shape": list(shape_in),
        "num_classes": classes,
        "blocks": normal_blocks,
    }
    return ModelSpec(name, (shape_in[0], shape_in[1], shape_in[2]), classes, canonical_json(document), tuple(blocks))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise SpecError(f"model spec: the key {dup!r} appears twice in one object")
    return dict(pairs)


def loads_spec(text: str | bytes) -> ModelSpec:
    """Parse a spec from JSON text (duplicate keys and NaN are refused)."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"model spec is {len(text):,} bytes; the limit is {MAX_SPEC_BYTES:,}")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SpecError(f"model spec is not JSON: {exc}") from None
    return parse_spec(doc)


def _refuse_constant(name: str) -> Any:
    raise SpecError(f"model spec: {name} is not a JSON number")


def load_spec(path: Path) -> ModelSpec:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read model spec {path}: {exc.strerror or exc}") from None
    return loads_spec(text)
