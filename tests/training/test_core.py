from __future__ import annotations

import pytest
import torch

from caltrain.errors import TrainingError
from caltrain.training.config import TrainConfig
from caltrain.training.core import augment, epoch_order, is_checkpoint_step, training_batch


def test_epoch_order_is_a_seeded_permutation() -> None:
    a, b = epoch_order(100, 1, 0), epoch_order(100, 1, 0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_order(100, 1, 1)) and not torch.equal(a, epoch_order(100, 2, 0))


def test_augment_shifts_by_at_most_one_pixel_deterministically() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    out = augment(x, seed=0, step=3)
    assert torch.equal(out, augment(x, seed=0, step=3)) and not torch.equal(out, augment(x, seed=0, step=4))
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where // 8, where % 8
    assert out.sum() == 64 and rows.sub(4).abs().max() <= 1 and cols.sub(4).abs().max() <= 1
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 3


def test_training_batch_covers_each_record_once_per_epoch() -> None:
    config = TrainConfig(batch_size=7, augment=False, seed=0)
    x, y = torch.arange(30.0).view(30, 1, 1, 1), torch.arange(30)
    seen = torch.cat([training_batch(x, y, config, s)[1] for s in range(5)])
    assert sorted(seen.tolist()) == list(range(30))


def test_checkpoint_schedule() -> None:
    config = TrainConfig(checkpoint_every=4)
    assert [s for s in range(1, 21) if is_checkpoint_step(s, 10, config)] == [4, 8, 10, 12, 16, 20]


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"optimizer": "lbfgs"}, {"surprise": 1}, {"lr": -1}])
def test_bad_configs_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(TrainingError):
        TrainConfig.from_dict(bad)
