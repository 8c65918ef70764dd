"""Reconstruction attacks on an IR, and the prior-only baselines every attack is measured against.

Decoders follow He, Zhang, Lee (ACSAC 2019)'s inverse network: learned on (IR, image) pairs the attacker makes
by querying the FrontNet with its own data (or with noise, when it has none). rMLE is their white-box attack:
gradient descent on the input so the FrontNet reproduces the IR, with a total-variation prior.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def class_mean_prior(aux_x: np.ndarray, aux_y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The host learns the predicted class anyway; its best data-only guess is that class's mean image."""
    means = np.stack(
        [
            aux_x[aux_y == c].mean(axis=0) if (aux_y == c).any() else aux_x.mean(axis=0)
            for c in range(int(max(aux_y.max(), predicted.max())) + 1)
        ]
    )
    return means[predicted]


def global_mean_prior(aux_x: np.ndarray, n: int) -> np.ndarray:
    return np.repeat(aux_x.mean(axis=0, keepdims=True), n, axis=0)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def rmle(
    front: nn.Module, ir: torch.Tensor, start: torch.Tensor, *, steps: int, tv_weight: float, desc: str, progress: bool
) -> torch.Tensor:
    """argmin_x ||f(x) − IR||² / ||IR||² + λ·TV(x) over x in [0, 1] (sigmoid-parametrised), all targets at once."""
    front.eval()
    frozen = [p for p in front.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        z = torch.logit(start.clamp(0.02, 0.98)).clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.1)
        scale = ir.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        for _ in tqdm(range(steps), desc=desc, leave=False, disable=not progress):
            opt.zero_grad()
            x = torch.sigmoid(z)
            fit = (front(x) - ir).flatten(1).pow(2).sum(1) / scale
            (fit.mean() + tv_weight * total_variation(x)).backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return torch.sigmoid(z).detach()


class Decoder(nn.Module):
    """IR → image. Spatial IRs: conv, bilinear upsampling to the image size, two convs. Flat IRs: an MLP."""

    def __init__(self, ir_shape: tuple[int, ...], image_shape: tuple[int, ...], ir_scale: float) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.ir_scale = ir_scale
        self.net: nn.Module
        cin = image_shape[0]
        if len(ir_shape) == 3:
            self.net = nn.Sequential(
                nn.Conv2d(ir_shape[0], 32, 3, padding=1),
                nn.ReLU(),
                nn.Upsample(size=image_shape[1:], mode="bilinear"),
                nn.Conv2d(32, 16, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, cin, 3, padding=1),
            )
        else:
            features = int(np.prod(ir_shape))
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, int(np.prod(image_shape)))
            )

    def forward(self, ir: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(ir / self.ir_scale)).view(-1, *self.image_shape)


def train_decoder(
    irs: torch.Tensor, images: torch.Tensor, *, steps: int, seed: int, desc: str, progress: bool, batch: int = 64
) -> Decoder:
    """Fit a decoder on (IR, image) pairs for a fixed number of optimiser steps (equal compute per data budget)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = Decoder(tuple(irs.shape[1:]), tuple(images.shape[1:]), float(irs.std().clamp_min(1e-6)))
    opt = torch.optim.Adam(decoder.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc=desc, leave=False, disable=not progress):
        idx = torch.randint(len(irs), (min(batch, len(irs)),), generator=gen)
        opt.zero_grad()
        F.mse_loss(decoder(irs[idx]), images[idx]).backward()
        opt.step()
    return decoder.eval()


@torch.no_grad()
def decode(decoder: Decoder, irs: torch.Tensor) -> torch.Tensor:
    return torch.cat([decoder(chunk) for chunk in torch.split(irs, 256)])
