"""Split a model into FrontNet (first m blocks, inside the enclave) and BackNet (the rest, on the host).

The two halves share parameters with the model they came from, so training them is training the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from caltrain.errors import ModelError


class PartitionError(ModelError):
    """The requested cut cannot be made (out of range, or inside a block whose values cross the cut)."""


@dataclass(frozen=True)
class Partition:
    front: nn.Module
    back: nn.Module
    m: int
    cut_after: str

    @property
    def full_enclave(self) -> bool:
        """FrontNet is the whole model: labels, logits and predictions stay inside the enclave."""
        return isinstance(self.back, nn.Sequential) and len(self.back) == 0


def candidate_cuts(model: nn.Module) -> list[str]:
    """Names of the blocks after which the model can be cut (cut m = after the m-th name)."""
    if isinstance(model, nn.Sequential):
        return [name for name, _ in model.named_children()]
    raise PartitionError(f"cannot partition {type(model).__name__}: only nn.Sequential models are supported")


def partition(model: nn.Module, m: int) -> Partition:
    """FrontNet = first `m` blocks (1 ≤ m ≤ number of blocks; m = all is full-enclave mode)."""
    cuts = candidate_cuts(model)
    if not 1 <= m <= len(cuts):
        raise PartitionError(f"cut m={m} out of range: this model has {len(cuts)} blocks {cuts} (m ≥ 1)")
    assert isinstance(model, nn.Sequential)
    return Partition(front=model[:m], back=model[m:], m=m, cut_after=cuts[m - 1])
