"""Partitioned training equals plain training bit for bit (seed drawn inside the enclave, released to the
owner); full-enclave mode trains the same model with nothing crossing but timing; crashes resume exactly;
checkpoints resist tampering and rollback; the enclave refuses steps out of order."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.enclave.authority import UNSIGNED
from caltrain.enclave.errors import SealedStateError, StateRolledBack
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import (
    BackwardOut,
    Exported,
    ExportModel,
    ForwardOut,
    FrontBackward,
    FrontForward,
    JobCreated,
    StepsDone,
    TrainSteps,
)
from caltrain.models import build_model, candidate_cuts
from caltrain.training.config import TrainConfig
from caltrain.training.errors import StepOutOfOrder
from caltrain.training.partitioned import PartitionedTrainer
from caltrain.training.plain import train_plain
from tests.helpers import People, call_sealed, create_job, ingest, pack

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
        person = getattr(people, who)
        ingest(host, pack(data, person, dataset_id), person)


CONFIG = TrainConfig(
    epochs=2, batch_size=32, datasets=["alice/alice-0", "bob/bob-0"], eval_datasets=["alice/eval"],
    checkpoint_every=5,
)


def admitted(host: EnclaveHost, people: People, config: TrainConfig = CONFIG) -> tuple[JobCreated, TrainConfig]:
    created = create_job(host, people.owner, config)
    return created, TrainConfig.from_dict(created.spec)


def export(host: EnclaveHost, people: People, job_id: str) -> tuple[dict[str, torch.Tensor], int]:
    exported = call_sealed(host, ExportModel(job_id=job_id, auth=UNSIGNED), people.owner, Exported)
    state: dict[str, torch.Tensor] = torch.load(io.BytesIO(exported.front_state), weights_only=True)
    return state, exported.seed


@pytest.fixture
def host(people: People, tmp_path: Path) -> Iterator[EnclaveHost]:
    h = start_enclave(people, tmp_path / "state")
    ingest_all(h, people)
    yield h
    h.stop()


def plain_run(config: TrainConfig, seed: int) -> tuple[torch.nn.Module, object]:
    (a, b), test = shares()
    data = ArrayDataset(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), "digits", 10)
    return train_plain(config.model_copy(update={"seed": seed}), data, test)


def test_partitioned_equals_plain_bitwise(host: EnclaveHost, people: People, tmp_path: Path) -> None:
    created, spec = admitted(host, people)
    assert "seed" not in created.spec and not created.full_enclave
    trainer = PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w")
    report = trainer.run()
    trainer.close()
    front, seed = export(host, people, created.job_id)
    model, plain = plain_run(spec, seed)
    full = model.state_dict()
    m = len(front)
    assert m and all(torch.equal(front[k], full[k]) for k in front), "FrontNet weights differ from plain training"
    back_plain = list(full.values())[m:]
    back = list(trainer.back.state_dict().values())
    assert len(back) == len(back_plain) and all(torch.equal(x, y) for x, y in zip(back, back_plain, strict=True))
    assert report.front_digest == plain.front_digest  # type: ignore[attr-defined]
    assert [e.eval_accuracy for e in report.epochs] == [e.eval_accuracy for e in plain.epochs]  # type: ignore[attr-defined]


def test_full_enclave_trains_the_plain_model_and_nothing_crosses(
    host: EnclaveHost, people: People, tmp_path: Path
) -> None:
    """Full-enclave mode: the optimizer has parameters, no IR/label slot is ever written, the result is plain
    training's model bit for bit (hence its accuracy)."""
    blocks = len(candidate_cuts(build_model(CONFIG.model)))
    config = CONFIG.model_copy(update={"frontnet_layers": blocks, "eval_datasets": []})
    created, spec = admitted(host, people, config)
    assert created.full_enclave
    trainer = PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w")
    trainer.ir.view((trainer.ir.capacity,)).fill_(7.0)
    trainer.labels.view((trainer.labels.capacity,)).fill_(-1)
    trainer.start()
    for phase in ("train", "eval"):
        with pytest.raises(StepOutOfOrder, match="wholly in the enclave"):
            host.call(FrontForward(phase=phase, index=0), ForwardOut)
    report = trainer.run(resume=True)
    assert all(e.loss is None and e.train_accuracy is None for e in report.epochs)  # only timing reached the host
    assert bool((trainer.ir.view((trainer.ir.capacity,)) == 7.0).all()), "an IR or logits crossed"
    assert bool((trainer.labels.view((trainer.labels.capacity,)) == -1).all()), "labels crossed"
    trainer.close()
    weights, seed = export(host, people, created.job_id)
    model, plain = plain_run(spec, seed)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert report.front_digest == plain.model_digest  # type: ignore[attr-defined]


def test_sigkill_mid_epoch_then_resume_gives_same_weights(people: People, tmp_path: Path) -> None:
    """An uninterrupted run of the job's seed is plain training of that seed (the parity test); the resumed run
    must equal it too."""
    state = tmp_path / "crash-state"
    first = start_enclave(people, state)
    ingest_all(first, people)
    job, spec = admitted(first, people)
    trainer = PartitionedTrainer(first, spec, job_id=job.job_id, workdir=tmp_path / "w")
    trainer.run(stop_after=13)  # last checkpoint at step 10; steps 10..12 are lost with the enclave
    first.call(FrontForward(phase="train", index=13), ForwardOut)  # killed between forward and backward
    first.kill()

    second = start_enclave(people, state)
    try:
        resumed = PartitionedTrainer(second, spec, job_id=job.job_id, workdir=tmp_path / "w")
        assert resumed.start(resume=True).next_step == 10
        resumed.run(resume=True)
        front, seed = export(second, people, job.job_id)
    finally:
        second.stop()
    model, _ = plain_run(spec, seed)
    full = model.state_dict()
    assert all(torch.equal(front[k], full[k]) for k in front)
    assert all(torch.equal(v, full[k]) for k, v in resumed.back.state_dict().items())


def _checkpoint_file(state: Path) -> Path:
    (path,) = (state / "enclave" / "jobs").glob("*/checkpoint.sealed")
    return path


def test_tampered_checkpoint_detected(people: People, tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = start_enclave(people, state)
    ingest_all(host, people)
    created, spec = admitted(host, people)
    PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w").run(stop_after=6)
    host.kill()
    ckpt = _checkpoint_file(state)
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    ckpt.write_bytes(bytes(blob))
    host = start_enclave(people, state)
    try:
        with pytest.raises(SealedStateError):
            PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w").start(resume=True)
    finally:
        host.stop()


def test_rolled_back_checkpoint_detected(people: People, tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = start_enclave(people, state)
    ingest_all(host, people)
    created, spec = admitted(host, people)
    trainer = PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w")
    trainer.run(stop_after=6)  # checkpoint at step 5
    old = tmp_path / "old.sealed"
    shutil.copy(_checkpoint_file(state), old)
    trainer.run(resume=True, stop_after=12)  # checkpoint at step 10 is now the newest
    host.kill()
    shutil.copy(old, _checkpoint_file(state))  # the host presents the step-5 checkpoint as the newest
    host = start_enclave(people, state)
    try:
        with pytest.raises(StateRolledBack, match="newest sealed"):
            PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w").start(resume=True)
    finally:
        host.stop()


def test_enclave_refuses_steps_out_of_order(host: EnclaveHost, people: People, tmp_path: Path) -> None:
    created, spec = admitted(host, people)
    trainer = PartitionedTrainer(host, spec, job_id=created.job_id, workdir=tmp_path / "w")
    trainer.start()
    with pytest.raises(StepOutOfOrder):
        host.call(FrontBackward(step=0, forward_next=False, grad_layout="contiguous"), BackwardOut)  # no forward yet
    with pytest.raises(StepOutOfOrder):
        host.call(FrontForward(phase="train", index=3), ForwardOut)  # skipping steps
    with pytest.raises(StepOutOfOrder, match="partitioned"):
        host.call(TrainSteps(job_id=created.job_id, steps=1), StepsDone)  # the host cannot run steps unseen
    host.call(FrontForward(phase="train", index=0), ForwardOut)
    trainer.grad.view((32, *trainer.ir_shape)).fill_(float("nan"))
    with pytest.raises(StepOutOfOrder, match="NaN"):
        host.call(FrontBackward(step=0, forward_next=False, grad_layout="contiguous"), BackwardOut)
