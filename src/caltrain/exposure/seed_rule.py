"""DeepEnclave's exposure metric, implemented as the seed describes it (DESIGN.md §4).

Each IR channel is projected to the input size (min-max scaled, bilinear resize, replicated over input channels;
zoo models take [0, 1] inputs without a normalisation layer, so nothing more), classified by the model itself,
and m_l(x) = min over channels of KL(P(x) || P(projection)). The layer is safe for x when m_l(x) ≥ δ(x) =
KL(P(x) || uniform) = log N − H(P(x)). A flat IR (after a linear layer) has no channels; we lay it out
row-major on the smallest square as one channel, an extension the seed does not define.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SeedRuleResult:
    kl_min: np.ndarray  # m_l(x) per target
    threshold: np.ndarray  # δ(x) per target

    @property
    def margin(self) -> np.ndarray:
        return self.kl_min - self.threshold

    @property
    def safe(self) -> np.ndarray:
        return self.kl_min >= self.threshold


def as_channels(ir: torch.Tensor) -> torch.Tensor:
    """B×C×h×w view of an IR; a flat IR becomes one channel on the smallest square, zero-padded."""
    if ir.dim() == 4:
        return ir
    flat = ir.flatten(1)
    side = math.isqrt(flat.shape[1] - 1) + 1
    return F.pad(flat, (0, side * side - flat.shape[1])).view(-1, 1, side, side)


def project_channels(ir: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """B×C×(input_shape) images, one per IR channel."""
    maps = as_channels(ir)
    lo = maps.amin(dim=(2, 3), keepdim=True)
    hi = maps.amax(dim=(2, 3), keepdim=True)
    scaled = (maps - lo) / (hi - lo).clamp_min(1e-12)
    b, c = scaled.shape[:2]
    resized = F.interpolate(scaled.reshape(b * c, 1, *scaled.shape[2:]), size=input_shape[1:], mode="bilinear")
    return resized.expand(-1, input_shape[0], -1, -1).reshape(b, c, *input_shape)


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def threshold(p_log: torch.Tensor) -> torch.Tensor:
    """δ = KL(P || uniform) = log N − H(P)."""
    uniform = torch.full_like(p_log, -math.log(p_log.shape[-1]))
    return kl_rows(p_log, uniform)


@torch.no_grad()
def seed_rule(model: nn.Module, x: torch.Tensor, ir: torch.Tensor, chunk: int = 16) -> SeedRuleResult:
    model.eval()
    input_shape = tuple(x.shape[1:])
    p_log = F.log_softmax(model(x), dim=-1)
    kl_min = []
    for start in range(0, len(x), chunk):
        proj = project_channels(ir[start : start + chunk], input_shape)
        b, c = proj.shape[:2]
        q_log = F.log_softmax(model(proj.reshape(b * c, *input_shape)), dim=-1).view(b, c, -1)
        kl_min.append(kl_rows(p_log[start : start + b, None, :], q_log).amin(dim=1))
    return SeedRuleResult(kl_min=torch.cat(kl_min).numpy(), threshold=threshold(p_log).numpy())
