"""The worker enclaves' protocol, with this process as every host: full-enclave training on two workers equals the
one-process fixed-point reference bit for bit; what the hosts all-reduce decodes to noise; steps run only in
order; an altered sum is refused and changes nothing; a sharded trace equals the one-worker trace of the same job,
with proofs that verify against the one signed root (and the participant's receipt)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from caltrain.accountability.linkage import LinkageProof, verify_linkage_proof
from caltrain.crypto.container import open_container
from caltrain.crypto.merkle import MerkleTree
from caltrain.data.datasets import load_dataset
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.wire import (
    Aggregate,
    ClusterOpened,
    CollectHits,
    FanOutTrace,
    ForwardOut,
    LinkageBuilt,
    MergeLinkage,
    Ok,
    OpenCluster,
    SealedReply,
    SealedRequest,
    ShardAggregate,
    ShardApply,
    ShardEnd,
    ShardForward,
    ShardHits,
    ShardLinkage,
    ShardLinked,
    ShardResult,
    StepsDone,
    TracePlan,
    TraceShard,
)
from caltrain.training.aggregation import quantize
from caltrain.training.config import TrainConfig
from caltrain.training.core import build_split, loss_fn, training_batch
from caltrain.training.distributed import ShardTrainer
from caltrain.training.errors import AggregateTampered, JobRefused, StepOutOfOrder
from tests.distributed.conftest import (
    BATCHNORM_CNN,
    DROPOUT_CNN,
    Deployment,
    FullEnclaveHosts,
    admit,
    assert_uncorrelated,
    full_enclave_config,
)
from tests.helpers import uncounted

MICRO = 16


@dataclass
class Trained:
    job_id: str
    spec: TrainConfig
    workers: list[EnclaveHost]
    hosts: FullEnclaveHosts  # what the hosts saw


@pytest.fixture(scope="module")
def trained(deployment: Deployment) -> Iterator[Trained]:
    """A full-enclave job trained by two workers (every hosts' view recorded), finished in the first enclave."""
    workers = [deployment.worker(f"pw{r}") for r in range(2)]
    job_id, spec = deployment.job(full_enclave_config())
    admit(deployment.leader, workers, job_id, MICRO)
    hosts = FullEnclaveHosts(workers, job_id, spec)
    hosts.run(deployment.leader)
    yield Trained(job_id, spec, workers, hosts)
    hosts.close()
    for w in workers:
        w.stop()


def test_two_workers_train_the_one_process_reference_bit_for_bit(deployment: Deployment, trained: Trained) -> None:
    weights, seed = deployment.export(trained.job_id)
    reference = deployment.reference(trained.spec, seed, MICRO).state_dict()
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in weights), "2 workers differ from 1 process"


def test_dropout_draws_the_same_masks_whichever_worker_computes_a_micro_batch(deployment: Deployment) -> None:
    """A full-enclave job with dropout on two workers equals the one-process reference; a model with running
    statistics (BatchNorm) is refused for scale-out, naming why."""
    bn_job, _ = deployment.job(full_enclave_config(model=BATCHNORM_CNN, frontnet_layers=5))
    with pytest.raises(JobRefused, match="running statistics"):
        deployment.leader.call(OpenCluster(job_id=bn_job, world_size=2, micro_batch=MICRO), ClusterOpened)
    workers = [deployment.worker(f"dw{r}") for r in range(2)]
    try:
        job_id, spec = deployment.job(full_enclave_config(model=DROPOUT_CNN, frontnet_layers=5))
        admit(deployment.leader, workers, job_id, MICRO)
        hosts = FullEnclaveHosts(workers, job_id, spec)
        hosts.run(deployment.leader)
        hosts.close()
        weights, seed = deployment.export(job_id)
        reference = deployment.reference(spec, seed, MICRO).state_dict()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), "dropout masks differ across workers"
    finally:
        for w in workers:
            w.stop()


def test_what_the_hosts_all_reduce_is_not_the_gradient(deployment: Deployment, trained: Trained) -> None:
    """Step 0's contributions and their sum, decoded as fixed point without the job key, against the true
    gradients recomputed from the exported seed: no correlation (while the same decoding of the truth is the
    truth, so a leak would show)."""
    _, seed = deployment.export(trained.job_id)
    spec = trained.spec.model_copy(update={"seed": seed})
    model, _ = build_split(spec)  # the initial weights: what step 0's gradient is taken at
    x, y = deployment.data
    xb, yb = training_batch(x, y, spec, 0)
    truth = []
    for rank in range(2):
        total = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.int64)
        for micro in range(rank, -(-len(yb) // MICRO), 2):
            xm, ym = xb[micro * MICRO : (micro + 1) * MICRO], yb[micro * MICRO : (micro + 1) * MICRO]
            model.zero_grad(set_to_none=True)
            (loss_fn(model(xm), ym) * (len(ym) / len(yb))).backward()
            total += quantize(torch.cat([p.grad.flatten() for p in model.parameters()]))
        truth.append(total)
    step, contributions, total = trained.hosts.seen[0]
    assert step == 0
    assert_uncorrelated([*contributions, total], [*truth, truth[0] + truth[1]])


def test_steps_run_in_order_and_an_altered_sum_changes_nothing(deployment: Deployment) -> None:
    workers = [deployment.worker(f"ow{r}") for r in range(2)]
    try:
        job_id, spec = deployment.job(full_enclave_config())
        admit(deployment.leader, workers, job_id, MICRO)
        hosts = FullEnclaveHosts(workers, job_id, spec)
        hosts.start()
        with pytest.raises(StepOutOfOrder):
            workers[0].call(ShardAggregate(step=1), Aggregate)
        with pytest.raises(StepOutOfOrder):
            workers[0].call(ShardApply(step=0), StepsDone)  # nothing aggregated yet
        with pytest.raises(StepOutOfOrder, match="wholly"):
            workers[0].call(ShardForward(step=0, micro=0), ForwardOut)  # full-enclave mode: nothing crosses
        sizes = [w.call(ShardAggregate(step=0), Aggregate).size for w in workers]
        with pytest.raises(StepOutOfOrder, match="already aggregated"):
            workers[0].call(ShardAggregate(step=0), Aggregate)
        total = torch.stack([s.view((n,)).clone() for s, n in zip(hosts.slots, sizes, strict=True)]).sum(0)
        forged = total.clone()
        forged[5] += 1
        hosts.slots[0].view(tuple(forged.shape)).copy_(forged)
        with pytest.raises(AggregateTampered):
            workers[0].call(ShardApply(step=0), StepsDone)
        for s in hosts.slots:
            s.view(tuple(total.shape)).copy_(total)
        assert [w.call(ShardApply(step=0), StepsDone).next_step for w in workers] == [1, 1]
        with pytest.raises(StepOutOfOrder):
            workers[0].call(ShardEnd(job_id=job_id, backnet=b""), ShardResult)  # the job is not over
        hosts.close()
    finally:
        for w in workers:
            w.stop()


def test_a_worker_host_saves_its_backnet_before_its_enclave_seals_the_step(deployment: Deployment,
                                                                          tmp_path: Path) -> None:
    """A worker killed after its enclave sealed a checkpoint resumes there, so its host must already hold the
    BackNet of that step: every seal finds the host's checkpoint on disk (a partitioned job, one worker)."""
    worker = deployment.worker("ckpt")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        job_id, spec = deployment.job(TrainConfig(epochs=2, batch_size=32, frontnet_layers=2, checkpoint_every=4,
                                                  datasets=["alice/a0", "bob/b0"]))
        admit(deployment.leader, [worker], job_id, MICRO)
        trainer = ShardTrainer(worker, spec, job_id=job_id, rank=0, world=1, micro_batch=MICRO, workdir=tmp_path)
        sealed, missing = [], []
        relay = trainer._call

        def watch(msg, expect):  # type: ignore[no-untyped-def]
            reply = relay(msg, expect)
            if isinstance(msg, ShardApply) and reply.checkpointed:
                sealed.append(msg.step + 1)
                if not (tmp_path / f"backnet-{msg.step + 1:08d}.pt").exists():
                    missing.append(msg.step + 1)
            return reply

        trainer._call = watch  # type: ignore[method-assign]
        try:
            trainer.run_shard()
        finally:
            trainer.close()
        assert len(sealed) >= 3 and not missing, f"sealed {sealed}; the host had no BackNet at {missing}"
    finally:
        dist.destroy_process_group()
        worker.stop()


def test_a_sharded_trace_equals_the_one_worker_trace_with_proofs_that_verify(
    deployment: Deployment, trained: Trained
) -> None:
    job_id, workers, leader = trained.job_id, trained.workers, deployment.leader
    shards = [w.call(ShardLinkage(job_id=job_id), ShardLinked).shard for w in workers]
    built = leader.call(MergeLinkage(job_id=job_id, shards=shards), LinkageBuilt)
    queries = load_dataset("digits")[1].x[:6]

    def trace(holders: list[EnclaveHost]) -> dict[str, Any]:
        ciphertext, msg = deployment.sealed_trace(job_id, queries)
        plan = leader.call(FanOutTrace(ciphertext=ciphertext), TracePlan)
        for w in holders:
            hits = w.call(TraceShard(job_id=job_id, plan=plan.plan), ShardHits)
            leader.call(CollectHits(job_id=job_id, hits=hits.hits), Ok)
        return deployment.open_answer(leader.call(SealedRequest(ciphertext=ciphertext), SealedReply).ciphertext, msg)

    sharded = trace(workers)
    # The same job's log held by one worker: it rejoins, reloads the final checkpoint, recommits every block.
    (joined,) = admit(leader, workers[:1], job_id, MICRO)
    hosts = FullEnclaveHosts(workers[:1], job_id, trained.spec)
    (ready,) = hosts.start(resume_step=max(joined.checkpoints))
    hosts.close()
    assert ready.next_step == ready.total_steps
    workers[0].call(ShardEnd(job_id=job_id, backnet=b""), ShardResult)
    shard = workers[0].call(ShardLinkage(job_id=job_id), ShardLinked).shard
    assert leader.call(MergeLinkage(job_id=job_id, shards=[shard]), LinkageBuilt).statement == built.statement
    single = trace(workers[:1])
    assert uncounted(sharded) == uncounted(single), "the sharded answer is not the one-worker answer"
    assert single["traced"] == sharded["traced"] + len(queries), "the leader's ledger counts every sharded trace"
    assert all(len(a["records"]) == 5 for a in sharded["answers"])
    hashes = {
        p.qualified_id: open_container(p.container, p.data_key, participant_key=person.identity.public_key)
        for p, person in ((deployment.alice, deployment.people.alice), (deployment.bob, deployment.people.bob))
    }
    for answer in sharded["answers"]:
        for record in answer["records"]:
            proof = LinkageProof.from_dict(record)
            assert proof.statement.to_dict() == built.statement
            opened = hashes[proof.record.dataset_id]
            tree = MerkleTree(opened.record_hashes)
            assert tree.root == opened.header.merkle_root
            verify_linkage_proof(proof, leader.keys.signing, job_id=job_id, receipt_root=tree.root,
                                 receipt_proof=tree.proof(proof.record.dataset_index))
