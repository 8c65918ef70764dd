"""The steps both trainers share. Everything random is a pure function of (seed, position), so a run can
stop anywhere and resume bit for bit, and the plain and partitioned runs draw the same numbers.

Dropout draws from two streams, one per half (FrontNet, BackNet), each seeded per step from its own stream seed;
plain training draws from the same two streams, so it reproduces the partitioned run's masks exactly, and the
host needs only the BackNet's stream seed, which tells nothing about the FrontNet's.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from caltrain.errors import TrainingError
from caltrain.models import ModelSpec, Partition, attach_generator, partition, resolve_model
from caltrain.training.config import TrainConfig
from caltrain.training.errors import JobRefused

Half = Literal["front", "back"]


def _seed(*parts: object) -> int:
    """A 63-bit seed from a stable digest of `parts` (Python's hash() is not stable across versions)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(*parts))


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


def seed_of(config: TrainConfig) -> int:
    """The job's seed; only the enclave (after admission) and plain reruns by a recipient have one."""
    if config.seed is None:
        raise TrainingError("training needs a seed (the enclave draws one when it admits a job)")
    return config.seed


def training_batch(x: torch.Tensor, y: torch.Tensor, config: TrainConfig, step: int) -> tuple[torch.Tensor, ...]:
    """Inputs and labels of global step `step`: epoch order, slice, augmentation."""
    seed = seed_of(config)
    spe = steps_per_epoch(len(y), config.batch_size)
    epoch, k = divmod(step, spe)
    idx = batch_index(epoch_order(len(y), seed, epoch), k, config.batch_size)
    xb = x[idx]
    if config.augment:
        xb = augment(xb, seed, step)
    return xb, y[idx]


def build_split(config: TrainConfig) -> tuple[nn.Module, Partition]:
    """The model at its seeded initial weights (unseeded without a seed: the host's structure only), and its
    partition at `frontnet_layers`."""
    model = resolve_model(config.model).build(config.seed)
    return model, partition(model, config.frontnet_layers)


def check_spec(config: TrainConfig, record_shape: tuple[int, ...] | None) -> ModelSpec:
    """The job's model spec, once the job spec is shown to make sense: train and evaluation datasets disjoint,
    records of `record_shape` fit the model (the spec itself and the cut's range were checked when the config
    parsed). `JobRefused` names what is wrong. Clients run it before asking the enclave, which runs it again."""
    overlap = sorted(set(config.datasets) & set(config.eval_datasets))
    if overlap:
        raise JobRefused(f"datasets {overlap} cannot both train and evaluate")
    spec = resolve_model(config.model)
    if record_shape is not None and tuple(record_shape) != tuple(spec.input_shape):
        raise JobRefused(f"model {spec.name} takes {list(spec.input_shape)} inputs; the records are "
                         f"{list(record_shape)}: pick a model built for that shape")
    return spec


def ir_shape(config: TrainConfig) -> tuple[int, ...]:
    """Per-input shape of the IR at the configured cut, from the spec's shape inference: both sides agree on it
    without running a forward pass (which, in training mode, would move BatchNorm statistics)."""
    return resolve_model(config.model).cut_shape(config.frontnet_layers)


def check_data(config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse data the configured model cannot take (`ShapeMismatch`: input shape, labels beyond its classes)."""
    resolve_model(config.model).check_data(tuple(x.shape[1:]), int(y.max()) + 1 if len(y) else 0)


def dropout_seed(config: TrainConfig, half: Half) -> int:
    """The seed of one half's dropout stream, derived one-way from the job seed (the host may learn the back's)."""
    return _seed("dropout", seed_of(config), half)


def seed_dropout(
    module: nn.Module, stream_seed: int, step: int, device: torch.device | str = "cpu", *, micro: int | None = None
) -> None:
    """Point `module`'s dropout layers at the masks of training step `step` (and micro-batch `micro`, when a step
    is cut into micro-batches across workers) of one stream: a pure function of (stream seed, step, micro), so a
    resumed run draws the same masks with no generator state to checkpoint, and any worker computing a micro-batch
    draws the masks any other would."""
    position = (step,) if micro is None else (step, micro)
    attach_generator(module, _generator("dropout-step", stream_seed, *position, device=device))


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
