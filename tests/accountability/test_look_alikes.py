"""What a record looks like, for the set-aside test's label surprise: its nearest records in input space supplied
by *other* parties, so that records sharing one transformation (a poisoner's warp) cannot vouch for each other's
label, whether one identity supplied them or many that act as one party."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.accountability.attribution import (
    acting_parties,
    label_surprise,
    leave_one_out_neighbours,
    other_party_neighbours,
)


def _brute_force(points: np.ndarray, contributors: np.ndarray, k: int) -> np.ndarray:
    dist = ((points[:, None] - points[None]) ** 2).sum(-1)
    dist[contributors[:, None] == contributors[None]] = np.inf
    dist = np.concatenate([dist, np.full((len(points), k), np.inf)], axis=1)  # room for k when there are fewer
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(dist, order, axis=1)), order, -1)


@given(n=st.integers(2, 60), parties=st.integers(1, 5), k=st.integers(1, 6), overfetch=st.integers(1, 4),
       clustered=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_matches_a_brute_force_search_among_other_contributors(
    n: int, parties: int, k: int, overfetch: int, clustered: bool, seed: int
) -> None:
    """Exact, whether the leave-one-out list holds k others (the fast path) or not (one party's records are each
    other's nearest, so its rows are searched again among the rest); -1 where fewer than k others exist."""
    rng = np.random.default_rng(seed)
    contributors = rng.integers(0, parties, n)
    points = rng.standard_normal((n, 3)).astype(np.float32)
    if clustered:  # party 0's records one tight clump, far from the rest
        points[contributors == 0] = 50.0 + 0.01 * rng.standard_normal(((contributors == 0).sum(), 3))
    nearest = leave_one_out_neighbours(points, min(overfetch * k, n - 1))
    got = other_party_neighbours(points, contributors, nearest, k)
    want = _brute_force(points, contributors, k)
    assert got.shape == (n, k)
    assert not np.any((got >= 0) & (contributors[np.maximum(got, 0)] == contributors[:, None]))
    found = got >= 0
    np.testing.assert_array_equal(found, want >= 0)
    # ties aside, the same distances
    d = lambda rows: np.where(rows >= 0, ((points[:, None] - points[np.maximum(rows, 0)]) ** 2).sum(-1), 0.0)  # noqa: E731
    np.testing.assert_allclose(d(got), d(want), rtol=1e-4, atol=1e-4)


def test_records_sharing_one_transformation_cannot_vouch_for_their_label() -> None:
    """An attacker's records of class 1 moved by one common transformation (its trigger) and labelled 0 are each other's
    nearest records: among any party's look-alikes they look like class 0 and cost nothing; among other parties'
    they look like class 1, and are the most surprising records of the set."""
    rng = np.random.default_rng(0)
    honest = np.concatenate([rng.normal(0.0, 1.0, (300, 8)), rng.normal(3.0, 1.0, (300, 8))])
    poison = rng.normal(3.0, 0.3, (40, 8)) + np.r_[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5]  # one clump, class 1's
    points = np.concatenate([honest, poison]).astype(np.float32)
    labels = np.r_[np.zeros(300), np.ones(300), np.zeros(40)].astype(np.int64)
    contributors = np.r_[rng.integers(0, 3, 600), np.full(40, 3)]
    probs = np.where(np.eye(2)[labels] > 0, 0.95, 0.05)  # a model that gives each record its label
    nearest = leave_one_out_neighbours(points, 40)
    anyone = label_surprise(nearest[:, :10], labels, probs)
    others = label_surprise(other_party_neighbours(points, contributors, nearest, 10), labels, probs)
    is_poison = contributors == 3
    assert np.median(anyone[is_poison]) < np.quantile(anyone[~is_poison], 0.9)
    assert np.min(others[is_poison]) > np.quantile(others[~is_poison], 0.9)


def _classes(rng: np.random.Generator, n: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, n)
    return (rng.standard_normal((n, 6)) + 4.0 * np.eye(classes, 6)[labels]).astype(np.float32), labels


@given(parties=st.integers(2, 12), skew=st.sampled_from([None, 0.3, 0.1]), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_honest_contributors_act_alone_whatever_their_label_skew(parties: int, skew: float | None, seed: int) -> None:
    """Records dealt at random (evenly, or per class by Dirichlet shares, as label-skewed participants hold them)
    look like each other only as often as their class shares say: nobody is joined to anybody."""
    rng = np.random.default_rng(seed)
    points, labels = _classes(rng, 1500)
    if skew is None:
        contributors = rng.integers(0, parties, len(labels))
    else:
        shares = rng.dirichlet(np.full(parties, skew), size=4)
        contributors = np.array([rng.choice(parties, p=shares[c]) for c in labels])
    found = acting_parties(labels, contributors, leave_one_out_neighbours(points, 40))
    for who in np.unique(contributors):
        assert len(np.unique(found[contributors == who])) == 1
        assert set(contributors[found == found[contributors == who][0]]) == {who}


def test_identities_sharing_one_transformation_act_as_one_party() -> None:
    """Ten attacker identities whose records all carry one transformation are one party; an honest contributor
    behind another device (its own transformation, no partner) and the other honest ones act alone."""
    rng = np.random.default_rng(1)
    points, labels = _classes(rng, 3000)
    contributors = rng.integers(0, 8, len(labels))
    attacker = rng.choice(len(labels), 300, replace=False)
    contributors[attacker] = 8 + np.arange(300) % 10
    points[attacker] += 3.0 * np.eye(6)[5]
    points[contributors == 0] -= 3.0 * np.eye(6)[4]  # the honest participant behind another device
    found = acting_parties(labels, contributors, leave_one_out_neighbours(points, 40))
    assert len(np.unique(found[attacker])) == 1
    assert len(np.unique(found)) == 9
    assert not np.isin(found[contributors < 8], found[attacker]).any()
