"""Per-target similarity, bootstrap confidence intervals, and re-identification among same-class candidates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PSNR_CAP = 99.0  # an exact reconstruction has infinite PSNR; cap it so means stay finite


def _win(image: np.ndarray) -> int:
    side = min(image.shape[-2:])
    return min(7, side if side % 2 else side - 1)


def ssim_psnr(originals: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and PSNR per image pair (N×C×H×W in [0, 1])."""
    ssim, psnr = np.empty(len(originals)), np.empty(len(originals))
    for i, (a, b) in enumerate(zip(originals, recon, strict=True)):
        ssim[i] = structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=_win(a))
        with np.errstate(divide="ignore"):
            psnr[i] = min(peak_signal_noise_ratio(a, b, data_range=1.0), PSNR_CAP)
    return ssim, psnr


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


def _p95(a: np.ndarray, axis: int | None = None) -> Any:
    return np.percentile(a, 95, axis=axis)


STATS: dict[str, Callable[..., Any]] = {"mean": np.mean, "median": np.median, "p95": _p95}


def bootstrap(values: np.ndarray, resamples: int, rng: np.random.Generator) -> dict[str, Estimate]:
    """Mean, median and 95th percentile, each with a percentile-bootstrap 95% CI."""
    draws = values[rng.integers(0, len(values), size=(resamples, len(values)))]
    out = {}
    for name, stat in STATS.items():
        dist = stat(draws, axis=1)
        out[name] = Estimate(float(stat(values)), float(np.percentile(dist, 2.5)), float(np.percentile(dist, 97.5)))
    return out


def reidentification(
    recon: np.ndarray,
    target_index: np.ndarray,
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per target: is its reconstruction nearest (L2) to the true image among it and k−1 random images of its class
    from `pool_x`? Targets are `pool_x[target_index]`; candidates are shuffled so ties score at chance."""
    hits = np.zeros(len(recon), dtype=bool)
    flat = pool_x.reshape(len(pool_x), -1)
    for i, (r, t) in enumerate(zip(recon.reshape(len(recon), -1), target_index, strict=True)):
        same = np.flatnonzero((pool_y == pool_y[t]) & (np.arange(len(pool_y)) != t))
        candidates = rng.permutation(np.append(rng.choice(same, size=min(k - 1, len(same)), replace=False), t))
        dist = ((flat[candidates] - r) ** 2).sum(axis=1)
        hits[i] = candidates[int(np.argmin(dist))] == t
    return hits
