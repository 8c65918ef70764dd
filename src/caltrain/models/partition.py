"""Split a model into FrontNet (first m blocks, inside the enclave) and BackNet (the rest, on the host).

A model built from a spec is an nn.Sequential of named top-level blocks; every block edge is a cut, and a
residual or concatenation block is one block, so a cut that two values would cross cannot be asked for. The
two halves share parameters with the model they came from, so training them is training the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from caltrain.errors import ModelError


class PartitionError(ModelError):
    """The requested cut cannot be made: out of range, no such block, or a model that is not a sequence of blocks."""


@dataclass(frozen=True)
class Partition:
    front: nn.Sequential
    back: nn.Sequential
    m: int
    cut_after: str

    @property
    def full_enclave(self) -> bool:
        """FrontNet is the whole model: labels, logits and predictions stay inside the enclave."""
        return len(self.back) == 0


def _blocks(model: nn.Module) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise PartitionError(
            f"cannot partition {type(model).__name__}: only a sequence of named blocks (a model built from a spec) "
            "can be cut"
        )
    return model


def candidate_cuts(model: nn.Module) -> list[str]:
    """Names of the blocks after which the model can be cut (cut m = after the m-th name)."""
    return [name for name, _ in _blocks(model).named_children()]


def partition(model: nn.Module, m: int | str) -> Partition:
    """FrontNet = the first `m` blocks (1 ≤ m ≤ number of blocks; m = all is full-enclave mode), or the blocks up
    to and including the one named `m`."""
    blocks = _blocks(model)
    cuts = candidate_cuts(blocks)
    if isinstance(m, str):
        if m not in cuts:
            raise PartitionError(f"no block named {m!r}; the model can be cut after {cuts}")
        k = cuts.index(m) + 1
    elif not 1 <= m <= len(cuts):
        raise PartitionError(f"cut m={m} out of range: this model has {len(cuts)} blocks {cuts} (m ≥ 1)")
    else:
        k = m
    front, back = blocks[:k], blocks[k:]
    assert isinstance(front, nn.Sequential) and isinstance(back, nn.Sequential)
    return Partition(front=front, back=back, m=k, cut_after=cuts[k - 1])
