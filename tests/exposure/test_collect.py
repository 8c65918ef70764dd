"""IRs from forward hooks equal the FrontNet outputs; candidate layers and enclave costs are counted right."""

from __future__ import annotations

import pytest
import torch

from caltrain.exposure.collect import assessable_layers, collect_irs, enclave_cost
from caltrain.models import build_model, candidate_cuts, partition


@pytest.mark.parametrize("name", ["digits-cnn", "digits-resnet"])
def test_hooked_irs_equal_frontnet_outputs(name: str) -> None:
    model = build_model(name, seed=0).eval()
    x = torch.rand(5, 1, 8, 8)
    cuts = candidate_cuts(model)  # digits-resnet's "flatten" is a function, not a module: no hook there
    irs = collect_irs(model, cuts, x, batch=2)
    with torch.no_grad():
        for cut in cuts:
            # batch=2 chunks vs one batch of 5: convolutions may sum in another order (float32 rounding only)
            torch.testing.assert_close(irs[cut], partition(model, cut).front(x), rtol=1e-5, atol=1e-6)


def test_assessable_layers_skip_reshapes_and_full_enclave() -> None:
    assert assessable_layers(build_model("digits-cnn", seed=0), (1, 8, 8)) == ["conv1", "conv2", "fc1"]
    assert assessable_layers(build_model("digits-resnet", seed=0), (1, 8, 8)) == ["stem", "block1", "down", "block2"]
    assert assessable_layers(build_model("fmnist-cnn", seed=0), (1, 28, 28)) == ["conv1", "conv2", "conv3", "fc1"]


def test_enclave_cost_of_the_first_conv() -> None:
    cost = enclave_cost(build_model("digits-cnn", seed=0), "conv1", (1, 8, 8), runs=3)
    assert cost.frontnet_params == 16 * 9 + 16
    assert cost.flops == 2 * (16 * 8 * 8) * 9  # one 3×3 single-channel MAC per output value
    assert cost.activation_bytes == 2 * 16 * 8 * 8 * 4  # conv output and ReLU output, float32
    assert cost.latency_ms > 0
