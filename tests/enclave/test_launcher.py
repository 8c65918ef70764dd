"""The launcher transport (what Gramine needs: fixed argv, no inherited fds): the enclave connects back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from caltrain.attestation.errors import NoTeeAvailable
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import DatasetList, DatasetReceipt, ListDatasets
from caltrain.errors import EnclaveError
from caltrain.service.loopback import free_port
from tests.helpers import People, digits_shares, pack, submission


def test_enclave_launched_with_fixed_argv_connects_back(people: People, tmp_path: Path) -> None:
    port = free_port()
    launcher = [
        sys.executable,
        "-m",
        "caltrain.enclave.main",
        "--connect",
        f"127.0.0.1:{port}",
        "--state",
        str(tmp_path),
        "--backend",
        "simulated",
    ]
    with EnclaveHost(
        state_dir=tmp_path, config=EnclaveConfig(people.consortium), launcher=launcher, listen_port=port
    ) as host:
        packed = pack(digits_shares(4)[0], people.alice, "alice-launched")
        host.call_member(submission(packed, people.alice, host.keys), DatasetReceipt)
        assert [d["dataset_id"] for d in host.call(ListDatasets(), DatasetList).datasets] == ["alice/alice-launched"]


def test_launcher_that_never_connects_times_out(people: People, tmp_path: Path) -> None:
    host = EnclaveHost(
        state_dir=tmp_path,
        config=EnclaveConfig(people.consortium),
        launcher=[sys.executable, "-c", "import time; time.sleep(30)"],
        listen_port=free_port(),
        start_timeout_s=1,
    )
    with pytest.raises(EnclaveError, match="did not connect"):
        host.start()


def test_other_backends_fail_closed_without_their_tee(people: People, tmp_path: Path) -> None:
    """Asked for SGX outside Gramine, the enclave refuses to start instead of falling back to simulation."""
    for backend in ("sgx-dcap", "tdx"):
        host = EnclaveHost(state_dir=tmp_path / backend, config=EnclaveConfig(people.consortium), backend=backend)
        with pytest.raises((NoTeeAvailable, EnclaveError), match=r"Gramine|confidential VM"):
            host.start()
