"""Poisoning attacks by participants, for evaluation and the demo.

A scenario deals a clean training set among honest and malicious participants and lets the malicious ones poison
an exact number of their records (`round(rate × total)`), keeping the rest of their share clean as camouflage.
It returns the per-participant datasets, the ground-truth poison mask per participant, the malicious ids, and
the trigger so that triggered test inputs can be made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from caltrain.accountability.errors import ScenarioError
from caltrain.data.datasets import ArrayDataset

Trigger = Callable[[np.ndarray], np.ndarray]
ATTACKS = ("badnets", "blended", "sig", "label-flip", "split-colluders")
# Label-flip pairs that are natural confusions: the hard case, where most such mispredictions are not caused by flips.
FLIP_PAIRS = {"fashion-mnist": (2, 4), "digits": (8, 1)}  # pullover→coat; 8→1


def badnets_trigger(x: np.ndarray) -> np.ndarray:
    """A white square in the bottom-right corner (3×3 on 28×28, 2×2 on 8×8), one pixel from the edge."""
    out = x.copy()
    size = max(2, round(x.shape[-1] * 3 / 28))
    out[..., -size - 1 : -1, -size - 1 : -1] = 1.0
    return out


def blended_trigger(shape: tuple[int, ...], *, alpha: float = 0.2, seed: int = 1234) -> Trigger:
    """Alpha-blend a fixed uniform random pattern over the whole image (Chen et al. 2017)."""
    pattern = np.random.default_rng(seed).random(shape, dtype=np.float32)

    def apply(x: np.ndarray) -> np.ndarray:
        return ((1 - alpha) * x + alpha * pattern).astype(np.float32)

    return apply


def sig_trigger(*, delta: float = 0.12, frequency: float = 6.0) -> Trigger:
    """Add a horizontal sinusoid (Barni et al. 2019, SIG) and clip to [0, 1]."""

    def apply(x: np.ndarray) -> np.ndarray:
        width = x.shape[-1]
        wave = delta * np.sin(2 * np.pi * np.arange(width) * frequency / width).astype(np.float32)
        return np.clip(x + wave, 0.0, 1.0).astype(np.float32)

    return apply


@dataclass
class Scenario:
    """Poisoned per-participant datasets and the ground truth to score attribution against."""

    name: str
    participants: list[ArrayDataset]
    poison: list[np.ndarray]  # per participant, bool mask over its records
    malicious: tuple[int, ...]
    target: int
    source: int | None  # the only class that is poisoned / should be mispredicted (None: every class but target)
    trigger: Trigger | None  # None for label flips: the mispredictions need no trigger
    rate: float
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def poison_mask(self) -> np.ndarray:
        """Ground truth over the concatenation of participants' datasets, in participant order."""
        return np.concatenate(self.poison)

    @property
    def contributors(self) -> np.ndarray:
        return np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(self.participants)])

    def merged(self) -> ArrayDataset:
        first = self.participants[0]
        x = np.concatenate([p.x for p in self.participants])
        y = np.concatenate([p.y for p in self.participants])
        return ArrayDataset(x, y, f"{first.name.rsplit('-', 1)[0]}-{self.name}", first.num_classes)

    def attack_inputs(self, test: ArrayDataset) -> ArrayDataset:
        """Test inputs the attack wants mispredicted as `target`: triggered non-target images, or the flip source."""
        keep = test.y == self.source if self.source is not None else test.y != self.target
        chosen = test.subset(np.flatnonzero(keep), f"{test.name}-attack")
        if self.trigger is None:
            return chosen
        return ArrayDataset(self.trigger(chosen.x), chosen.y, chosen.name, chosen.num_classes)


def make_scenario(
    attack: str,
    train: ArrayDataset,
    *,
    rate: float = 0.01,
    honest: int = 10,
    colluders: int = 3,
    target: int = 0,
    seed: int = 0,
) -> Scenario:
    """Deal `train` among `honest` + malicious participants and poison exactly `round(rate × len(train))` records."""
    if attack not in ATTACKS:
        raise ScenarioError(f"unknown attack {attack!r}; choose from {ATTACKS}")
    if not 0 < rate <= 0.1:
        raise ScenarioError(f"poison rate must lie in (0, 0.1], got {rate}")
    rng = np.random.default_rng(seed)
    n_poison = round(rate * len(train))
    base = train.name.split("-test")[0]
    source: int | None = None
    trigger: Trigger | None
    if attack == "label-flip":
        source, target = FLIP_PAIRS.get(base, (1, 7))
        pool = np.flatnonzero(train.y == source)
        trigger = None
    elif attack == "sig":
        pool = np.flatnonzero(train.y == target)  # clean label: poison images already carry the target label
        trigger = sig_trigger()
    else:
        pool = np.flatnonzero(train.y != target)
        trigger = blended_trigger(train.sample_shape) if attack == "blended" else badnets_trigger
    if n_poison < 1 or n_poison > len(pool):
        raise ScenarioError(f"{attack}: {n_poison} poison records asked, {len(pool)} eligible")
    chosen = rng.choice(pool, n_poison, replace=False)
    x, y = train.x.copy(), train.y.copy()
    if trigger is not None:
        x[chosen] = trigger(x[chosen])
    y[chosen] = target
    is_poison = np.zeros(len(train), dtype=bool)
    is_poison[chosen] = True

    n_bad = colluders if attack == "split-colluders" else 1
    rest = rng.permutation(np.flatnonzero(~is_poison))
    shares = np.array_split(rest, honest + n_bad)
    poison_shares = np.array_split(rng.permutation(chosen), n_bad)
    malicious = tuple(range(honest, honest + n_bad))
    poisoned = ArrayDataset(x, y, train.name, train.num_classes)
    participants, masks = [], []
    for i, share in enumerate(shares):
        idx = np.sort(np.concatenate([share, poison_shares[i - honest]]) if i in malicious else share)
        participants.append(poisoned.subset(idx, f"{base}-p{i}"))
        masks.append(is_poison[idx])
    return Scenario(attack, participants, masks, malicious, target, source, trigger, n_poison / len(train))
