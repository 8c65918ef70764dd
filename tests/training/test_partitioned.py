"""Partitioned training equals plain training bit for bit; crashes resume exactly; checkpoints resist
tampering and rollback; the enclave refuses steps out of order."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.enclave.errors import SealedStateError
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.protocol import export_info
from caltrain.enclave.wire import (
    BackwardOut,
    DatasetInfo,
    Exported,
    ExportFrontNet,
    ForwardOut,
    FrontBackward,
    FrontForward,
)
from caltrain.training.config import TrainConfig
from caltrain.training.errors import CheckpointRollback, StepOutOfOrder
from caltrain.training.partitioned import PartitionedTrainer
from caltrain.training.plain import train_plain
from tests.helpers import People, pack, submission

torch.set_num_threads(1)


def shares() -> tuple[list[ArrayDataset], ArrayDataset]:
    train, test = load_dataset("digits")
    return [train.subset(np.arange(0, 300)), train.subset(np.arange(300, 560))], test.subset(np.arange(200))


def start_enclave(people: People, state: Path) -> EnclaveHost:
    host = EnclaveHost(state_dir=state, config=EnclaveConfig(people.consortium))
    host.start()
    return host


def ingest_all(host: EnclaveHost, people: People) -> None:
    (a, b), test = shares()
    for who, data, dataset_id in (("alice", a, "alice-0"), ("bob", b, "bob-0"), ("alice", test, "eval")):
        identity = getattr(people, who)
        host.call(submission(pack(data, identity, who, dataset_id), identity, host.keys), DatasetInfo)


CONFIG = TrainConfig(
    epochs=2, batch_size=32, datasets=["alice-0", "bob-0"], eval_datasets=["eval"], checkpoint_every=5, seed=7
)


def export_front(host: EnclaveHost, job_id: str) -> dict[str, torch.Tensor]:
    recipient = HpkeKeyPair.generate()
    exported = host.call(ExportFrontNet(job_id=job_id, recipient_key=recipient.public_bytes), Exported)
    raw = recipient.open(exported.ciphertext, export_info(job_id))
    state: dict[str, torch.Tensor] = torch.load(io.BytesIO(raw), weights_only=True)
    return state


@pytest.fixture
def host(people: People, tmp_path: Path) -> Iterator[EnclaveHost]:
    h = start_enclave(people, tmp_path / "state")
    ingest_all(h, people)
    yield h
    h.stop()


def test_partitioned_equals_plain_bitwise(host: EnclaveHost, tmp_path: Path) -> None:
    trainer = PartitionedTrainer(host, CONFIG, job_id="parity", workdir=tmp_path / "w")
    report = trainer.run()
    trainer.close()
    (a, b), test = shares()
    plain_data = ArrayDataset(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), "digits", 10)
    model, plain = train_plain(CONFIG, plain_data, test)
    front = export_front(host, "parity")
    full = model.state_dict()
    m = len(front)
    assert m and all(torch.equal(front[k], full[k]) for k in front), "FrontNet weights differ from plain training"
    back_plain = list(full.values())[m:]
    back = list(trainer.back.state_dict().values())
    assert len(back) == len(back_plain) and all(torch.equal(x, y) for x, y in zip(back, back_plain, strict=True))
    assert report.front_digest == plain.front_digest
    assert [e.eval_accuracy for e in report.epochs] == [e.eval_accuracy for e in plain.epochs]
    assert [e.loss for e in report.epochs] == [e.loss for e in plain.epochs]


def test_sigkill_mid_epoch_then_resume_gives_same_weights(people: People, host: EnclaveHost, tmp_path: Path) -> None:
    reference = PartitionedTrainer(host, CONFIG, job_id="crash", workdir=tmp_path / "ref")
    reference.run()
    expected_front, expected_back = export_front(host, "crash"), reference.back.state_dict()

    state = tmp_path / "crash-state"
    first = start_enclave(people, state)
    ingest_all(first, people)
    trainer = PartitionedTrainer(first, CONFIG, job_id="crash", workdir=tmp_path / "w")
    trainer.run(stop_after=13)  # last checkpoint at step 10; steps 10..12 are lost with the enclave
    first.call(FrontForward(phase="train", index=13), ForwardOut)  # killed between forward and backward
    first.kill()

    second = start_enclave(people, state)
    try:
        resumed = PartitionedTrainer(second, CONFIG, job_id="crash", workdir=tmp_path / "w")
        assert resumed.start(resume=True).next_step == 10
        resumed.run(resume=True)
        front = export_front(second, "crash")
    finally:
        second.stop()
    assert all(torch.equal(front[k], expected_front[k]) for k in expected_front)
    assert all(torch.equal(v, expected_back[k]) for k, v in resumed.back.state_dict().items())


def _checkpoint_file(state: Path) -> Path:
    (path,) = (state / "enclave" / "jobs").glob("*/checkpoint.sealed")
    return path


def test_tampered_checkpoint_detected(people: People, tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = start_enclave(people, state)
    ingest_all(host, people)
    PartitionedTrainer(host, CONFIG, job_id="t", workdir=tmp_path / "w").run(stop_after=6)
    host.kill()
    ckpt = _checkpoint_file(state)
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    ckpt.write_bytes(bytes(blob))
    host = start_enclave(people, state)
    try:
        with pytest.raises(SealedStateError):
            PartitionedTrainer(host, CONFIG, job_id="t", workdir=tmp_path / "w").start(resume=True)
    finally:
        host.stop()


def test_rolled_back_checkpoint_detected(people: People, tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = start_enclave(people, state)
    ingest_all(host, people)
    trainer = PartitionedTrainer(host, CONFIG, job_id="r", workdir=tmp_path / "w")
    trainer.run(stop_after=6)  # checkpoint at step 5
    old = tmp_path / "old.sealed"
    shutil.copy(_checkpoint_file(state), old)
    trainer.run(resume=True, stop_after=12)  # checkpoint at step 10 is now the newest
    host.kill()
    shutil.copy(old, _checkpoint_file(state))  # the host presents the step-5 checkpoint as the newest
    host = start_enclave(people, state)
    try:
        with pytest.raises(CheckpointRollback, match="newest sealed"):
            PartitionedTrainer(host, CONFIG, job_id="r", workdir=tmp_path / "w").start(resume=True)
    finally:
        host.stop()


def test_enclave_refuses_steps_out_of_order(host: EnclaveHost, tmp_path: Path) -> None:
    trainer = PartitionedTrainer(host, CONFIG, job_id="order", workdir=tmp_path / "w")
    trainer.start()
    with pytest.raises(StepOutOfOrder):
        host.call(FrontBackward(step=0, forward_next=False, grad_layout="contiguous"), BackwardOut)  # no forward yet
    with pytest.raises(StepOutOfOrder):
        host.call(FrontForward(phase="train", index=3), ForwardOut)  # skipping steps
    host.call(FrontForward(phase="train", index=0), ForwardOut)
    trainer.grad.view((32, *trainer.ir_shape)).fill_(float("nan"))
    with pytest.raises(StepOutOfOrder, match="NaN"):
        host.call(FrontBackward(step=0, forward_next=False, grad_layout="contiguous"), BackwardOut)
