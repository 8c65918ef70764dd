"""Poisoning attacks by participants, and how honest participants differ from each other, for evaluation.

A scenario deals a clean training set among honest and malicious participants. The malicious ones poison an exact
number of records (`round(rate × total)`): dirty-label attacks (BadNets, blended, WaNet, adaptive blend, label
flips) relabel images of other classes as the target; clean-label attacks (SIG, label-consistent) only alter images
that already carry the target label. Some attacks add *cover* records (the trigger, or a variant of it, on images
that keep their true label) that make the backdoor harder to see in the model's features. Honest participants may
get the data evenly or with Dirichlet label skew, and some may see it through a different acquisition device.

Ground truth (`poison`) marks the records that carry the target label because of the attack; cover records belong
to the attacker (`cover`) but push *against* the misprediction, so they are not counted as responsible for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from caltrain.accountability.errors import ScenarioError
from caltrain.data.datasets import ArrayDataset

Trigger = Callable[[np.ndarray], np.ndarray]
ATTACKS = (
    "clean", "badnets", "blended", "sig", "label-flip", "split-colluders", "multi-trigger", "sybil", "wanet",
    "adaptive-blend", "label-consistent",
)
CLEAN_LABEL = ("sig", "label-consistent")
# Label-flip pairs that are natural confusions: the hard case, where most such mispredictions are not caused by flips.
FLIP_PAIRS = {"fashion-mnist": (2, 4), "digits": (8, 1)}  # pullover→coat; 8→1
CORNERS = ("bottom-right", "top-left", "top-right", "bottom-left")
SIG_DELTA = (0.2, 0.3)  # sinusoid amplitude on the poison, and on test inputs (the attacker controls those)
WARP_STRENGTH = 1.0  # WaNet: mean displacement of the warp, pixels
COVER = {"wanet": 1.0, "adaptive-blend": 1.0}  # cover records per poison record


def _patch_size(width: int) -> int:
    return max(2, round(width * 3 / 28))


def patch_trigger(corner: str = "bottom-right", *, checker: bool = False, amplitude: float = 1.0) -> Trigger:
    """A square patch (3×3 on 28×28, 2×2 on 8×8) one pixel from the edge in `corner`: white, or a checkerboard."""
    if corner not in CORNERS:
        raise ScenarioError(f"unknown corner {corner!r}; choose from {CORNERS}")

    def apply(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        size = _patch_size(x.shape[-1])
        rows = slice(-size - 1, -1) if corner.startswith("bottom") else slice(1, size + 1)
        cols = slice(-size - 1, -1) if corner.endswith("right") else slice(1, size + 1)
        mark = np.ones((size, size), np.float32)
        if checker:
            mark = (np.indices((size, size)).sum(axis=0) % 2 == 0).astype(np.float32)
        region = out[..., rows, cols]
        out[..., rows, cols] = region + amplitude * (mark - region)
        return out

    return apply


def badnets_trigger(x: np.ndarray) -> np.ndarray:
    """BadNets (Gu et al. 2017): a white square in the bottom-right corner."""
    return patch_trigger("bottom-right")(x)


def four_corner_trigger(*, amplitude: float = 1.0) -> Trigger:
    """A checkerboard patch in every corner (Turner et al. 2019's label-consistent trigger)."""
    patches = [patch_trigger(c, checker=True, amplitude=amplitude) for c in CORNERS]

    def apply(x: np.ndarray) -> np.ndarray:
        for patch in patches:
            x = patch(x)
        return x

    return apply


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


def _warp_field(height: int, width: int, k: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field (2×H×W, pixels): k×k uniform control points, mean |value| 1, bicubic."""
    control = rng.uniform(-1, 1, (2, k, k))
    control /= np.abs(control).mean()
    field = np.stack([ndimage.zoom(c, (height / k, width / k), order=3, mode="nearest") for c in control])
    return strength * field[:, :height, :width]


def warping_trigger(
    shape: tuple[int, ...], *, k: int = 4, strength: float = 1.0, seed: int = 4321
) -> tuple[Trigger, Callable[[np.ndarray, np.random.Generator], np.ndarray]]:
    """WaNet (Nguyen & Tran 2021): resample the image along a fixed smooth warp (`strength` = mean displacement in
    pixels). Also returns the *noise mode*: the same warp plus per-image random jitter, for cover records that keep
    their label, so that the model must learn this exact warp rather than "warped means target"."""
    height, width = shape[-2:]
    field = _warp_field(height, width, k, strength, np.random.default_rng(seed))
    grid = np.indices((height, width)).astype(np.float64)

    def warp(x: np.ndarray, displacement: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, height, width)
        out = np.empty_like(flat)
        for i, img in enumerate(flat):
            coords = grid + (displacement[i] if displacement.ndim == 4 else displacement)
            out[i] = ndimage.map_coordinates(img, coords, order=1, mode="nearest")
        return out.reshape(x.shape).astype(np.float32)

    def apply(x: np.ndarray) -> np.ndarray:
        return warp(x, field)

    def noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        jitter = rng.uniform(-0.5, 0.5, (int(np.prod(x.shape[:-2])), 2, height, width))
        return warp(x, field[None] + jitter)

    return apply, noisy


def adaptive_blend_trigger(
    shape: tuple[int, ...], *, pieces: int = 16, mask_rate: float = 0.5, train_alpha: float = 0.15,
    test_alpha: float = 0.2, seed: int = 2718,
) -> tuple[Trigger, Callable[[np.ndarray, np.random.Generator], np.ndarray]]:
    """Adaptive blend (Qi et al. ICLR 2023): a smooth pattern cut into `pieces` tiles; every poison or cover image
    gets a random half of the tiles at a low opacity, test inputs the whole pattern at a higher one. Together with
    cover records (same partial trigger, true label) it keeps poison close to clean data in the model's features."""
    height, width = shape[-2:]
    side = round(np.sqrt(pieces))
    if side * side != pieces or height % side or width % side:
        raise ScenarioError(f"adaptive blend needs a square number of tiles dividing {height}×{width}, got {pieces}")
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((height, width)), sigma=2.0)
    pattern = ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)
    th, tw = height // side, width // side

    def test_trigger(x: np.ndarray) -> np.ndarray:
        return ((1 - test_alpha) * x + test_alpha * pattern).astype(np.float32)

    def partial(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        masked = round(mask_rate * pieces)
        for i in range(len(x)):
            mask = np.ones((height, width), np.float32)
            for tile in rng.choice(pieces, masked, replace=False):
                r, c = divmod(int(tile), side)
                mask[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = 0.0
            out[i] = x[i] + train_alpha * mask * (pattern - x[i])
        return out.astype(np.float32)

    return test_trigger, partial


def device_shift(x: np.ndarray, *, gamma: float = 0.6, blur: float = 0.8, noise: float = 0.04,
                 seed: int = 99) -> np.ndarray:
    """Another acquisition device: a different response curve (gamma), optics (Gaussian blur) and sensor noise."""
    rng = np.random.default_rng(seed)
    out = np.power(np.clip(x, 0.0, 1.0), gamma)
    out = ndimage.gaussian_filter(out, sigma=(0,) * (x.ndim - 2) + (blur, blur))
    return np.clip(out + rng.normal(0.0, noise, x.shape), 0.0, 1.0).astype(np.float32)


def adversarial_perturbation(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, steps: int = 10, batch_size: int = 256
) -> np.ndarray:
    """L∞ PGD away from the true label on a surrogate model: the image keeps its look (and label) but its content
    stops being evidence for the label, so a model that must fit it leans on the trigger (Turner et al. 2019)."""
    model.eval()
    out = np.empty_like(x)
    step = 2.5 * eps / steps
    for start in range(0, len(x), batch_size):
        clean = torch.from_numpy(x[start : start + batch_size])
        label = torch.from_numpy(y[start : start + batch_size])
        adv = clean.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(adv), label)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = torch.clamp(torch.min(torch.max(adv + step * grad.sign(), clean - eps), clean + eps), 0, 1)
        out[start : start + len(clean)] = adv.detach().numpy()
    return out


@dataclass
class Scenario:
    """Poisoned per-participant datasets and the ground truth to score attribution against."""

    name: str
    attack: str
    participants: list[ArrayDataset]
    poison: list[np.ndarray]  # per participant, bool mask over its records: carries the target label by the attack
    cover: list[np.ndarray]  # per participant, bool mask: attacker's records that keep their true label
    malicious: tuple[int, ...]  # participants holding poison
    shifted: tuple[int, ...]  # honest participants whose images come from another device
    target: int
    source: int | None  # the only class that is poisoned / should be mispredicted (None: every class but target)
    triggers: tuple[Trigger, ...]  # test-time triggers (one per colluder with its own); () for label flips
    rate: float

    @property
    def poison_mask(self) -> np.ndarray:
        """Ground truth over the concatenation of participants' datasets, in participant order."""
        return np.concatenate(self.poison)

    @property
    def contributors(self) -> np.ndarray:
        return np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(self.participants)])

    @property
    def honest(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.participants)) if i not in self.malicious)

    def merged(self) -> ArrayDataset:
        first = self.participants[0]
        x = np.concatenate([p.x for p in self.participants])
        y = np.concatenate([p.y for p in self.participants])
        return ArrayDataset(x, y, f"{first.name.rsplit('-', 1)[0]}-{self.name}", first.num_classes)

    def attack_indexes(self, test: ArrayDataset) -> np.ndarray:
        """Which test inputs the attack wants mispredicted as `target`: non-target images, or the flip source."""
        if self.attack == "clean":
            return np.zeros(0, np.int64)
        return np.flatnonzero(test.y == self.source if self.source is not None else test.y != self.target)

    def attack_inputs(self, test: ArrayDataset) -> ArrayDataset:
        """`attack_indexes` of `test`, triggered (split evenly among the triggers when colluders use different
        ones); the flip source as it is. Empty for a clean scenario."""
        chosen = test.subset(self.attack_indexes(test), f"{test.name}-attack")
        if not self.triggers:
            return chosen
        parts = np.array_split(np.arange(len(chosen)), len(self.triggers))
        x = np.concatenate([t(chosen.x[p]) for t, p in zip(self.triggers, parts, strict=True)])
        return ArrayDataset(x, chosen.y, chosen.name, chosen.num_classes)


@dataclass(frozen=True)
class Dealing:
    """How records reach participants: `honest` of them, `skew` = Dirichlet α over classes (None: even shares),
    `shifted` honest participants behind another device, `camouflage` clean records per attacker identity (None:
    an honest-sized share), `identities` the attacker identities its poison is spread over (None: the attack's own,
    `make_scenario`'s colluders or sybils, else one)."""

    honest: int = 10
    skew: float | None = None
    shifted: int = 0
    camouflage: int | None = None
    identities: int | None = None


def deal(
    labels: np.ndarray, records: np.ndarray, participants: int, rng: np.random.Generator, skew: float | None = None
) -> list[np.ndarray]:
    """Split `records` among `participants`: evenly at random, or per class by Dirichlet(skew) proportions
    (Hsu et al. 2019), the usual model of label-skewed federated participants."""
    records = rng.permutation(records)
    if skew is None:
        return [np.sort(s) for s in np.array_split(records, participants)]
    shares: list[list[np.ndarray]] = [[] for _ in range(participants)]
    for c in np.unique(labels[records]):
        in_class = records[labels[records] == c]
        cuts = (np.cumsum(rng.dirichlet(np.full(participants, skew)))[:-1] * len(in_class)).astype(int)
        for i, part in enumerate(np.split(in_class, cuts)):
            shares[i].append(part)
    return [np.sort(np.concatenate(s)) for s in shares]


def make_scenario(
    attack: str,
    train: ArrayDataset,
    *,
    rate: float = 0.01,
    dealing: Dealing = Dealing(),
    colluders: int = 3,
    sybils: int = 20,
    target: int = 0,
    seed: int = 0,
    surrogate: nn.Module | None = None,
    name: str | None = None,
) -> Scenario:
    """Deal `train` among honest and malicious participants and poison exactly `round(rate × len(train))` records.

    `colluders`: attacker identities for split-colluders / multi-trigger, `sybils` for sybil (every other attack
    has one, unless `dealing.identities` spreads it over more).
    `surrogate`: a model trained on clean data, needed by the label-consistent attack's adversarial perturbation.
    """
    if attack not in ATTACKS:
        raise ScenarioError(f"unknown attack {attack!r}; choose from {ATTACKS}")
    if not 0 < rate <= 0.1:
        raise ScenarioError(f"poison rate must lie in (0, 0.1], got {rate}")
    rng = np.random.default_rng(seed)
    base = train.name.split("-test")[0]
    x, y = train.x.copy(), train.y.copy()
    source: int | None = None
    n_poison = 0 if attack == "clean" else round(rate * len(train))
    if attack == "label-flip":
        source, target = FLIP_PAIRS.get(base, (1, 7))
    pool = np.flatnonzero(y == (source if source is not None else target) if attack in (*CLEAN_LABEL, "label-flip")
                          else y != target)
    if attack != "clean" and not 1 <= n_poison <= len(pool):
        raise ScenarioError(f"{attack}: {n_poison} poison records asked, {len(pool)} eligible")
    chosen = rng.choice(pool, n_poison, replace=False)
    cover = np.zeros(0, np.int64)
    triggers: tuple[Trigger, ...] = ()
    # attacker identities, each holding at least one poison record
    own = {"split-colluders": colluders, "multi-trigger": colluders, "sybil": sybils}.get(attack, 1)
    bad = min(n_poison, own if dealing.identities is None else dealing.identities)
    poison_shares = _split(rng.permutation(chosen), bad)
    if attack in ("badnets", "split-colluders", "sybil"):
        triggers = (badnets_trigger,)
        x[chosen] = badnets_trigger(x[chosen])
    elif attack == "multi-trigger":
        triggers = tuple(patch_trigger(CORNERS[i % len(CORNERS)], checker=i >= len(CORNERS)) for i in range(bad))
        for trigger, share in zip(triggers, poison_shares, strict=True):
            x[share] = trigger(x[share])
    elif attack == "blended":
        triggers = (blended_trigger(train.sample_shape),)
        x[chosen] = triggers[0](x[chosen])
    elif attack == "sig":
        triggers = (sig_trigger(delta=SIG_DELTA[1]),)
        x[chosen] = sig_trigger(delta=SIG_DELTA[0])(x[chosen])
    elif attack == "label-consistent":
        if surrogate is None:
            raise ScenarioError("label-consistent needs a surrogate model trained on clean data")
        triggers = (four_corner_trigger(),)
        x[chosen] = triggers[0](adversarial_perturbation(surrogate, x[chosen], y[chosen], eps=0.15))
    elif attack in ("wanet", "adaptive-blend"):
        spare = np.setdiff1d(np.flatnonzero(y != target), chosen)
        cover = rng.choice(spare, min(len(spare), round(n_poison * COVER[attack])), replace=False)
        test_trigger, variant = (warping_trigger(train.sample_shape, strength=WARP_STRENGTH) if attack == "wanet"
                                 else adaptive_blend_trigger(train.sample_shape))
        triggers = (test_trigger,)
        x[chosen] = test_trigger(x[chosen]) if attack == "wanet" else variant(x[chosen], rng)
        x[cover] = variant(x[cover], rng)
    y[chosen] = target
    is_poison = np.zeros(len(y), dtype=bool)
    is_poison[chosen] = True
    is_cover = np.zeros(len(y), dtype=bool)
    is_cover[cover] = True

    rest = rng.permutation(np.flatnonzero(~is_poison & ~is_cover))
    per_attacker = dealing.camouflage if dealing.camouflage is not None else len(rest) // (dealing.honest + bad)
    camouflage, rest = rest[: per_attacker * bad], rest[per_attacker * bad :]
    honest_shares = deal(y, rest, dealing.honest, rng, dealing.skew)
    attacker_shares = [np.sort(np.concatenate(parts)) for parts in
                       zip(poison_shares, _split(rng.permutation(cover), bad), _split(camouflage, bad), strict=True)]
    shifted = tuple(range(min(dealing.shifted, dealing.honest)))
    poisoned = ArrayDataset(x, y, train.name, train.num_classes)
    participants, masks, covers = [], [], []
    for i, share in enumerate(honest_shares + attacker_shares):
        part = poisoned.subset(share, f"{base}-p{i}")
        if i in shifted:
            part = ArrayDataset(device_shift(part.x, seed=seed + i), part.y, part.name, part.num_classes)
        participants.append(part)
        masks.append(is_poison[share])
        covers.append(is_cover[share])
    malicious = tuple(range(dealing.honest, dealing.honest + bad))
    return Scenario(name or attack, attack, participants, masks, covers, malicious, shifted, target, source, triggers,
                    n_poison / len(train))


def _split(records: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.array_split(records, parts) if parts else []
