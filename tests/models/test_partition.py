"""FrontNet∘BackNet is the model at every cut, parameters are shared, and impossible cuts are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from caltrain.models import ZOO, PartitionError, build_model, candidate_cuts, partition


@pytest.mark.parametrize("name", sorted(ZOO))
def test_front_then_back_is_the_model_at_every_cut(name: str) -> None:
    model = build_model(name, seed=0).eval()
    x = torch.rand(4, *ZOO[name].input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        cuts = candidate_cuts(model)
        assert cuts == list(ZOO[name].blocks)
        for m in range(1, len(cuts) + 1):
            part = partition(model, m)
            assert part.cut_after == cuts[m - 1] and partition(model, cuts[m - 1]).m == m
            assert part.full_enclave == (m == len(cuts))
            assert tuple(part.front(x).shape[1:]) == ZOO[name].cut_shape(m)
            torch.testing.assert_close(part.back(part.front(x)), expected, rtol=0, atol=0)


def test_residual_model_cuts_only_between_blocks() -> None:
    model = build_model("digits-resnet", seed=0)
    assert candidate_cuts(model) == ["stem", "block1", "down", "block2", "flatten", "logits"]
    with pytest.raises(PartitionError, match=r"no block named 'block1\.body\.0'"):
        partition(model, "block1.body.0")  # inside a residual block: not a cut, by construction


@pytest.mark.parametrize("name", ["digits-cnn", "digits-resnet"])
def test_halves_share_the_models_parameters(name: str) -> None:
    model = build_model(name, seed=0)
    part = partition(model, 2)
    original = {id(p) for p in model.parameters()}
    halves = [id(p) for p in part.front.parameters()] + [id(p) for p in part.back.parameters()]
    assert set(halves) == original and len(halves) == len(original)
    with torch.no_grad():
        next(part.front.parameters()).add_(1.0)  # training a half is training the model
    assert torch.equal(next(part.front.parameters()), next(model.parameters()))
    # state_dict keys of the halves are the whole model's keys
    assert [*part.front.state_dict(), *part.back.state_dict()] == list(model.state_dict())


@pytest.mark.parametrize("m", [0, -1, 7])
def test_out_of_range_cut_is_refused(m: int) -> None:
    with pytest.raises(PartitionError, match="out of range"):
        partition(build_model("digits-resnet", seed=0), m)


def test_only_a_sequence_of_blocks_is_cut() -> None:
    with pytest.raises(PartitionError, match="only a sequence of named blocks"):
        candidate_cuts(nn.Conv2d(1, 1, 1))
