"""A participant's client accepts a policy file for every real platform: it attests a server that serves real
recorded evidence (an SGX, TDX or SNP machine's quote), passes every platform check, and stops at key binding,
since a recorded quote cannot bind this run's enclave key and nonce. The server here replays the recording:
that is the part of a real TEE that cannot run on this machine."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from caltrain.attestation import NonceTracker, Policy, Verifier
from caltrain.attestation.errors import KeyNotBound, MeasurementMismatch
from caltrain.service.client import CaltrainClient
from tests.attestation.conftest import SAMPLES, Sample


def replaying_server(sample: Sample) -> httpx.MockTransport:
    evidence = sample.evidence()

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/attestation"
        nonce = bytes.fromhex(request.url.params["nonce"])
        body = {
            **evidence.to_json(),
            "nonce": base64.b64encode(nonce).decode(),
            "enclave_public_key": base64.b64encode(bytes(64)).decode(),
        }
        return httpx.Response(200, json={**body, "measurement": sample.measurement, "simulated": False})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_policy_file_for_each_real_platform_is_accepted_by_the_client(sample: Sample, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    sample.policy().save(path)
    policy = Policy.load(path)  # what `caltrain submit --policy` does
    assert json.loads(path.read_text())["platforms"] == [sample.platform]
    with CaltrainClient("http://tee.invalid", transport=replaying_server(sample)) as client:
        with pytest.raises(KeyNotBound):
            client.attest(Verifier(policy, nonces=NonceTracker(), now=lambda: sample.now))
        other = Policy.from_dict({**policy.to_dict(), "measurements": ["00" * len(bytes.fromhex(sample.measurement))]})
        with pytest.raises(MeasurementMismatch):
            client.attest(Verifier(other, nonces=NonceTracker(), now=lambda: sample.now))


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.platform == "tdx"], ids=lambda s: s.name)
def test_the_client_refuses_the_right_mrtd_with_another_rtmr(sample: Sample, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    sample.policy(rtmrs={**sample.section["rtmrs"], 2: "11" * 48}).save(path)  # type: ignore[dict-item]
    client = CaltrainClient("http://tee.invalid", transport=replaying_server(sample))
    with client, pytest.raises(MeasurementMismatch, match="RTMR2"):
        client.attest(Verifier(Policy.load(path), nonces=NonceTracker(), now=lambda: sample.now))
