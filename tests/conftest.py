from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from tests.helpers import People, make_people

# One thread per test process: two cores, and oversubscription makes small convolutions crawl (MACHINE-NOTES).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def people() -> People:
    return make_people()


@pytest.fixture(scope="session")
def enclave(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveHost]:
    """One simulated enclave process for the session (starting one imports torch: ~2 s)."""
    host = EnclaveHost(state_dir=tmp_path_factory.mktemp("enclave-state"), config=EnclaveConfig(people.consortium))
    host.start()
    yield host
    host.stop()


@pytest.fixture
def fresh_enclave(people: People, tmp_path: Path) -> Iterator[EnclaveHost]:
    host = EnclaveHost(state_dir=tmp_path / "state", config=EnclaveConfig(people.consortium))
    host.start()
    yield host
    host.stop()


# The machine is shared and noisy: time limits per example would make property tests flaky, not stricter.
settings.register_profile("caltrain", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("caltrain")
