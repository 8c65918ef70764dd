"""The steps both trainers share. Everything random is a pure function of (seed, position), so a run can
stop anywhere and resume bit for bit, and the plain and partitioned runs draw the same numbers.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from caltrain.crypto.hashing import tagged_hash
from caltrain.errors import TrainingError
from caltrain.models import Partition, build_model, partition
from caltrain.training.config import TrainConfig


def _generator(*parts: object) -> torch.Generator:
    """A generator seeded from a stable digest of `parts` (Python's hash() is not stable across versions)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch (shuffling happens where the data is: inside the enclave)."""
    return torch.randperm(n, generator=_generator("order", seed, epoch))


def batch_index(order: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    return order[k * batch_size : (k + 1) * batch_size]


def augment(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Random translation by up to one pixel per image (pad by 1, crop at a random offset)."""
    g = _generator("augment", seed, step)
    b, _, h, w = x.shape
    dy = torch.randint(0, 3, (b,), generator=g)
    dx = torch.randint(0, 3, (b,), generator=g)
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None]
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :]
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def training_batch(x: torch.Tensor, y: torch.Tensor, config: TrainConfig, step: int) -> tuple[torch.Tensor, ...]:
    """Inputs and labels of global step `step`: epoch order, slice, augmentation."""
    if config.seed is None:
        raise TrainingError("training needs a seed (the enclave draws one when it admits a job)")
    spe = steps_per_epoch(len(y), config.batch_size)
    epoch, k = divmod(step, spe)
    idx = batch_index(epoch_order(len(y), config.seed, epoch), k, config.batch_size)
    xb = x[idx]
    if config.augment:
        xb = augment(xb, config.seed, step)
    return xb, y[idx]


def build_split(config: TrainConfig) -> tuple[nn.Module, Partition]:
    """The model at its seeded initial weights (unseeded without a seed: the host's structure only), and its
    partition at `frontnet_layers`."""
    model = build_model(config.model, seed=config.seed)
    return model, partition(model, config.frontnet_layers)


def architecture_hash(model: str) -> str:
    """The canonical hash a data-use policy approves an architecture by."""
    return tagged_hash("caltrain/architecture/v0", repr(build_model(model)).encode()).hex()


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def is_checkpoint_step(done_steps: int, spe: int, config: TrainConfig) -> bool:
    """After `done_steps` steps: checkpoint at every epoch end and every `checkpoint_every` steps."""
    return done_steps % spe == 0 or (config.checkpoint_every > 0 and done_steps % config.checkpoint_every == 0)


def state_digest(module: nn.Module) -> str:
    """SHA-256 over a module's parameters in order: names the exact weights a report talks about."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
