"""The attack harness poisons exactly the asked share, only at malicious participants, as each attack defines."""

from __future__ import annotations

import numpy as np
import pytest

from caltrain.accountability.attacks import ATTACKS, FLIP_PAIRS, make_scenario
from caltrain.accountability.errors import ScenarioError
from caltrain.data.datasets import load_dataset


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("rate", [0.005, 0.01, 0.05, 0.1])
def test_rates_exact_and_only_malicious(digits, attack: str, rate: float) -> None:  # type: ignore[no-untyped-def]
    train, test = digits
    if attack == "label-flip" and rate > 0.05:
        pytest.skip("digits has too few 8s to flip 10% of the data")
    s = make_scenario(attack, train, rate=rate, seed=3)
    merged = s.merged()
    assert len(merged) == len(train)
    assert s.poison_mask.sum() == round(rate * len(train))
    assert set(np.flatnonzero([m.any() for m in s.poison])) == set(s.malicious)
    assert len(s.malicious) == (3 if attack == "split-colluders" else 1)
    assert (merged.y[s.poison_mask] == s.target).all()
    for p in s.malicious:
        assert (~s.poison[p]).sum() > 0  # clean camouflage beside the poison
    if attack == "label-flip":
        assert (s.source, s.target) == FLIP_PAIRS["digits"]
        assert s.trigger is None
    else:
        assert s.trigger is not None
        triggered = s.attack_inputs(test)
        assert (triggered.y != s.target).all() and not np.allclose(triggered.x, test.x[test.y != s.target])


def test_rate_out_of_range_refused(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScenarioError):
        make_scenario("badnets", digits[0], rate=0.2)
