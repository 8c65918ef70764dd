"""A world for the malicious host: a real enclave process holding two participants' datasets (with data-use
policies that narrow what may be done), a finished job with its linkage log, and a second enclave instance
(same code, same consortium, other keys) to bind signatures to."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from caltrain.data.datasets import load_dataset
from caltrain.enclave.consent import DataUsePolicy, Grantees
from caltrain.enclave.consortium import Role
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import BuildLinkage, LinkageBuilt
from caltrain.training.config import TrainConfig
from caltrain.training.partitioned import PartitionedTrainer
from tests.helpers import Packed, People, create_job, ingest, open_policy, pack


@dataclass
class World:
    host: EnclaveHost
    other: EnclaveHost  # another enclave instance: what a signature bound elsewhere looks like
    people: People
    state: Path
    job_id: str
    alice_data: Packed
    bob_data: Packed
    query_x: np.ndarray

    def inputs(self, n: int = 3) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, x=self.query_x[:n])
        return buf.getvalue()


def alice_policy() -> DataUsePolicy:
    """alice's consent: two blocks inside at least, no evaluation use, only the auditor role traces, only the
    member `owner` may receive the FrontNet or deploy."""
    return open_policy(
        min_frontnet_blocks=2,
        evaluation=False,
        frontnet_recipients=Grantees(members=["owner"]),
        deployers=Grantees(members=["owner"]),
        tracers=Grantees(roles=[Role.AUDITOR]),
    )


@pytest.fixture(scope="module")
def world(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("target")
    host = EnclaveHost(state_dir=state, config=EnclaveConfig(people.consortium))
    other = EnclaveHost(state_dir=tmp_path_factory.mktemp("other"), config=EnclaveConfig(people.consortium))
    host.start()
    other.start()
    train, test = load_dataset("digits")
    alice_data = pack(train.subset(np.arange(0, 300)), people.alice, "a0")
    bob_data = pack(train.subset(np.arange(300, 600)), people.bob, "b0")
    ingest(host, alice_data, people.alice, alice_policy())
    ingest(host, bob_data, people.bob, open_policy(evaluation=False))
    created = create_job(host, people.owner, TrainConfig(epochs=1, batch_size=50, datasets=["alice/a0", "bob/b0"]))
    trainer = PartitionedTrainer(host, TrainConfig.from_dict(created.spec), job_id=created.job_id,
                                 workdir=tmp_path_factory.mktemp("work"))
    trainer.run()
    trainer.close()
    host.call(BuildLinkage(job_id=created.job_id), LinkageBuilt)
    yield World(host, other, people, state, created.job_id, alice_data, bob_data, test.x[:10])
    other.stop()
    host.stop()
