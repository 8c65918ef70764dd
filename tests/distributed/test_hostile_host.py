"""The hosts are couriers between enclaves too. For every scale-out call, what a hostile host gets by sending it
itself, with any arguments, in any order, or again: a worker with other code or another consortium, or on another
platform, is refused with the attestation error that says why and learns no key; evidence and grants are bound to
one join; a job trains once, alone or on workers, and resumes only as it started; a forged FrontNet, shard,
partial answer or trace plan is refused."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from caltrain.accountability.errors import QueryRejected, ShardInvalid
from caltrain.attestation.errors import BadEvidenceSignature, KeyNotBound, MeasurementMismatch, NonceReused
from caltrain.enclave.authority import UNSIGNED, seal_request
from caltrain.enclave.consortium import Consortium
from caltrain.enclave.errors import GrantRefused
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    ClusterOpened,
    CollectHits,
    FanOutTrace,
    FinishCluster,
    JoinCluster,
    Joined,
    LinkageBuilt,
    MergeLinkage,
    Ok,
    OpenCluster,
    PeerEvidence,
    ShardHits,
    ShardLinkage,
    ShardLinked,
    ShardReady,
    ShardStart,
    TracePlan,
    TraceQuery,
    TraceShard,
    TrainReady,
    TrainResult,
    TrainStart,
    WorkerGrant,
)
from caltrain.errors import AuthError
from caltrain.training.errors import JobRefused, NoActiveJob, StepOutOfOrder, WorkerRefused
from tests.distributed.conftest import (
    Deployment,
    FullEnclaveHosts,
    acceptance,
    admission,
    admit,
    full_enclave_config,
)
from tests.helpers import signed_by

MICRO = 16


@pytest.fixture(scope="module")
def honest(deployment: Deployment) -> Iterator[list[EnclaveHost]]:
    workers = [deployment.worker(f"hw{r}") for r in range(2)]
    yield workers
    for w in workers:
        w.stop()


def opened(deployment: Deployment, job_id: str, world: int = 2) -> ClusterOpened:
    return deployment.leader.call(OpenCluster(job_id=job_id, world_size=world, micro_batch=MICRO), ClusterOpened)


def join(worker: EnclaveHost, job_id: str, rank: int, nonce: str, world: int = 2) -> PeerEvidence:
    return worker.call(JoinCluster(job_id=job_id, rank=rank, world_size=world, leader_nonce=bytes.fromhex(nonce)),
                       PeerEvidence)


def refused_start(worker: EnclaveHost, job_id: str) -> None:
    """The worker holds nothing of the job: no grant was accepted."""
    with pytest.raises(NoActiveJob):
        worker.call(ShardStart(job_id=job_id, ir_path="", grad_path="", label_path="", sum_path="", slot_capacity=1,
                               resume_step=0), ShardReady)


@pytest.mark.parametrize("kind", ["other consortium", "other platform"])
def test_a_worker_that_is_not_one_of_ours_is_refused_and_learns_no_key(
    deployment: Deployment, honest: list[EnclaveHost], kind: str
) -> None:
    people = deployment.people
    if kind == "other consortium":  # another member list: another measurement
        other = Consortium((*people.consortium.members, people.outsider.member()), people.consortium.schema)
        stranger = deployment.worker(f"stranger-{kind.split()[1]}", consortium=other)
        error: type[Exception] = MeasurementMismatch
    else:  # same code, but a platform (root of trust) the deployment does not run on
        stranger = deployment.worker(f"stranger-{kind.split()[1]}", platform=False)
        error = BadEvidenceSignature
    try:
        job_id, _ = deployment.job(full_enclave_config())
        nonces = opened(deployment, job_id).nonces
        evidence = join(stranger, job_id, 0, nonces[0])
        with pytest.raises(error):
            deployment.leader.call(admission(job_id, 0, evidence), WorkerGrant)
        refused_start(stranger, job_id)
        # An honest worker's grant, handed to the stranger, opens only for the honest worker.
        good = deployment.leader.call(admission(job_id, 1, join(honest[1], job_id, 1, nonces[1])), WorkerGrant)
        join(stranger, job_id, 1, os.urandom(32).hex())
        with pytest.raises((MeasurementMismatch, BadEvidenceSignature, KeyNotBound)):
            stranger.call(acceptance(job_id, 1, good), Joined)
        refused_start(stranger, job_id)
    finally:
        stranger.stop()


def test_evidence_and_grants_are_bound_to_one_join(deployment: Deployment, honest: list[EnclaveHost]) -> None:
    job_id, _ = deployment.job(full_enclave_config())
    nonces = opened(deployment, job_id).nonces
    first = join(honest[0], job_id, 0, nonces[0])
    grant = deployment.leader.call(admission(job_id, 0, first), WorkerGrant)
    with pytest.raises(NonceReused):
        deployment.leader.call(admission(job_id, 0, first), WorkerGrant)
    with pytest.raises(KeyNotBound):  # rank 0's evidence offered for rank 1: it answers another nonce
        deployment.leader.call(admission(job_id, 1, first), WorkerGrant)
    nonces = opened(deployment, job_id).nonces  # every attempt spends its nonce: the host asks for fresh ones
    with pytest.raises(WorkerRefused):  # a grant for a join the worker never asked for
        honest[1].call(acceptance(job_id, 0, grant), Joined)
    second = join(honest[1], job_id, 1, nonces[1])
    other = deployment.leader.call(admission(job_id, 1, second), WorkerGrant)
    with pytest.raises(GrantRefused):  # worker 1's attested first enclave, but worker 0's sealed grant
        honest[1].call(acceptance(job_id, 1, dataclasses.replace(other, grant=grant.grant)), Joined)
    join(honest[1], job_id, 1, nonces[1])
    with pytest.raises(KeyNotBound):  # the first enclave's evidence answered the previous join's nonce
        honest[1].call(acceptance(job_id, 1, other), Joined)
    with pytest.raises(WorkerRefused):
        honest[0].call(JoinCluster(job_id=job_id, rank=2, world_size=2, leader_nonce=bytes(32)), PeerEvidence)


def test_a_job_trains_once_alone_or_on_workers_and_resumes_as_it_started(deployment: Deployment) -> None:
    leader = deployment.leader
    with pytest.raises(NoActiveJob):
        opened(deployment, "job-" + "0" * 32)
    job_id, _ = deployment.job(full_enclave_config())
    for world, micro in ((0, MICRO), (65, MICRO), (2, 0), (2, 65)):
        with pytest.raises(JobRefused):
            leader.call(OpenCluster(job_id=job_id, world_size=world, micro_batch=micro), ClusterOpened)
    opened(deployment, job_id)
    with pytest.raises(JobRefused, match="resumes only as it started"):
        opened(deployment, job_id, world=3)
    with pytest.raises(StepOutOfOrder, match="a job trains once"):
        leader.call(TrainStart(job_id=job_id, ir_path="", grad_path="", label_path="", slot_capacity=1, resume=False),
                    TrainReady)
    with pytest.raises(WorkerRefused):  # a FrontNet no worker of this job sealed
        leader.call(FinishCluster(job_id=job_id, backnet=b"", sealed_front=os.urandom(200)), TrainResult)
    alone, _ = deployment.job(full_enclave_config())
    slot = SharedTensor.create(1, "float32")
    leader.call(TrainStart(job_id=alone, ir_path=str(slot.path), grad_path=str(slot.path), label_path=str(slot.path),
                           slot_capacity=1, resume=False), TrainReady)
    slot.unlink()
    with pytest.raises(JobRefused, match="already trains in this enclave alone"):
        opened(deployment, alone)
    with pytest.raises(StepOutOfOrder):
        leader.call(FinishCluster(job_id=alone, backnet=b"", sealed_front=b""), TrainResult)


def test_forged_shards_answers_and_plans_are_refused(deployment: Deployment, honest: list[EnclaveHost]) -> None:
    leader = deployment.leader
    job_id, spec = deployment.job(full_enclave_config(epochs=1, batch_size=280))
    admit(leader, honest, job_id, 140)
    hosts = FullEnclaveHosts(honest, job_id, spec)
    hosts.run(leader)
    hosts.close()
    shards = [w.call(ShardLinkage(job_id=job_id), ShardLinked).shard for w in honest]
    for forged in (
        [shards[0]],  # too few
        [shards[1], shards[0]],  # out of rank order
        [shards[0], {**shards[1], "body": {**shards[1]["body"], "nodes": shards[1]["body"]["nodes"][::-1]}}],
        [shards[0], {**shards[1], "signature": shards[0]["signature"]}],
    ):
        with pytest.raises(Exception, match="shard"):
            leader.call(MergeLinkage(job_id=job_id, shards=forged), LinkageBuilt)
    leader.call(MergeLinkage(job_id=job_id, shards=shards), LinkageBuilt)
    with pytest.raises(Exception, match="partial answer"):
        leader.call(CollectHits(job_id=job_id, hits=os.urandom(64)), Ok)
    ciphertext, _ = deployment.sealed_trace(job_id, np.zeros((1, 1, 8, 8), np.float32))
    msg = signed_by(TraceQuery(job_id=job_id, inputs=b"", k=5, method="caltrain-knn", auth=UNSIGNED),
                    deployment.people.owner, leader.keys)
    with pytest.raises(AuthError):  # only a sealed TraceQuery of an auditor fans out: here, the owner's
        leader.call(FanOutTrace(ciphertext=seal_request(msg, leader.keys).ciphertext), TracePlan)
    outside, _ = deployment.sealed_trace(job_id, np.full((1, 1, 8, 8), 3.4e38, np.float32))
    with pytest.raises(QueryRejected, match="outside the schema"):  # overflowing features: answers resting on nothing
        leader.call(FanOutTrace(ciphertext=outside), TracePlan)
    plan = leader.call(FanOutTrace(ciphertext=ciphertext), TracePlan)
    assert plan.job_id == job_id
    with pytest.raises(Exception, match="trace plan"):
        honest[0].call(TraceShard(job_id=job_id, plan=plan.plan[:-1] + bytes([plan.plan[-1] ^ 1])), ShardHits)


@settings(max_examples=25)
@given(data=st.data())
def test_a_grant_altered_anywhere_is_refused(deployment: Deployment, honest: list[EnclaveHost],
                                             data: st.DataObject) -> None:
    """Flip any bit of a sealed grant, or cut it: the worker refuses it, typed, and holds no job."""
    job_id, _ = deployment.job(full_enclave_config())
    nonce = opened(deployment, job_id, world=1).nonces[0]
    grant = deployment.leader.call(admission(job_id, 0, join(honest[0], job_id, 0, nonce, world=1)), WorkerGrant)
    blob = bytearray(grant.grant)
    where = data.draw(st.integers(0, 2**32))  # a position whatever the grant's length (the seed's digits vary)
    if data.draw(st.booleans()):
        blob[where % len(blob)] ^= 1 << (where % 8)
    else:
        del blob[where % len(blob) :]
    with pytest.raises(GrantRefused):
        honest[0].call(acceptance(job_id, 0, dataclasses.replace(grant, grant=bytes(blob))), Joined)
    refused_start(honest[0], job_id)


@pytest.fixture(scope="module")
def linked(deployment: Deployment, honest: list[EnclaveHost]) -> tuple[str, list[dict[str, Any]]]:
    """A job trained by the honest workers, its sharded log merged: the shards as the workers signed them."""
    job_id, spec = deployment.job(full_enclave_config(epochs=1, batch_size=280))
    admit(deployment.leader, honest, job_id, 140)
    hosts = FullEnclaveHosts(honest, job_id, spec)
    hosts.run(deployment.leader)
    hosts.close()
    shards = [w.call(ShardLinkage(job_id=job_id), ShardLinked).shard for w in honest]
    deployment.leader.call(MergeLinkage(job_id=job_id, shards=shards), LinkageBuilt)
    return job_id, shards


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=6)


@settings(max_examples=40)
@given(data=st.data())
def test_a_shard_altered_anywhere_is_refused(deployment: Deployment, linked: tuple[str, list[dict[str, Any]]],
                                             data: st.DataObject) -> None:
    """Any field of a signed shard (its body or signature) replaced by any JSON value: refused as `ShardInvalid`,
    never another error, and the signed root stays the job's."""
    job_id, shards = linked
    rank = data.draw(st.integers(0, len(shards) - 1))
    doc = json.loads(json.dumps(shards[rank]))
    if data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(doc["body"])))
        value = data.draw(JSON)
        assume(value != doc["body"][field])
        doc["body"][field] = value
    else:
        doc[data.draw(st.sampled_from(["body", "signature"]))] = data.draw(JSON)
    forged = [*shards[:rank], doc, *shards[rank + 1 :]]
    with pytest.raises(ShardInvalid):
        deployment.leader.call(MergeLinkage(job_id=job_id, shards=forged), LinkageBuilt)
