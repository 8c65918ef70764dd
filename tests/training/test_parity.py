"""Parity for every kind of model: partitioned training through a real enclave process gives the same state_dict
as plain training with the job's seed (drawn inside the enclave, released to the owner), entry by entry and bit
for bit (BatchNorm running statistics and counters included), for BatchNorm and Dropout on both sides of the cut,
residual blocks cut between blocks, and 3-channel 32×32 inputs; jobs run one after another in one enclave each
equal plain training of their own seed (no random state carries over) and plain runs repeat; a killed job with
dropout resumes to the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.enclave.consent import ApprovedModel
from caltrain.enclave.consortium import Consortium, DatasetSchema
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.models import ZOO, resolve_model
from caltrain.training.config import TrainConfig
from caltrain.training.core import state_digest
from caltrain.training.partitioned import PartitionedTrainer
from caltrain.training.plain import train_plain
from tests.helpers import People, create_job, ingest, open_policy, pack
from tests.training.test_partitioned import export


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
    (BN_DROPOUT_CNN, 5, "digits"),  # full-enclave mode: the whole model, loss and optimizer inside
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
        datasets=[f"alice/{data}-alice", f"bob/{data}-bob"],
        eval_datasets=[f"alice/{data}-eval"],
        checkpoint_every=5,
        **extra,
    )


def _start(people: People, data: str, state: Path) -> EnclaveHost:
    """An enclave whose consortium's schema is `data`'s (one record shape per consortium)."""
    shape = load_dataset(data)[0].sample_shape
    consortium = Consortium(people.consortium.members, DatasetSchema(tuple(shape), 10))
    host = EnclaveHost(state_dir=state, config=EnclaveConfig(consortium))
    host.start()
    return host


def _ingest(host: EnclaveHost, people: People, data: str) -> None:
    consent = open_policy(models=[ApprovedModel(name=s.name, architecture=s.hash)
                                  for s in (*ZOO.values(), resolve_model(BN_DROPOUT_CNN))])
    a, b, test = _data(data)
    for who, part, suffix in (("alice", a, "alice"), ("bob", b, "bob"), ("alice", test, "eval")):
        person = getattr(people, who)
        ingest(host, pack(part, person, f"{data}-{suffix}"), person, consent)


@pytest.fixture(scope="module")
def parity_enclaves(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EnclaveHost]]:
    hosts = {data: _start(people, data, tmp_path_factory.mktemp(f"parity-{data}")) for data in RECORDS}
    for data, host in hosts.items():
        _ingest(host, people, data)
    yield hosts
    for host in hosts.values():
        host.stop()


def _plain(config: TrainConfig, data: str, seed: int) -> tuple[torch.nn.Module, Any]:
    a, b, test = _data(data)
    merged = ArrayDataset(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), data, 10)
    return train_plain(config.model_copy(update={"seed": seed}), merged, test)


def _partitioned(
    host: EnclaveHost, people: People, config: TrainConfig, workdir: Path
) -> tuple[dict[str, torch.Tensor], Any, int]:
    """Admit, train and export one job: its whole state, its report, its seed."""
    created = create_job(host, people.owner, config)
    trainer = PartitionedTrainer(host, TrainConfig.from_dict(created.spec), job_id=created.job_id, workdir=workdir)
    try:
        report = trainer.run()
    finally:
        trainer.close()
    front, seed = export(host, people, created.job_id)
    return {**front, **trainer.back.state_dict()}, report, seed


def _assert_bitwise(partitioned: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> None:
    assert list(partitioned) == list(plain)
    differ = [k for k, v in plain.items() if v.dtype != partitioned[k].dtype or not torch.equal(v, partitioned[k])]
    assert not differ, f"entries differ from plain training: {differ}"


@pytest.mark.parametrize(
    ("model", "m", "data"), MATRIX, ids=[f"{mdl if isinstance(mdl, str) else mdl['name']}-m{m}" for mdl, m, _ in MATRIX]
)
def test_partitioned_equals_plain_for_every_model(
    parity_enclaves: dict[str, EnclaveHost], people: People, tmp_path: Path, model: str | dict[str, Any], m: int,
    data: str,
) -> None:
    config = _config(model, m, data)
    partitioned, report, seed = _partitioned(parity_enclaves[data], people, config, tmp_path / "w")
    plain_model, plain = _plain(config, data, seed)
    _assert_bitwise(partitioned, plain_model.state_dict())
    assert any(k.endswith("num_batches_tracked") for k in partitioned) == (model != "digits-resnet")
    assert report.front_digest == plain.front_digest
    if m < len(resolve_model(model).blocks):  # in full-enclave mode neither loss nor accuracy reaches the host
        assert [e.loss for e in report.epochs] == [e.loss for e in plain.epochs]
        assert [e.eval_accuracy for e in report.epochs] == [e.eval_accuracy for e in plain.epochs]


def test_jobs_in_one_enclave_share_no_random_state_and_plain_runs_repeat(
    parity_enclaves: dict[str, EnclaveHost], people: People, tmp_path: Path
) -> None:
    """Each job equals plain training of its own seed whatever ran before it in the enclave (or in this process),
    and the same seed gives the same digests every time."""
    config = _config(BN_DROPOUT_CNN, 2, "digits")
    first, _, seed_a = _partitioned(parity_enclaves["digits"], people, config, tmp_path / "1")
    torch.rand(100)  # whatever the global generator does in between changes nothing
    second, _, seed_b = _partitioned(parity_enclaves["digits"], people, config, tmp_path / "2")
    assert seed_a != seed_b, "every admitted job draws its own seed"
    for state, seed in ((first, seed_a), (second, seed_b)):
        _assert_bitwise(state, _plain(config, "digits", seed)[0].state_dict())
    assert state_digest(_plain(config, "digits", seed_a)[0]) == state_digest(_plain(config, "digits", seed_a)[0])
    # and the streams matter: the other seed gave other masks, so other weights
    assert not torch.equal(second["fc1.0.weight"], first["fc1.0.weight"])


def test_killed_job_with_dropout_resumes_to_the_same_weights(people: People, tmp_path: Path) -> None:
    config = _config(BN_DROPOUT_CNN, 2, "digits")
    state = tmp_path / "state"
    first = _start(people, "digits", state)
    _ingest(first, people, "digits")
    created = create_job(first, people.owner, config)
    spec = TrainConfig.from_dict(created.spec)
    PartitionedTrainer(first, spec, job_id=created.job_id, workdir=tmp_path / "w").run(stop_after=8)  # ckpt at 5
    first.kill()
    second = _start(people, "digits", state)
    try:
        trainer = PartitionedTrainer(second, spec, job_id=created.job_id, workdir=tmp_path / "w")
        trainer.run(resume=True)
        trainer.close()
        front, seed = export(second, people, created.job_id)
        _assert_bitwise({**front, **trainer.back.state_dict()}, _plain(config, "digits", seed)[0].state_dict())
    finally:
        second.stop()
