"""Intermediate representations (IRs) at every candidate cut, and what putting a cut there costs the enclave."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from caltrain.errors import ExposureError
from caltrain.models import candidate_cuts, partition


@contextmanager
def _taps(model: nn.Module, cuts: list[str], out: dict[str, list[torch.Tensor]]) -> Iterator[None]:
    """Forward hooks appending each named module's output to `out`."""
    modules = dict(model.named_modules())
    handles = [modules[cut].register_forward_hook(lambda _m, _i, o, c=cut: out[c].append(o.detach())) for cut in cuts]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_irs(model: nn.Module, cuts: list[str], x: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """The IR the host would see at each cut (a block name), for every input in `x`, from forward hooks."""
    model.eval()
    unknown = sorted(set(cuts) - set(candidate_cuts(model)))
    if unknown:
        raise ExposureError(f"cuts {unknown} are not blocks of the model")
    out: dict[str, list[torch.Tensor]] = {c: [] for c in cuts}
    with _taps(model, cuts, out):
        for chunk in torch.split(x, batch):
            model(chunk)
    return {c: torch.cat(v) for c, v in out.items()}


def assessable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Candidate cuts worth attacking: all but full-enclave, skipping parameter-free blocks that keep the
    size of the previous IR (a flatten): their IR is a function of the previous one, so never more exposing."""
    cuts = candidate_cuts(model)[:-1]
    if not cuts:
        raise ExposureError("the model has a single block: the only cut is full-enclave, nothing to assess")
    sizes = {c: ir[0].numel() for c, ir in collect_irs(model, cuts, torch.zeros(1, *input_shape)).items()}
    modules = dict(model.named_children())
    kept: list[str] = []
    for cut in cuts:
        param_free = not any(True for _ in modules[cut].parameters())
        if kept and param_free and sizes[cut] == sizes[kept[-1]]:
            continue
        kept.append(cut)
    return kept


@dataclass(frozen=True)
class EnclaveCost:
    """Resources the FrontNet needs inside the enclave for one input."""

    frontnet_params: int
    activation_bytes: int  # sum of all leaf-module outputs for one input (float32)
    flops: int  # 2 × multiply-accumulates of convolutions and linear layers
    latency_ms: float  # median FrontNet forward time for one input on this machine


@torch.no_grad()
def enclave_cost(model: nn.Module, cut: str, input_shape: tuple[int, ...], runs: int) -> EnclaveCost:
    front = partition(model, cut).front.eval()
    x = torch.rand(1, *input_shape)
    acts: list[int] = []
    flops: list[int] = []

    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        acts.append(output.numel() * output.element_size())
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            flops.append(2 * output.numel() * per_out)
        elif isinstance(module, nn.Linear):
            flops.append(2 * output.numel() * module.in_features)

    leaves = [m for m in front.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    front(x)
    for h in handles:
        h.remove()
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        front(x)
        times.append((time.perf_counter() - start) * 1e3)
    return EnclaveCost(
        frontnet_params=sum(p.numel() for p in front.parameters()),
        activation_bytes=sum(acts),
        flops=sum(flops),
        latency_ms=float(np.median(times)),
    )
