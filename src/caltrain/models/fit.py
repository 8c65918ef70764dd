"""A plain, seeded trainer: enough to give an assessment a trained model when the user has none."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from caltrain.models.layers import attach_generator


def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    seed: int,
    batch: int = 64,
    lr: float = 1e-3,
    progress: bool = True,
) -> nn.Module:
    """Adam on cross-entropy; the data order and dropout masks are pure functions of `seed`."""
    gen = torch.Generator().manual_seed(seed)
    attach_generator(model, torch.Generator().manual_seed(seed + 1))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bar = tqdm(range(epochs), desc="training", disable=not progress)
    for _ in bar:
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    logits = torch.cat([model(chunk) for chunk in torch.from_numpy(images).split(1024)])
    return float(np.mean(logits.argmax(1).numpy() == labels))
