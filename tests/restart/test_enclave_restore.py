"""What the enclave restores after it is killed, and what the two calls that restore it give a hostile host.

A real enclave process trains a job, links it and serves two deployments (the job's, and an owner's own model);
it is SIGKILLed and started again on the same sealed state. Then: the finished model is back (export gives the
same weights), forensics answer as before from the reloaded log, and the deployments serve again through fresh
slots with the same weights. `GetJobState` and `ReopenDeployment` are host-sent: called directly by a hostile
host they reveal nothing it was not already answered, re-open only what an owner authorized, and refuse
everything else with a typed error, leaving sealed state untouched. Tampered or rolled-back restore state fails
closed."""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from caltrain.accountability.errors import LinkageTampered
from caltrain.data.datasets import load_dataset
from caltrain.enclave.authority import UNSIGNED
from caltrain.enclave.errors import SealedStateError, StateRolledBack
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import (
    BuildLinkage,
    DeployModel,
    Exported,
    ExportModel,
    ForensicReply,
    GetJobState,
    JobState,
    LinkageBuilt,
    ModelDeployed,
    ReopenDeployment,
    TraceQuery,
)
from caltrain.inference.errors import DuplicateModel, UnknownModel
from caltrain.inference.owner import prepare_deployment
from caltrain.inference.requests import ClientSession
from caltrain.inference.serving import BatchingConfig, InferenceService, ModelInfo
from caltrain.inference.split import split_model
from caltrain.models import build_model
from caltrain.training.config import TrainConfig
from caltrain.training.errors import NoActiveJob
from caltrain.training.partitioned import PartitionedTrainer
from tests.helpers import People, call_sealed, create_job, ingest, open_policy, pack, signed_by, uncounted

torch.set_num_threads(1)


@dataclass
class Before:
    state: Path
    job_id: str
    statement: dict[str, object]
    front: dict[str, torch.Tensor]
    seed: int
    trace: dict[str, object]
    infos: dict[str, ModelInfo]
    host_states: dict[str, dict[str, torch.Tensor]]
    answers: dict[str, list[int]]
    query: np.ndarray


def trace(host: EnclaveHost, people: People, job_id: str, x: np.ndarray) -> dict[str, object]:
    buf = io.BytesIO()
    np.savez(buf, x=x)
    reply = call_sealed(host, TraceQuery(job_id=job_id, inputs=buf.getvalue(), k=5, method="ours", auth=UNSIGNED),
                        people.auditor, ForensicReply)
    return reply.report


def classify(service: InferenceService, model_id: str, xs: np.ndarray) -> list[int]:
    session = ClientSession(service.enclave.keys.hpke)
    service.open_session(session.session_id, session.sealed)
    server = service.get(model_id)
    labels = []
    for x in xs:
        counter, ct = session.seal(model_id, x, 1)
        answer = session.open_answer(model_id, counter, server.submit(session.session_id, counter, 1, ct).result(60))
        labels.append(answer["labels"][0])
    return labels


@pytest.fixture(scope="module")
def before(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Before]:
    """A job trained and linked, two deployments serving; then the enclave is SIGKILLed."""
    state = tmp_path_factory.mktemp("restore")
    host = EnclaveHost(state_dir=state, config=EnclaveConfig(people.consortium))
    host.start()
    train, test = load_dataset("digits")
    ingest(host, pack(train.subset(np.arange(300)), people.alice, "a"), people.alice, open_policy())
    created = create_job(host, people.owner, TrainConfig(epochs=1, batch_size=50, datasets=["alice/a"]))
    trainer = PartitionedTrainer(host, TrainConfig.from_dict(created.spec), job_id=created.job_id,
                                 workdir=state.parent / f"{state.name}-work")
    trainer.run()
    trainer.close()
    statement = host.call(BuildLinkage(job_id=created.job_id), LinkageBuilt).statement
    exported = call_sealed(host, ExportModel(job_id=created.job_id, auth=UNSIGNED), people.owner, Exported)
    front = torch.load(io.BytesIO(exported.front_state), weights_only=True)
    query = test.x[:6]
    service = InferenceService(host, BatchingConfig(max_batch=8))
    assert trainer.result is not None
    job_deploy = DeployModel(model_id="from-job", job_id=created.job_id, front_digest=trainer.result.front_digest,
                             architecture="digits-cnn", m=2, ternary=False, sealed_weights=b"", slot_paths=[],
                             max_batch=0, auth=UNSIGNED)
    back = trainer.back.state_dict()
    service.deploy(signed_by(job_deploy, people.owner, host.keys), back)
    own = build_model("digits-cnn", seed=7).eval()
    prepared = prepare_deployment(host.keys, "own", "digits-cnn", 1, True, own.state_dict())
    own_deploy = DeployModel(model_id="own", job_id="", front_digest="", architecture="digits-cnn", m=1,
                             ternary=True, sealed_weights=prepared.sealed_weights, slot_paths=[], max_batch=0,
                             auth=UNSIGNED)
    service.deploy(signed_by(own_deploy, people.owner, host.keys), prepared.host_state)
    infos = {i: s.info for i, s in service.models.items()}
    answers = {i: classify(service, i, query) for i in infos}
    result = Before(state, created.job_id, statement, front, exported.seed, trace(host, people, created.job_id, query),
                    infos, {"from-job": back, "own": prepared.host_state}, answers, query)
    host.kill()
    service.close()
    yield result


def restarted(people: People, state: Path) -> EnclaveHost:
    host = EnclaveHost(state_dir=state, config=EnclaveConfig(people.consortium))
    host.start()
    return host


def sealed_files(state: Path) -> str:
    files = sorted(p for p in (state / "enclave").rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def test_finished_model_forensics_and_deployments_come_back(before: Before, people: People) -> None:
    host = restarted(people, before.state)
    service = InferenceService(host, BatchingConfig(max_batch=8))
    try:
        exported = call_sealed(host, ExportModel(job_id=before.job_id, auth=UNSIGNED), people.owner, Exported)
        front = torch.load(io.BytesIO(exported.front_state), weights_only=True)
        assert exported.seed == before.seed and all(torch.equal(front[k], v) for k, v in before.front.items())
        after = trace(host, people, before.job_id, before.query)
        assert uncounted(after) == uncounted(before.trace), "forensics answer as before"
        assert after["traced"] == before.trace["traced"] + len(before.query), "the trace ledger came back"
        status = host.call(GetJobState(job_id=before.job_id), JobState)
        assert status.state == "linked" and status.statement == before.statement
        for model_id, info in before.infos.items():
            service.reopen(info, before.host_states[model_id])
            assert classify(service, model_id, before.query) == before.answers[model_id]
    finally:
        service.close()
        host.stop()


def test_what_a_hostile_host_gets_from_the_restore_calls(before: Before, people: People, tmp_path: Path) -> None:
    """`GetJobState`: only what the host was answered already, never the seed. `ReopenDeployment`: only the
    deployment the owner authorized, as authorized (it names no weights, model or owner to change); an id never
    deployed, or one already served, is refused; nothing sealed changes."""
    host = restarted(people, before.state)
    try:
        status = host.call(GetJobState(job_id=before.job_id), JobState)
        assert str(before.seed) not in repr(status) and status.statement == before.statement
        with pytest.raises(NoActiveJob):
            host.call(GetJobState(job_id="job-" + "0" * 32), JobState)
        split = split_model("digits-cnn", 1, True)
        service = InferenceService(host, BatchingConfig(max_batch=4))
        slots = service._slots(split)
        paths = [str(s.path) for part in slots for s in part]
        sealed = sealed_files(before.state)
        with pytest.raises(UnknownModel):
            host.call(ReopenDeployment(model_id="never-deployed", slot_paths=paths, max_batch=4), ModelDeployed)
        reopened = host.call(ReopenDeployment(model_id="own", slot_paths=paths, max_batch=4), ModelDeployed)
        assert (reopened.owner, reopened.front_digest, reopened.m, reopened.ternary) == (
            "owner", before.infos["own"].front_digest, 1, True)
        with pytest.raises(DuplicateModel):
            host.call(ReopenDeployment(model_id="own", slot_paths=paths, max_batch=4), ModelDeployed)
        with pytest.raises(DuplicateModel, match="already deployed"):  # an id is never reused for other weights
            prepared = prepare_deployment(host.keys, "from-job", "digits-cnn", 1, False,
                                          build_model("digits-cnn").state_dict())
            msg = DeployModel(model_id="from-job", job_id="", front_digest="", architecture="digits-cnn", m=1,
                              ternary=False, sealed_weights=prepared.sealed_weights, slot_paths=paths, max_batch=4,
                              auth=UNSIGNED)
            host.call_member(signed_by(msg, people.owner, host.keys), ModelDeployed)
        assert sealed_files(before.state) == sealed, "a restore call changed sealed state"
        for part in slots:
            for s in part:
                s.unlink()
    finally:
        host.stop()


def test_tampered_or_rolled_back_restore_state_fails_closed(before: Before, people: People, tmp_path: Path) -> None:
    state = tmp_path / "copy"
    shutil.copytree(before.state, state)
    enclave = state / "enclave"
    # the owner's sealed weights, swapped for other bytes: the reopen is refused, typed
    (weights,) = (enclave / "deployments").glob("*.sealed")
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    # the linkage log file, emptied of its records: checked against the statement the sealed registry holds
    (log,) = (enclave / "linkage").glob("*.sqlite")
    import sqlite3

    with sqlite3.connect(log) as db:
        db.execute("DELETE FROM records")
    db.close()
    host = restarted(people, state)
    try:
        split = split_model("digits-cnn", 1, True)
        service = InferenceService(host, BatchingConfig(max_batch=4))
        slots = service._slots(split)
        with pytest.raises(SealedStateError, match="do not unseal"):
            host.call(ReopenDeployment(model_id="own", slot_paths=[str(s.path) for p in slots for s in p],
                                       max_batch=4), ModelDeployed)
        for part in slots:
            for s in part:
                s.unlink()
        with pytest.raises(LinkageTampered):
            trace(host, people, before.job_id, before.query)
    finally:
        host.stop()
    # the final model, tampered: the job's model does not come back
    (final,) = (enclave / "jobs").glob("*/final.sealed")
    final.write_bytes(final.read_bytes()[:-1] + bytes([final.read_bytes()[-1] ^ 1]))
    host = restarted(people, state)
    try:
        with pytest.raises(SealedStateError):
            call_sealed(host, ExportModel(job_id=before.job_id, auth=UNSIGNED), people.owner, Exported)
    finally:
        host.stop()
    # the deployment registry, deleted: the enclave refuses to start
    (enclave / "deployments.sealed").unlink()
    with pytest.raises(StateRolledBack):
        restarted(people, state)


def test_a_rolled_back_trace_ledger_fails_closed(before: Before, people: People, tmp_path: Path) -> None:
    """The host keeps the sealed trace ledger from before some traces and presents it again, to have the enclave
    forget queries it traced (and judge later blame against fewer): the enclave refuses to start."""
    state = tmp_path / "copy"
    shutil.copytree(before.state, state)
    ledger = state / "enclave" / "trace-ledger.sealed"
    older = ledger.read_bytes()
    host = restarted(people, state)
    try:
        trace(host, people, before.job_id, before.query)
    finally:
        host.stop()
    ledger.write_bytes(older)
    with pytest.raises(StateRolledBack):
        restarted(people, state)
