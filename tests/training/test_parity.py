"""Parity for every kind of model: partitioned training through a real enclave process gives the same state_dict
as plain training, entry by entry and bit for bit (BatchNorm running statistics and counters included), for
BatchNorm and Dropout on both sides of the cut, residual blocks cut between blocks, and 3-channel 32×32 inputs;
two runs of one job give the same digests; a killed job with dropout resumes to the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.wire import DatasetInfo
from caltrain.training.config import TrainConfig
from caltrain.training.core import state_digest
from caltrain.training.partitioned import PartitionedTrainer
from caltrain.training.plain import train_plain
from tests.helpers import People, pack, submission
from tests.training.test_partitioned import export_front, start_enclave


def _conv(out: int) -> dict[str, Any]:
    return {"type": "conv2d", "out_channels": out, "kernel_size": 3, "padding": 1, "bias": False}


# BatchNorm and Dropout in every block that has weights: whichever the cut, both halves hold some of each.
BN_DROPOUT_CNN: dict[str, Any] = {
    "name": "bn-dropout-cnn",
    "input_shape": [1, 8, 8],
    "num_classes": 10,
    "blocks": [
        {
            "name": "conv1",
            "layers": [_conv(8), {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "dropout2d", "p": 0.2}],
        },
        {
            "name": "conv2",
            "layers": [_conv(16), {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}],
        },
        {"name": "flatten", "layers": [{"type": "flatten"}]},
        {
            "name": "fc1",
            "layers": [
                {"type": "linear", "out_features": 32},
                {"type": "batchnorm1d"},
                {"type": "relu"},
                {"type": "dropout", "p": 0.3},
            ],
        },
        {"name": "logits", "layers": [{"type": "linear", "out_features": 10}]},
    ],
}
# (model, cut m, data): cut m puts the first m blocks in the enclave.
MATRIX: list[tuple[str | dict[str, Any], int, str]] = [
    (BN_DROPOUT_CNN, 1, "digits"),
    (BN_DROPOUT_CNN, 2, "digits"),
    (BN_DROPOUT_CNN, 4, "digits"),
    ("digits-resnet", 2, "digits"),  # after the first residual block
    ("digits-resnet", 4, "digits"),  # after the second
    ("cifar-resnet", 2, "colour-digits"),  # 3×32×32, BatchNorm in both halves, after the first basic block
    ("cifar-resnet", 4, "colour-digits"),  # after the last basic block (strided, with a 1×1 shortcut)
]
RECORDS = {"digits": (96, 96, 64), "colour-digits": (48, 48, 32)}  # per participant, per participant, eval


def _data(name: str) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    train, test = load_dataset(name)
    a, b, n = RECORDS[name]
    return train.subset(np.arange(a)), train.subset(np.arange(a, a + b)), test.subset(np.arange(n))


def _config(model: str | dict[str, Any], m: int, data: str, **extra: Any) -> TrainConfig:
    return TrainConfig(
        model=model,
        frontnet_layers=m,
        epochs=2,
        batch_size=16,
        optimizer="adam" if data == "colour-digits" else "sgd",
        lr=1e-3 if data == "colour-digits" else 0.05,
        datasets=[f"{data}-alice", f"{data}-bob"],
        eval_datasets=[f"{data}-eval"],
        checkpoint_every=5,
        seed=11,
        **extra,
    )


def _ingest(host: EnclaveHost, people: People) -> None:
    for data in RECORDS:
        a, b, test = _data(data)
        for who, part, suffix in (("alice", a, "alice"), ("bob", b, "bob"), ("alice", test, "eval")):
            identity = getattr(people, who)
            host.call(submission(pack(part, identity, who, f"{data}-{suffix}"), identity, host.keys), DatasetInfo)


@pytest.fixture(scope="module")
def parity_enclave(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveHost]:
    host = start_enclave(people, tmp_path_factory.mktemp("parity-state"))
    _ingest(host, people)
    yield host
    host.stop()


def _plain(config: TrainConfig, data: str) -> tuple[torch.nn.Module, Any]:
    a, b, test = _data(data)
    merged = ArrayDataset(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), data, 10)
    return train_plain(config, merged, test)


def _partitioned(
    host: EnclaveHost, config: TrainConfig, job: str, workdir: Path
) -> tuple[dict[str, torch.Tensor], Any]:
    trainer = PartitionedTrainer(host, config, job_id=job, workdir=workdir)
    try:
        report = trainer.run()
    finally:
        trainer.close()
    whole = {**export_front(host, job), **trainer.back.state_dict()}
    return whole, report


def _assert_bitwise(partitioned: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> None:
    assert list(partitioned) == list(plain)
    differ = [k for k, v in plain.items() if v.dtype != partitioned[k].dtype or not torch.equal(v, partitioned[k])]
    assert not differ, f"entries differ from plain training: {differ}"


@pytest.mark.parametrize(
    ("model", "m", "data"), MATRIX, ids=[f"{mdl if isinstance(mdl, str) else mdl['name']}-m{m}" for mdl, m, _ in MATRIX]
)
def test_partitioned_equals_plain_for_every_model(
    parity_enclave: EnclaveHost, tmp_path: Path, model: str | dict[str, Any], m: int, data: str
) -> None:
    config = _config(model, m, data)
    job = f"parity-{tmp_path.name}"
    partitioned, report = _partitioned(parity_enclave, config, job, tmp_path / "w")
    plain_model, plain = _plain(config, data)
    _assert_bitwise(partitioned, plain_model.state_dict())
    assert any(k.endswith("num_batches_tracked") for k in partitioned) == (model != "digits-resnet")
    assert report.front_digest == plain.front_digest
    assert [e.loss for e in report.epochs] == [e.loss for e in plain.epochs]
    assert [e.eval_accuracy for e in report.epochs] == [e.eval_accuracy for e in plain.epochs]


def test_two_runs_of_one_job_give_the_same_digests(parity_enclave: EnclaveHost, tmp_path: Path) -> None:
    """The enclave's random state carries nothing from one job to the next, and plain runs repeat too."""
    config = _config(BN_DROPOUT_CNN, 2, "digits")
    first, a = _partitioned(parity_enclave, config, "again-1", tmp_path / "1")
    torch.rand(100)  # whatever the global generator does in between changes nothing
    second, b = _partitioned(parity_enclave, config, "again-2", tmp_path / "2")
    assert a.front_digest == b.front_digest
    _assert_bitwise(first, second)
    plain_a, plain_b = _plain(config, "digits")[0], _plain(config, "digits")[0]
    assert state_digest(plain_a) == state_digest(plain_b)
    # and the streams matter: another seed gives other masks, so other weights
    other, _ = _partitioned(
        parity_enclave, _config(BN_DROPOUT_CNN, 2, "digits").model_copy(update={"seed": 12}), "again-3", tmp_path / "3"
    )
    assert not torch.equal(other["fc1.0.weight"], first["fc1.0.weight"])


def test_killed_job_with_dropout_resumes_to_the_same_weights(people: People, tmp_path: Path) -> None:
    config = _config(BN_DROPOUT_CNN, 2, "digits")
    expected = _plain(config, "digits")[0].state_dict()
    state = tmp_path / "state"
    first = start_enclave(people, state)
    _ingest(first, people)
    PartitionedTrainer(first, config, job_id="resume", workdir=tmp_path / "w").run(stop_after=8)  # checkpoint at 5
    first.kill()
    second = start_enclave(people, state)
    try:
        trainer = PartitionedTrainer(second, config, job_id="resume", workdir=tmp_path / "w")
        trainer.run(resume=True)
        trainer.close()
        _assert_bitwise({**export_front(second, "resume"), **trainer.back.state_dict()}, expected)
    finally:
        second.stop()
