"""Model specs: the zoo is specs, shapes are inferred right, the hash is canonical, bad specs fail with one typed
line, and no spec, however mangled, makes the parser raise anything but a SpecError."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from caltrain.models import (
    ZOO,
    ShapeMismatch,
    SpecError,
    UnknownArchitecture,
    UnknownLayer,
    block_seed,
    loads_spec,
    parse_spec,
    resolve_model,
)
from caltrain.models.spec import LAYERS, ModelSpec, canonical_json
from caltrain.models.zoo import DOCUMENTS

# Pinned: a policy approves an architecture by this hash, so a change to the canonical form must be deliberate.
DIGITS_CNN_HASH = "76596b9cac9f5c72c77bc5ae28ed88aff79eafdae1a9729c8e045f2487c1dcad"

SMALL: dict[str, Any] = {
    "name": "small",
    "input_shape": [1, 8, 8],
    "num_classes": 10,
    "blocks": [
        {"name": "conv", "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "relu"}]},
        {"name": "flat", "layers": [{"type": "flatten"}]},
        {"name": "logits", "layers": [{"type": "linear", "out_features": 10}]},
    ],
}


def check_against_torch(spec: ModelSpec) -> None:
    """What the spec infers is what torch computes: every block's output shape and parameter count."""
    model = spec.build(seed=0).eval()
    x = torch.zeros(2, *spec.input_shape)
    with torch.no_grad():
        for (name, block), shape, params in zip(
            model.named_children(), spec.block_shapes, spec.block_parameters, strict=True
        ):
            x = block(x)
            assert tuple(x.shape[1:]) == shape, name
            assert sum(p.numel() for p in block.parameters()) == params, name
    assert [n for n, _ in model.named_children()] == list(spec.blocks)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_are_specs_whose_shapes_torch_agrees_with(name: str) -> None:
    spec = ZOO[name]
    check_against_torch(spec)
    assert isinstance(spec.build(seed=0)[-1], nn.Linear)  # the classifier: fingerprints embed its input
    assert parse_spec(spec.to_dict()).hash == spec.hash


def test_hash_is_pinned_domain_separated_and_canonical() -> None:
    spec = ZOO["digits-cnn"]
    assert spec.hash == DIGITS_CNN_HASH
    assert spec.hash != hashlib.sha256(spec.canonical.encode()).hexdigest()
    # the same architecture written another way: defaults spelled out, pairs, key order
    doc = copy.deepcopy(SMALL)
    doc["blocks"][0]["layers"][0].update(kernel_size=[3, 3], stride=1, padding=[0, 0], bias=True)
    doc["blocks"][0]["type"] = "sequential"
    reordered = json.loads(json.dumps(doc, sort_keys=True))
    assert parse_spec(doc).hash == parse_spec(reordered).hash == parse_spec(SMALL).hash
    assert parse_spec(doc).canonical == parse_spec(SMALL).canonical == canonical_json(parse_spec(doc).to_dict())
    # and any architectural change is another hash
    changed = copy.deepcopy(SMALL)
    changed["blocks"][0]["layers"][0]["out_channels"] = 5
    assert parse_spec(changed).hash != parse_spec(SMALL).hash


def test_resolve_model_takes_a_zoo_name_or_a_document() -> None:
    assert resolve_model("digits-cnn") is ZOO["digits-cnn"]
    assert resolve_model(SMALL).blocks == ("conv", "flat", "logits")
    assert resolve_model(SMALL).input_shape == (1, 8, 8) and resolve_model(SMALL).num_classes == 10
    with pytest.raises(UnknownArchitecture, match="unknown model 'nope'"):
        resolve_model("nope")


def test_each_block_starts_from_its_own_seed() -> None:
    """Block i's initial weights depend on (seed, i) only: the BackNet's tell nothing about the FrontNet's."""
    spec = ZOO["digits-cnn"]
    model = spec.build(seed=7)
    again = spec.build(seed=7).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    other = copy.deepcopy(spec.to_dict())
    other["blocks"][0]["layers"][0]["out_channels"] = 8  # change block 0; blocks after conv2 keep their shapes
    other["blocks"][1]["layers"][0]["out_channels"] = 32
    changed = parse_spec(other).build(seed=7)
    assert torch.equal(changed.fc1[0].weight, model.fc1[0].weight)
    assert torch.equal(changed.logits.weight, model.logits.weight)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(block_seed(7, 4))
        alone = nn.Linear(64, 10)
    assert torch.equal(alone.weight, model.logits.weight)
    assert len({block_seed(7, i) for i in range(5)} | {block_seed(8, i) for i in range(5)}) == 10


def _with(path: list[Any], value: Any, base: dict[str, Any] = SMALL) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()
CONV = ["blocks", 0, "layers", 0]
BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("unknown layer", _with([*CONV, "type"], "conv3d"), UnknownLayer, "unknown layer type 'conv3d'"),
    ("code by name", _with([*CONV, "type"], "os.system"), UnknownLayer, "unknown layer type 'os.system'"),
    ("unknown block", _with(["blocks", 0, "type"], "loop"), UnknownLayer, "unknown block type"),
    ("zero channels", _with([*CONV, "out_channels"], 0), SpecError, "out_channels must be an integer in"),
    ("bool as int", _with([*CONV, "out_channels"], True), SpecError, "out_channels must be an integer"),
    ("float as int", _with([*CONV, "out_channels"], 4.0), SpecError, "out_channels must be an integer"),
    ("unknown field", _with([*CONV, "inplace"], True), SpecError, "unknown field 'inplace'"),
    ("missing field", _with([*CONV, "out_channels"], DELETE), SpecError, "lacks 'out_channels'"),
    ("kernel too big", _with([*CONV, "kernel_size"], 9), ShapeMismatch, "does not fit an input side of 8"),
    ("wrong input", _with(["input_shape"], [3, 8, 8]), ShapeMismatch, None),  # fine on its own: see below
    ("classifier size", _with(["blocks", 2, "layers", 0, "out_features"], 9), ShapeMismatch, "the classifier"),
    ("no flatten", _with(["blocks", 1, "layers", 0, "type"], "relu"), ShapeMismatch, "needs a flat vector"),
    ("dup name", _with(["blocks", 1, "name"], "conv"), SpecError, "used twice"),
    ("reserved name", _with(["blocks", 1, "name"], "forward"), SpecError, "reserved"),
    ("dotted name", _with(["blocks", 1, "name"], "a.b"), SpecError, "name must match"),
    ("version", _with(["version"], 2), SpecError, "version 2 is not supported"),
    (
        "dropout p=1",
        _with(["blocks", 1, "layers"], [{"type": "dropout", "p": 1}, {"type": "flatten"}]),
        SpecError,
        "p must",
    ),
    (
        "too big",
        _with(["blocks", 1, "layers"], [{"type": "flatten"}, *[{"type": "linear", "out_features": 8192}] * 2]),
        SpecError,
        "exceeds 50,000,000 parameters",
    ),
]


@pytest.mark.parametrize(("case", "doc", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_specs_fail_with_one_typed_line(
    case: str, doc: dict[str, Any], error: type[Exception], message: str
) -> None:
    if message is None:  # a valid spec that does not fit the data it would train on
        with pytest.raises(ShapeMismatch, match="takes 3×8×8 inputs, the data holds 1×8×8"):
            parse_spec(doc).check_data((1, 8, 8), 10)
        return
    with pytest.raises(error, match=message) as info:
        parse_spec(doc)
    assert "\n" not in str(info.value)


def test_residual_and_concat_blocks_check_their_branches() -> None:
    base = {"name": "r", "input_shape": [2, 6, 6], "num_classes": 3}
    conv = {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}
    head = [
        {"name": "f", "layers": [{"type": "flatten"}]},
        {"name": "out", "layers": [{"type": "linear", "out_features": 3}]},
    ]
    with pytest.raises(ShapeMismatch, match="the body outputs 4×6×6 but the shortcut 2×6×6"):
        parse_spec({**base, "blocks": [{"name": "b", "type": "residual", "body": [conv]}, *head]})
    spec = parse_spec(
        {
            **base,
            "blocks": [
                {
                    "name": "b",
                    "type": "residual",
                    "body": [conv],
                    "shortcut": [{**conv, "kernel_size": 1, "padding": 0}],
                },
                *head,
            ],
        }
    )
    check_against_torch(spec)
    pooled = {"type": "maxpool2d", "kernel_size": 2}
    with pytest.raises(ShapeMismatch, match="branches output 4×6×6, 2×3×3"):
        parse_spec({**base, "blocks": [{"name": "c", "type": "concat", "branches": [[conv], [pooled]]}, *head]})
    spec = parse_spec({**base, "blocks": [{"name": "c", "type": "concat", "branches": [[conv], []]}, *head]})
    assert spec.block_shapes[0] == (6, 6, 6)
    check_against_torch(spec)


def test_json_text_is_strict() -> None:
    text = json.dumps(SMALL)
    assert loads_spec(text).hash == parse_spec(SMALL).hash
    with pytest.raises(SpecError, match="not JSON"):
        loads_spec(text[:-1])
    with pytest.raises(SpecError, match="appears twice"):
        loads_spec(text.replace('"name": "small"', '"name": "small", "name": "other"'))
    with pytest.raises(SpecError, match="NaN is not a JSON number"):
        loads_spec(text.replace('"out_channels": 4', '"out_channels": NaN'))
    with pytest.raises(SpecError, match="the limit is"):
        loads_spec(" " * (2 << 20))


# ------------------------------------------------------------------------------------------------ property tests

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([*LAYERS, "sequential", "residual", "concat", "__class__", "forward", "0", "", "a" * 40])
    | st.text(max_size=8),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from([SMALL, *DOCUMENTS])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            return draw(json_values)
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add", "number", "number", "number"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["stride", "p", "extra", "type", "name", "body", "groups"]))] = draw(
                json_values
            )
        elif action == "number":
            parent[path[-1]] = draw(st.integers(-2, 70) | st.floats(-1, 2))
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@given(mutated_specs())
def test_mutated_specs_only_ever_raise_spec_errors(doc: Any) -> None:
    try:
        spec = parse_spec(doc)
    except SpecError as exc:
        assert "\n" not in str(exc)
        return
    if spec.parameters < 2_000_000:
        check_against_torch(spec)


LAYER_TYPES = sorted(LAYERS)


@st.composite
def random_layer(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(LAYER_TYPES))
    layer: dict[str, Any] = {"type": kind}
    for name, param in LAYERS[kind].params.items():
        if param.default is not None and draw(st.booleans()):
            continue
        if param.kind in ("int", "pair"):
            value: Any = draw(st.integers(max(int(param.lo), 0), min(int(param.hi), 6)))
            if param.kind == "pair" and draw(st.booleans()):
                value = [value, draw(st.integers(max(int(param.lo), 0), min(int(param.hi), 6)))]
        elif param.kind == "bool":
            value = draw(st.booleans())
        else:
            value = draw(st.floats(param.lo, min(param.hi, 0.9)))
        layer[name] = value
    return layer


@st.composite
def random_specs(draw: st.DrawFn) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["sequential", "residual", "concat"]))
        layers = st.lists(random_layer(), min_size=1, max_size=3)
        if kind == "sequential":
            blocks.append({"name": f"b{i}", "layers": draw(layers)})
        elif kind == "residual":
            blocks.append(
                {
                    "name": f"b{i}",
                    "type": kind,
                    "body": draw(layers),
                    "after": draw(st.lists(random_layer(), max_size=1)),
                }
            )
        else:
            branches = draw(st.lists(st.lists(random_layer(), max_size=2), min_size=2, max_size=3))
            blocks.append({"name": f"b{i}", "type": kind, "branches": branches})
    blocks += [
        {"name": "flat", "layers": [{"type": "flatten"}]},
        {"name": "out", "layers": [{"type": "linear", "out_features": 3}]},
    ]
    shape = [draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))]
    return {"name": "random", "input_shape": shape, "num_classes": 3, "blocks": blocks}


@given(random_specs())
def test_random_specs_parse_to_what_torch_builds(doc: dict[str, Any]) -> None:
    try:
        spec = parse_spec(doc)
    except SpecError as exc:
        assert "\n" not in str(exc)
        return
    check_against_torch(spec)
    assert parse_spec(spec.to_dict()).hash == spec.hash


def test_the_documented_example_has_the_documented_hash() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    example = re.search(r"## Format\n\n```json\n(.*?)```", text, re.S)
    documented = re.search(r"hash: `([0-9a-f]{64})`", text)
    assert example and documented
    spec = loads_spec(example.group(1))
    assert spec.hash == documented.group(1)
    assert f"({spec.parameters:,} parameters" in text
    assert ZOO["digits-cnn"].hash in text
