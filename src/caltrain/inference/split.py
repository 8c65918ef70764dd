"""Which blocks of a model (a zoo name or a spec) run where when serving: the enclave's FrontNet (first m
blocks), the host's part, and in ternary mode the last block (the classifier) back in the enclave."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from caltrain.errors import InferenceError
from caltrain.models import ModelSpec, partition, resolve_model

ModelRef = str | dict[str, Any]


@dataclass(frozen=True)
class InferenceSplit:
    spec: ModelSpec
    m: int
    ternary: bool
    front: nn.Module
    host: nn.Module
    tail: nn.Module  # empty (identity) unless ternary

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.input_shape)

    @property
    def enclave_parts(self) -> list[nn.Module]:
        """What the enclave holds; `host` is the rest."""
        return [self.front, self.tail]

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-sample shapes of the IR (enclave → host) and of the host's output (host → enclave)."""
        with torch.inference_mode():
            ir = self.front(torch.zeros(1, *self.input_shape))
            out = self.host(ir)
        return tuple(ir.shape[1:]), tuple(out.shape[1:])


def split_model(architecture: ModelRef, m: int, ternary: bool, *, seed: int | None = None) -> InferenceSplit:
    """Build `architecture` and split it; the host must run at least one block unless ternary leaves it none."""
    spec = resolve_model(architecture)
    model = spec.build(seed).eval()
    blocks = len(spec.blocks)
    if not 1 <= m < blocks:
        raise InferenceError(f"cut m={m}: serving needs 1 ≤ m < {blocks} (the host runs blocks m+1..{blocks})")
    part = partition(model, m)
    assert isinstance(part.back, nn.Sequential)
    if ternary:
        return InferenceSplit(spec, m, True, part.front, part.back[:-1], part.back[-1:])
    return InferenceSplit(spec, m, False, part.front, part.back, nn.Sequential())


def load_exact(parts: list[nn.Module], state: object, what: str) -> None:
    """Load weights named exactly as `parts` (whole-model names): a missing or extra tensor is refused."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InferenceError(f"{what}: expected a state_dict of tensors")
    expected = {k for p in parts for k in p.state_dict()}
    if set(state) != expected:
        raise InferenceError(f"{what}: weights {sorted(set(state) ^ expected)} are missing or belong elsewhere")
    try:
        for p in parts:
            p.load_state_dict({k: state[k] for k in p.state_dict()})
    except RuntimeError as exc:
        raise InferenceError(f"{what}: {str(exc).splitlines()[0]}") from None
