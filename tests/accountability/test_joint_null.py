"""The per-query decision's calibration: the tests' pooled evidence is answered at its nominal rate for inputs drawn
like the null, whatever the tests' correlation and ties, where the plain smallest p-value would answer far more."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.accountability.attribution import JointNull, harmonic_mean_p


def _draw(rng: np.random.Generator, n: int, tests: int, correlation: float, tied: float) -> np.ndarray:
    """`tests` statistics per input, pairwise correlated, a `tied` share of each stuck at one value (a test with
    nothing to say, as a transplant below its floor is)."""
    shared = rng.standard_normal((n, 1))
    x = np.sqrt(correlation) * shared + np.sqrt(1 - correlation) * rng.standard_normal((n, tests))
    return np.where(rng.random((n, tests)) < tied, -np.inf, x)


@given(tests=st.integers(1, 4), correlation=st.floats(0.0, 0.95), tied=st.floats(0.0, 0.6),
       alpha=st.sampled_from([0.01, 0.05]), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_exchangeable_inputs_are_answered_at_the_nominal_rate(
    tests: int, correlation: float, tied: float, alpha: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    null = JointNull.of(_draw(rng, 2000, tests, correlation, tied))
    queries = _draw(rng, 4000, tests, correlation, tied)
    answered = np.mean([null.p_values(row)[0] < alpha for row in queries])
    # sampling error of 4,000 queries and of a 2,000-input null's quantile
    assert answered <= alpha + 4 * np.sqrt(alpha / 2000) + 3 * np.sqrt(alpha / 4000)


def test_plain_smallest_p_value_would_not_be_calibrated() -> None:
    """What the joint null corrects: with four independent tests, "the smallest p-value below alpha" answers about
    four times alpha; the joint p-value keeps alpha, and each test's own p-value is reported as it is."""
    rng = np.random.default_rng(1)
    null = JointNull.of(_draw(rng, 4000, 4, 0.0, 0.0))
    results = [null.p_values(row) for row in _draw(rng, 8000, 4, 0.0, 0.0)]
    joint = np.mean([p < 0.01 for p, _ in results])
    smallest = np.mean([min(each) < 0.01 for _, each in results])
    assert joint == pytest.approx(0.01, abs=0.005)
    assert smallest > 0.03


def test_an_input_beyond_every_null_input_gets_the_smallest_p_value() -> None:
    rng = np.random.default_rng(2)
    null = JointNull.of(_draw(rng, 999, 3, 0.5, 0.2))
    p, each = null.p_values(np.array([-np.inf, -np.inf, 1e9]))
    assert each[:2] == [1.0, 1.0] and each[2] == pytest.approx(1 / 1000)
    evidence = harmonic_mean_p(np.array(each))
    assert p <= 0.01 and p == pytest.approx((1 + np.searchsorted(null.evidence, evidence, side="right")) / 1000)


def test_two_moderate_p_values_outweigh_one_a_little_smaller() -> None:
    """The harmonic mean pools the tests' evidence: two tests at p = 0.005 are stronger evidence than one at 0.004
    with the others silent (the smallest p-value alone would rank them the other way round)."""
    rng = np.random.default_rng(3)
    null = JointNull.of(_draw(rng, 999, 3, 0.0, 0.0))
    two, each_two = null.p_values(np.array([null.columns[-4, 0], null.columns[-4, 1], -np.inf]))
    one, each_one = null.p_values(np.array([null.columns[-3, 0], -np.inf, -np.inf]))
    assert min(each_one) < min(each_two)
    assert two < one
