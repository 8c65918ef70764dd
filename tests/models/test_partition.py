"""FrontNet∘BackNet is the model at every valid cut, parameters are shared, and impossible cuts are refused."""

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
        for m in range(1, len(cuts) + 1):
            part = partition(model, m)
            assert part.cut_after == cuts[m - 1]
            assert part.full_enclave == (m == len(cuts))
            torch.testing.assert_close(part.back(part.front(x)), expected, rtol=0, atol=0)


def test_residual_model_cuts_only_between_blocks() -> None:
    assert candidate_cuts(build_model("digits-resnet", seed=0)) == [
        "stem",
        "block1",
        "down",
        "block2",
        "flatten",
        "logits",
    ]


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


def test_cut_inside_a_residual_block_names_the_block() -> None:
    model = build_model("digits-resnet", seed=0)
    with pytest.raises(PartitionError, match=r"inside block 'block1'.*2 values"):
        partition(model, "block1.conv1")


def test_inner_cut_outside_residual_blocks_is_allowed_by_name() -> None:
    model = build_model("digits-resnet", seed=0).eval()
    part = partition(model, "down.0")  # between the conv and the ReLU of a plain block
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(part.back(part.front(x)), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("m", [0, -1, 7])
def test_out_of_range_cut_is_refused(m: int) -> None:
    with pytest.raises(PartitionError, match="out of range"):
        partition(build_model("digits-resnet", seed=0), m)


def test_unknown_name_and_untraceable_model_are_refused() -> None:
    with pytest.raises(PartitionError, match="no block or submodule"):
        partition(build_model("digits-resnet", seed=0), "nope")

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # data-dependent control flow

    with pytest.raises(PartitionError, match="cannot trace"):
        candidate_cuts(Branchy())
