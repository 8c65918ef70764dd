"""Real workers: processes started by torchrun (elastic agent, c10d rendezvous), each with its own enclave,
joined in a gloo process group on loopback. A partitioned job on two workers trains the one-process fixed-point
reference of its seed bit for bit (FrontNet and BackNet), and so does a job on one worker: N workers = 1 worker.
Killing a worker mid-epoch fails the step; the agent restarts the workers, they re-attest, and the job resumes
from the newest checkpoint all of them hold, to the same final weights. A trace through the cluster fans out to
both workers and its proofs verify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from caltrain.accountability.linkage import LinkageProof, verify_linkage_proof
from caltrain.data.datasets import load_dataset
from caltrain.enclave.consortium import Consortium
from caltrain.errors import TrainingError
from caltrain.models import partition
from caltrain.training.cluster import (
    SIMULATED_PLATFORM_FILES,
    Cluster,
    ClusterConfig,
    ClusterRun,
    WorkerNotAdmitted,
)
from caltrain.training.config import TrainConfig
from caltrain.training.core import state_digest
from tests.distributed.conftest import Deployment

MICRO = 8
CONFIG = TrainConfig(epochs=2, batch_size=32, frontnet_layers=2, datasets=["alice/a0", "bob/b0"],
                     eval_datasets=["alice/eval"], checkpoint_every=4)


def cluster(deployment: Deployment, workers: int) -> Cluster:
    c = Cluster(deployment.leader, ClusterConfig(state_dir=deployment.root / "leader",
                                                 consortium=deployment.consortium, workers=workers, micro_batch=MICRO))
    c.start()
    return c


@pytest.fixture(scope="module")
def two(deployment: Deployment) -> Iterator[Cluster]:
    c = cluster(deployment, 2)
    yield c
    c.stop()


def assert_reference(deployment: Deployment, job_id: str, spec: TrainConfig, run: ClusterRun) -> None:
    """The job's FrontNet (exported to the owner with the seed) and BackNet (by the digest the first enclave
    signed) are the one-process fixed-point reference's, bit for bit."""
    front, seed = deployment.export(job_id)
    reference = deployment.reference(spec, seed, MICRO)
    part = partition(reference, spec.frontnet_layers)
    expected = part.front.state_dict()
    assert front.keys() == expected.keys() and all(bool((front[k] == expected[k]).all()) for k in front)
    assert run.result.front_digest == state_digest(part.front)
    assert run.result.back_digest == state_digest(part.back)


def test_two_workers_train_the_reference_and_trace_through_both(deployment: Deployment, two: Cluster) -> None:
    job_id, spec = deployment.job(CONFIG)
    epochs: list[dict[str, object]] = []
    run = two.train(job_id, spec, progress=epochs.append)
    assert run.attempts == 1 and [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["eval_accuracy"] is not None
    assert_reference(deployment, job_id, spec, run)
    ciphertext, msg = deployment.sealed_trace(job_id, load_dataset("digits")[1].x[:4], k=3)
    report = deployment.open_answer(two.trace(job_id, ciphertext), msg)
    assert report["statement"] == run.linkage.statement
    for answer in report["answers"]:  # type: ignore[attr-defined]
        assert len(answer["records"]) == 3
        for record in answer["records"]:
            verify_linkage_proof(LinkageProof.from_dict(record), deployment.leader.keys.signing, job_id=job_id)


def test_killing_a_worker_mid_epoch_resumes_to_the_same_weights(deployment: Deployment, two: Cluster) -> None:
    job_id, spec = deployment.job(CONFIG)
    gen = two.generation()
    victim = two.workers(gen)[1]["pid"]
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(run=two.train(job_id, spec)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # step 9 of 18: mid-epoch 1, the last checkpoint at step 8
        key = f"step/{job_id}"
        if two.store.check([key]) and int(two.store.get(key)) >= 9:
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.01)
    thread.join(timeout=600)
    run = outcome["run"]
    assert isinstance(run, ClusterRun) and run.attempts == 2, "the step did not fail, or the job did not resume"
    assert json.loads(two.store.get("generation"))["token"] != gen
    assert_reference(deployment, job_id, spec, run)


def test_one_worker_trains_the_reference_too(deployment: Deployment, two: Cluster) -> None:
    two.stop()
    one = cluster(deployment, 1)
    try:
        job_id, spec = deployment.job(CONFIG)
        assert_reference(deployment, job_id, spec, one.train(job_id, spec))
    finally:
        one.stop()



def test_a_job_whose_worker_is_not_one_of_ours_fails_and_says_why(deployment: Deployment) -> None:
    """Workers serving another consortium (another measurement): the first enclave refuses them, no key moves,
    the job fails naming the rank and the check."""
    people = deployment.people
    state = deployment.root / "strangers"
    (state / "platform").mkdir(parents=True)
    for name in SIMULATED_PLATFORM_FILES:  # on the deployment's platform
        shutil.copyfile(deployment.root / "leader" / "platform" / name, state / "platform" / name)
    other = state / "consortium.json"
    other.write_bytes(Consortium((*people.consortium.members, people.outsider.member()),
                                 people.consortium.schema).canonical_bytes())
    stranger = Cluster(deployment.leader, ClusterConfig(state_dir=state, consortium=other, workers=1,
                                                        micro_batch=MICRO))
    stranger.start()
    try:
        job_id, spec = deployment.job(CONFIG)
        with pytest.raises(WorkerNotAdmitted, match="worker 0 refused: MeasurementMismatch"):
            stranger.train(job_id, spec)
    finally:
        stranger.stop()
    # The stranger on one of our worker's sealed state: that state's sealing key is not its own; it cannot start,
    # and the server hears why instead of waiting for it.
    ours = deployment.worker("squatted/workers/local-0")
    ours.stop()
    shutil.copytree(state / "platform", deployment.root / "squatted" / "platform")
    squatter = Cluster(deployment.leader, ClusterConfig(state_dir=deployment.root / "squatted", consortium=other,
                                                        workers=1))
    squatter.start()
    try:
        with pytest.raises(TrainingError, match="a worker cannot start: rank 0: SealingError"):
            squatter.generation()
    finally:
        squatter.stop()
