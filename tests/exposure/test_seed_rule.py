"""The seed rule's math on hand-built cases: δ = log N − H(P), m = min over channels of KL(P || Q)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from caltrain.exposure.seed_rule import kl_rows, project_channels, seed_rule, threshold


def test_threshold_is_log_n_minus_entropy() -> None:
    p = np.array([0.7, 0.2, 0.1])
    expected = math.log(3) + float((p * np.log(p)).sum())
    got = threshold(torch.tensor(np.log(p))[None]).item()
    assert abs(got - expected) < 1e-6
    assert abs(threshold(torch.full((1, 4), math.log(0.25))).item()) < 1e-7  # uniform P: δ = 0


def test_kl_matches_the_definition() -> None:
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6])
    got = kl_rows(torch.tensor(np.log(p)), torch.tensor(np.log(q))).item()
    assert abs(got - float((p * np.log(p / q)).sum())) < 1e-9


def test_projection_min_max_scales_resizes_and_replicates() -> None:
    ir = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # 1×2 channels×2×2
    proj = project_channels(ir, (3, 4, 4))
    assert proj.shape == (1, 2, 3, 4, 4)
    assert proj[0, 0].min() == 0.0 and proj[0, 0].max() == 1.0  # min-max scaled (corners keep extremes)
    assert torch.equal(proj[0, 0, 0], proj[0, 0, 2])  # replicated over input channels
    assert torch.all(proj[0, 1] == 0)  # a constant channel scales to zero, not NaN


class _Fixed(nn.Module):
    """Logits = [mean, 1 − mean, 0] of the image: a hand-computable oracle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([4 * m, 4 * (1 - m), torch.zeros_like(m)], dim=1)


def test_min_over_channels_and_safety_against_hand_computation() -> None:
    model = _Fixed()
    x = torch.full((2, 1, 2, 2), 0.9)
    x[1] = 0.5
    # projections keep the IR's 2×2 pattern: means 0.25 and 0 (a constant channel) for target 0,
    # 0.5 and 0.25 for target 1
    ir = torch.tensor(
        [
            [[[0.0, 0.0], [0.0, 1.0]], [[3.0, 3.0], [3.0, 3.0]]],
            [[[0.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]],
        ]
    )
    result = seed_rule(model, x, ir)
    projected_means = [(0.25, 0.0), (0.5, 0.25)]

    def softmax(m: float) -> np.ndarray:
        z = np.exp([4 * m, 4 * (1 - m), 0.0])
        return z / z.sum()

    for i, mean in enumerate([0.9, 0.5]):
        p = softmax(mean)
        kls = [float((p * np.log(p / softmax(q))).sum()) for q in projected_means[i]]
        delta = math.log(3) + float((p * np.log(p)).sum())
        assert abs(result.kl_min[i] - min(kls)) < 1e-5
        assert abs(result.threshold[i] - delta) < 1e-5
        assert bool(result.safe[i]) == (min(kls) >= delta)
    assert result.safe.tolist() == [True, False]  # both branches of the rule are exercised
    np.testing.assert_allclose(result.margin, result.kl_min - result.threshold)
