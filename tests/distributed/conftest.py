"""A deployment for scale-out tests: a first enclave holding two participants' datasets, worker enclaves on the
same simulated platform, and this process as every worker's host (the hosts' all-reduce is a sum of tensors
here; the torchrun tests run the real one)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from caltrain.data.datasets import load_dataset
from caltrain.enclave.authority import UNSIGNED, open_sealed_reply, open_signed_reply, request_digest, seal_request
from caltrain.enclave.consent import ApprovedModel
from caltrain.enclave.consortium import Consortium
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    AcceptGrant,
    AdmitWorker,
    Aggregate,
    ClusterOpened,
    Exported,
    ExportModel,
    FinishCluster,
    ForensicReply,
    JoinCluster,
    Joined,
    OpenCluster,
    PeerEvidence,
    SealedReply,
    ShardAggregate,
    ShardApply,
    ShardEnd,
    ShardReady,
    ShardResult,
    ShardStart,
    StepsDone,
    TraceQuery,
    TrainResult,
    WorkerGrant,
)
from caltrain.models import build_model, candidate_cuts, resolve_model
from caltrain.training.aggregation import MODULUS, TAGS, dequantize
from caltrain.training.cluster import SIMULATED_PLATFORM_FILES
from caltrain.training.config import TrainConfig
from caltrain.training.distributed import train_reference
from tests.helpers import Packed, People, call_sealed, create_job, ingest, open_policy, pack, signed_by

BLOCKS = len(candidate_cuts(build_model("digits-cnn")))
# Dropout on both sides of every cut: its masks must be drawn per micro-batch, whichever worker computes it, for
# N workers to equal one. (BatchNorm's running statistics would drift apart between replicas: refused, below.)
DROPOUT_CNN: dict[str, Any] = {
    "name": "dropout-cnn", "input_shape": [1, 8, 8], "num_classes": 10,
    "blocks": [
        {"name": "conv1", "layers": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                                     {"type": "relu"}, {"type": "dropout2d", "p": 0.2}]},
        {"name": "conv2", "layers": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                                     {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}]},
        {"name": "flatten", "layers": [{"type": "flatten"}]},
        {"name": "fc1", "layers": [{"type": "linear", "out_features": 32}, {"type": "relu"},
                                   {"type": "dropout", "p": 0.3}]},
        {"name": "logits", "layers": [{"type": "linear", "out_features": 10}]},
    ],
}
BATCHNORM_CNN: dict[str, Any] = {
    **DROPOUT_CNN, "name": "batchnorm-cnn",
    "blocks": [{**DROPOUT_CNN["blocks"][0], "layers": [*DROPOUT_CNN["blocks"][0]["layers"], {"type": "batchnorm2d"}]},
               *DROPOUT_CNN["blocks"][1:]],
}


@dataclass
class Deployment:
    root: Path
    people: People
    leader: EnclaveHost
    consortium: Path
    alice: Packed
    bob: Packed

    @property
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The job's training records in data order (alice's, then bob's), as the enclaves stack them."""
        x = np.concatenate([self.alice.dataset.x, self.bob.dataset.x])
        y = np.concatenate([self.alice.dataset.y, self.bob.dataset.y])
        return torch.from_numpy(x), torch.from_numpy(y)

    def job(self, config: TrainConfig) -> tuple[str, TrainConfig]:
        created = create_job(self.leader, self.people.owner, config)
        return created.job_id, TrainConfig.from_dict(created.spec)

    def worker(self, name: str, *, platform: bool = True, consortium: Consortium | None = None) -> EnclaveHost:
        """A worker enclave holding copies of the containers (what a worker host brings next to it), on the first
        enclave's simulated platform unless `platform` is false."""
        state = self.root / name
        (state / "enclave").mkdir(parents=True)
        for container in (self.root / "leader" / "enclave").glob("*.ctd"):
            shutil.copyfile(container, state / "enclave" / container.name)
        if platform:
            (state / "platform").mkdir()
            for f in SIMULATED_PLATFORM_FILES:
                shutil.copyfile(self.root / "leader" / "platform" / f, state / "platform" / f)
        host = EnclaveHost(state_dir=state, config=EnclaveConfig(consortium or self.people.consortium))
        host.start()
        return host

    def export(self, job_id: str) -> tuple[dict[str, torch.Tensor], int]:
        exported = call_sealed(self.leader, ExportModel(job_id=job_id, auth=UNSIGNED), self.people.owner, Exported)
        return torch.load(io.BytesIO(exported.front_state), weights_only=True), exported.seed

    def reference(self, spec: TrainConfig, seed: int, micro_batch: int) -> torch.nn.Module:
        x, y = self.data
        return train_reference(spec.model_copy(update={"seed": seed}), x, y, micro_batch=micro_batch)

    def sealed_trace(self, job_id: str, x: np.ndarray, k: int = 5) -> tuple[bytes, TraceQuery]:
        """An auditor's trace query, signed and sealed to the first enclave: what the host relays unread."""
        buf = io.BytesIO()
        np.savez(buf, x=x)
        msg = signed_by(TraceQuery(job_id=job_id, inputs=buf.getvalue(), k=k, method="caltrain-knn", auth=UNSIGNED),
                        self.people.auditor, self.leader.keys)
        return seal_request(msg, self.leader.keys).ciphertext, msg

    def open_answer(self, sealed: bytes, msg: TraceQuery) -> dict[str, object]:
        digest = request_digest(msg, self.leader.keys)
        signed = open_sealed_reply(SealedReply(ciphertext=sealed), self.people.auditor.encryption, request=digest)
        reply = open_signed_reply(signed, enclave_key=self.leader.keys.signing, request=digest, expect=ForensicReply)
        return reply.report


@pytest.fixture(scope="module")
def deployment(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deployment")
    consortium = root / "consortium.json"
    consortium.write_bytes(people.consortium.canonical_bytes())
    leader = EnclaveHost(state_dir=root / "leader", config=EnclaveConfig(people.consortium))
    leader.start()
    train, test = load_dataset("digits")
    alice, bob = pack(train.subset(np.arange(0, 300)), people.alice, "a0"), pack(train.subset(np.arange(300, 560)),
                                                                                 people.bob, "b0")
    extra = [ApprovedModel(name=s["name"], architecture=resolve_model(s).hash) for s in (DROPOUT_CNN, BATCHNORM_CNN)]
    consent = open_policy(models=[*open_policy().models, *extra])
    for packed, person in ((alice, people.alice), (bob, people.bob)):
        ingest(leader, packed, person, consent)
    ingest(leader, pack(test.subset(np.arange(200)), people.alice, "eval"), people.alice, consent)
    yield Deployment(root, people, leader, consortium, alice, bob)
    leader.stop()


def admit(leader: EnclaveHost, workers: list[EnclaveHost], job_id: str, micro_batch: int) -> list[Joined]:
    """Mutual attestation of each worker enclave with the first enclave, relayed as a host does."""
    opened = leader.call(OpenCluster(job_id=job_id, world_size=len(workers), micro_batch=micro_batch), ClusterOpened)
    joined = []
    for rank, worker in enumerate(workers):
        evidence = worker.call(JoinCluster(job_id=job_id, rank=rank, world_size=len(workers),
                                           leader_nonce=bytes.fromhex(opened.nonces[rank])), PeerEvidence)
        grant = leader.call(admission(job_id, rank, evidence), WorkerGrant)
        joined.append(worker.call(acceptance(job_id, rank, grant), Joined))
    return joined


def admission(job_id: str, rank: int, e: PeerEvidence) -> AdmitWorker:
    return AdmitWorker(job_id=job_id, rank=rank, platform=e.platform, quote=e.quote, supporting=e.supporting,
                       keys=e.keys, nonce=e.nonce)


def acceptance(job_id: str, rank: int, g: WorkerGrant) -> AcceptGrant:
    return AcceptGrant(job_id=job_id, rank=rank, platform=g.platform, quote=g.quote, supporting=g.supporting,
                       keys=g.keys, grant=g.grant)


def full_enclave_config(**changes: object) -> TrainConfig:
    base = TrainConfig(epochs=1, batch_size=64, frontnet_layers=BLOCKS, datasets=["alice/a0", "bob/b0"],
                       checkpoint_every=3)
    return base.model_copy(update=changes)


class FullEnclaveHosts:
    """This process as the hosts of full-enclave workers: per step, every enclave's masked contribution out, their
    sum (the all-reduce) back in. Records what the hosts see."""

    def __init__(self, workers: list[EnclaveHost], job_id: str, spec: TrainConfig) -> None:
        self.workers, self.job_id = workers, job_id
        size = sum(p.numel() for p in build_model(spec.model).parameters()) + TAGS
        self.slots = [SharedTensor.create(size, "int64") for _ in workers]
        self.seen: list[tuple[int, list[torch.Tensor], torch.Tensor]] = []  # (step, contributions, their sum)

    def start(self, resume_step: int = 0) -> list[ShardReady]:
        return [w.call(ShardStart(job_id=self.job_id, ir_path="", grad_path="", label_path="", sum_path=str(s.path),
                                  slot_capacity=1, resume_step=resume_step), ShardReady)
                for w, s in zip(self.workers, self.slots, strict=True)]

    def step(self, step: int) -> list[StepsDone]:
        sizes = [w.call(ShardAggregate(step=step), Aggregate).size for w in self.workers]
        contributions = [s.view((n,)).clone() for s, n in zip(self.slots, sizes, strict=True)]
        total = torch.stack(contributions).sum(0)
        self.seen.append((step, contributions, total))
        for s in self.slots:
            s.view(tuple(total.shape)).copy_(total)
        return [w.call(ShardApply(step=step), StepsDone) for w in self.workers]

    def run(self, leader: EnclaveHost, resume_step: int = 0) -> TrainResult:
        ready = self.start(resume_step)
        for step in range(ready[0].next_step, ready[0].total_steps):
            self.step(step)
        results = [w.call(ShardEnd(job_id=self.job_id, backnet=b""), ShardResult) for w in self.workers]
        assert len({r.front_digest for r in results}) == 1, "the workers' replicas diverged"
        return leader.call(FinishCluster(job_id=self.job_id, backnet=b"", sealed_front=results[0].sealed_front),
                           TrainResult)

    def close(self) -> None:
        for s in self.slots:
            s.unlink()



def assert_uncorrelated(seen: list[torch.Tensor], truth: list[torch.Tensor]) -> None:
    """Each int64 vector a host holds, decoded as fixed point without the job key, against the true fixed-point
    values it carries: no correlation, while the same decoding of the truth is the truth (a leak would show)."""

    def decode(values: torch.Tensor) -> torch.Tensor:
        v = values % MODULUS
        return dequantize(torch.where(v >= MODULUS // 2, v - MODULUS, v))

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])

    for held, true in zip(seen, truth, strict=True):
        limit = 5 / len(true) ** 0.5
        assert abs(correlation(decode(held[: len(true)]), dequantize(true))) < limit, "the hosts see the gradient"
        assert correlation(decode(true), dequantize(true)) > 0.999
