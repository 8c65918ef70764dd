"""The modules a spec builds beyond torch.nn's own: residual and concatenation blocks, and dropout that draws
from a generator its trainer gives it (torch's dropout draws from the process-wide generator, which two halves
of a model in two processes cannot share)."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """after(body(x) + shortcut(x)); an empty shortcut is the identity. One top-level block: never cut inside."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, after: nn.Sequential) -> None:
        super().__init__()
        self.body, self.shortcut, self.after = body, shortcut, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.body(x) + self.shortcut(x))


class Concat(nn.Module):
    """after(cat([branch(x) for each branch], dim=1)): channels (or features) side by side; an empty branch is x."""

    def __init__(self, branches: list[nn.Sequential], after: nn.Sequential) -> None:
        super().__init__()
        self.branches, self.after = nn.ModuleList(branches), after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(torch.cat([branch(x) for branch in self.branches], dim=1))


class _Streamed:
    """Dropout whose mask comes from `generator` when one is attached (`attach_generator`), else from torch's
    global generator like torch's own dropout. Masks are the same Bernoulli(1 − p) draws scaled by 1/(1 − p)."""

    p: float
    training: bool
    generator: torch.Generator | None = None

    def _mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor | None:
        """The streamed result, or None to fall back to torch's dropout (no generator, eval mode, p = 0)."""
        if self.generator is None or not self.training or self.p == 0:
            return None
        keep = torch.empty(self._mask_shape(x), dtype=x.dtype, device=x.device)
        keep.bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep.div_(1.0 - self.p)


class Dropout(_Streamed, nn.Dropout):
    """torch.nn.Dropout with its own generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._dropout(x)
        return super().forward(x) if out is None else out


class Dropout2d(_Streamed, nn.Dropout2d):
    """torch.nn.Dropout2d (whole channels) with its own generator."""

    def _mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (*x.shape[:2], *(1,) * (x.dim() - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._dropout(x)
        return super().forward(x) if out is None else out


def attach_generator(module: nn.Module, generator: torch.Generator | None) -> None:
    """Make every dropout layer in `module` draw from `generator` (None: torch's global one)."""
    for layer in module.modules():
        if isinstance(layer, _Streamed):
            layer.generator = generator
