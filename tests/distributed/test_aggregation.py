"""The arithmetic under scale-out: fixed-point sums are exact and independent of how the micro-batches are split;
masked contributions cancel to the true sum only inside; what the hosts carry decodes to noise; a sum altered in
any way, or replayed from another step, is refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.training.aggregation import (
    FRAC_BITS,
    MICRO_BITS,
    MODULUS,
    TAG_PRIMES,
    SecureSum,
    dequantize,
    quantize,
)
from caltrain.training.config import TrainConfig
from caltrain.training.core import build_split, loss_fn, training_batch
from caltrain.training.distributed import train_reference
from caltrain.training.errors import AggregateTampered, FixedPointRange
from tests.distributed.conftest import assert_uncorrelated


def contributions(key: bytes, parts: list[torch.Tensor], step: int) -> tuple[list[SecureSum], list[torch.Tensor]]:
    sums = [SecureSum(key, rank=r, world=len(parts), size=len(parts[0])) for r in range(len(parts))]
    return sums, [s.mask(step, x) for s, x in zip(sums, parts, strict=True)]


@settings(max_examples=40)
@given(world=st.integers(1, 6), size=st.integers(1, 300), step=st.integers(0, 2**40), seed=st.integers(0, 2**32 - 1))
def test_masks_cancel_to_the_exact_sum_for_every_worker(world: int, size: int, step: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [torch.from_numpy(rng.integers(-(2**35), 2**35, size)) for _ in range(world)]
    sums, masked = contributions(os.urandom(32), parts, step)
    total = torch.stack(masked).sum(0)  # what the hosts' int64 all-reduce returns
    assert bool((total >= 0).all()) and bool((total < world * MODULUS).all()), "the hosts' sum overflowed int64"
    for s in sums:
        assert torch.equal(s.unmask(step, total, micros=world), torch.stack(parts).sum(0))


def test_fixed_point_sums_do_not_depend_on_the_split() -> None:
    """Any grouping of micro-batches over workers gives the same integers, hence the same float gradient."""
    grads = [torch.randn(1000) * 10.0 ** float(e) for e in range(-6, 1)]
    quantized = [quantize(g) for g in grads]
    one = torch.stack(quantized).sum(0)
    for world in (2, 3, 7):
        per_worker = [torch.stack(quantized[r::world]).sum(0) for r in range(world)]
        assert torch.equal(torch.stack(per_worker[::-1]).sum(0), one)
    bound = len(grads) * 2.0 ** -(FRAC_BITS + 1)  # rounding each micro-batch to nearest
    assert float((dequantize(one).double() - torch.stack(grads).double().sum(0)).abs().max()) <= bound + 1e-6


def test_quantize_refuses_what_fixed_point_cannot_hold() -> None:
    limit = 2.0 ** (MICRO_BITS - FRAC_BITS)
    quantize(torch.tensor([limit * 0.99, -limit * 0.99]))
    for bad in (limit, -limit, float("nan"), float("inf")):
        with pytest.raises(FixedPointRange):
            quantize(torch.tensor([0.0, bad]))


def test_what_the_hosts_carry_decodes_to_noise() -> None:
    """Decoded as fixed point without the job key, neither a contribution nor the all-reduced sum correlates with
    the true gradient; the same decoding of the true values does (the check would see a leak)."""
    size, world = 20_000, 3
    truth = [quantize(torch.randn(size) * 0.01) for _ in range(world)]
    sums, masked = contributions(os.urandom(32), truth, step=3)
    total = torch.stack(masked).sum(0)

    true_sum = torch.stack(truth).sum(0)
    assert_uncorrelated([*masked, total], [*truth, true_sum])
    assert torch.equal(sums[0].unmask(3, total, micros=world), true_sum)


@pytest.mark.parametrize("attack", ["flip", "add-prime", "shift-high", "other-step", "one-rank-short", "negative"])
def test_an_altered_or_replayed_sum_is_refused(attack: str) -> None:
    size, world, step = 500, 2, 7
    key = os.urandom(32)
    parts = [quantize(torch.randn(size) * 0.1) for _ in range(world)]
    sums, masked = contributions(key, parts, step)
    total = torch.stack(masked).sum(0)
    bad = total.clone()
    if attack == "flip":
        bad[11] += 1
    elif attack == "add-prime":  # invisible modulo one tag prime: the others still catch it
        bad[11] += TAG_PRIMES[0]
    elif attack == "shift-high":  # a change of high 2-adic valuation: the range check catches it
        bad[11] = (bad[11] + MODULUS // 2) % (world * MODULUS)
    elif attack == "other-step":
        _, masked_next = contributions(key, parts, step + 1)
        bad = torch.stack(masked_next).sum(0)
    elif attack == "one-rank-short":
        bad = masked[0].clone()
    else:
        bad[0] = -1
    with pytest.raises(AggregateTampered):
        sums[0].unmask(step, bad, micros=world)


def test_the_reference_equals_float_training_within_the_stated_bound() -> None:
    """One step of fixed-point training against float training of the same batch: every gradient element differs
    by at most (micro-batches) * 2^-(FRAC_BITS+1) plus float rounding, so the first update does by lr times that."""
    config = TrainConfig(epochs=1, batch_size=64, seed=5, augment=False, momentum=0.0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    fixed = train_reference(config, x, y, micro_batch=8)
    model, _ = build_split(config)
    xb, yb = training_batch(x, y, config, 0)
    loss_fn(model(xb), yb).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= config.lr * p.grad
    bound = config.lr * (8 * 2.0 ** -(FRAC_BITS + 1) + 1e-6)
    for a, b in zip(fixed.parameters(), model.parameters(), strict=True):
        assert float((a - b).detach().abs().max()) <= bound
