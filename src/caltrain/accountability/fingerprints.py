"""Fingerprints: the final model's L2-normalized penultimate embedding of each record (DESIGN.md §4).

Computed in eval mode, without augmentation, in fixed-size batches, so the same model and data always give the
same bytes. The classifier layer's residual `p − onehot(label)` comes along because the last-layer gradient of the
cross-entropy loss is `outer(p − onehot, embedding)`: with it, gradient similarity costs two dot products.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from caltrain.crypto.hashing import tagged_hash
from caltrain.errors import ModelError


@dataclass(frozen=True)
class Features:
    """Per-record view of a model: raw embedding, its norm, fingerprint (unit embedding) and class probabilities."""

    embeddings: np.ndarray  # float32 N×D, penultimate activations
    fingerprints: np.ndarray  # float32 N×D, L2-normalized embeddings
    probs: np.ndarray  # float32 N×C, softmax of the logits

    def __len__(self) -> int:
        return len(self.fingerprints)

    def select(self, index: np.ndarray) -> Features:
        """The rows at `index`."""
        return Features(self.embeddings[index], self.fingerprints[index], self.probs[index])

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1).astype(np.int64)

    def residuals(self, labels: np.ndarray) -> np.ndarray:
        """`p − onehot(labels)`: the gradient of the loss w.r.t. the logits, one row per record."""
        r = self.probs.copy()
        r[np.arange(len(labels)), labels] -= 1.0
        return r


def _classifier_split(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ModelError("fingerprints need an nn.Sequential whose last block is the classifier nn.Linear")
    return model[:-1], model[-1]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@torch.no_grad()
def compute_features(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 1024) -> Features:
    """Embeddings, fingerprints and probabilities of `x` under `model` (restored to its previous mode afterwards)."""
    body, head = _classifier_split(model)
    was_training = model.training
    model.eval()
    try:
        xs = torch.as_tensor(x, dtype=torch.float32)
        embs, probs = [], []
        for start in range(0, len(xs), batch_size):
            h = body(xs[start : start + batch_size]).flatten(1)
            embs.append(h)
            probs.append(torch.softmax(head(h), dim=1))
    finally:
        model.train(was_training)
    if not embs:
        dim = head.in_features
        return Features(np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32),
                        np.zeros((0, head.out_features), np.float32))
    e = torch.cat(embs).numpy().astype(np.float32)
    return Features(e, l2_normalize(e), torch.cat(probs).numpy().astype(np.float32))


def channels_last(model: nn.Module) -> nn.Module:
    """A copy of `model` with its 4-D weights in channels-last layout: on CPU, where max-pooling in the default
    layout is slow, its forward passes take about 60 % of the time, its outputs equal up to float rounding. For
    repeated forward passes whose bytes are committed nowhere (the fingerprints the log commits to are not)."""
    out = copy.deepcopy(model)
    for tensor in [*out.parameters(), *out.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return out


def fingerprints(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """The linkage-log fingerprints of `x`: float32 N×D, unit L2 norm."""
    return compute_features(model, x, batch_size=batch_size).fingerprints


def model_hash(model: nn.Module) -> bytes:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): what the log statement binds."""
    parts: list[bytes] = []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        parts += [name.encode(), str(t.dtype).encode(), struct.pack(f">{t.dim()}Q", *t.shape), t.numpy().tobytes()]
    return tagged_hash("caltrain/model/v1", *parts)
