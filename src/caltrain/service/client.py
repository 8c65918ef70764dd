"""The client side of the protocol: attest the enclave, then send it only what its key may open."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import torch

import caltrain.attestation.errors
import caltrain.crypto.errors
import caltrain.enclave.consortium
import caltrain.enclave.errors  # noqa: F401  (error classes the server may name)
from caltrain.accountability.linkage import LinkageProof, verify_linkage_proof
from caltrain.attestation import Evidence, Policy, VerifiedEnclave, Verifier
from caltrain.attestation.backends.simulated import parse_quote
from caltrain.attestation.policy import SimulatedPolicy
from caltrain.crypto.container import read_header
from caltrain.crypto.hpke import HpkeKeyPair, seal_to, wrap_key
from caltrain.crypto.signing import Identity
from caltrain.enclave.protocol import EnclaveKeys, export_info, submission_digest, trace_info, wrap_context
from caltrain.errors import CaltrainError, ServiceError, TrainingError, error_class
from caltrain.service.auth import sign_request
from caltrain.training.config import TrainConfig


@dataclass(frozen=True)
class AttestedEnclave:
    verified: VerifiedEnclave
    keys: EnclaveKeys


class CaltrainClient:
    """A small synchronous client. With an identity, requests that need a member are signed."""

    def __init__(
        self,
        server: str,
        *,
        identity: Identity | None = None,
        name: str | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout, transport=transport)
        self._identity = identity
        self._name = name

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CaltrainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        signed: bool = False,
    ) -> Any:
        """One request; a caltrain error on the server is re-raised here as the same class."""
        headers = dict(headers or {})
        if signed:
            if self._identity is None or self._name is None:
                raise ServiceError(f"{method} {path} needs a member identity (--home)")
            headers.update(sign_request(self._identity, self._name, method, path, body))
        try:
            response = self._http.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {self._http.base_url}: {exc}") from None
        if response.is_success:
            return response.json()
        try:
            err = response.json()
            cls = error_class(str(err["error"]))
            detail = str(err["detail"])
        except (ValueError, KeyError, TypeError):
            raise ServiceError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:200]}") from None
        raise (ServiceError if cls is CaltrainError else cls)(detail)

    def evidence(self, nonce: bytes) -> Evidence:
        data = self.request("GET", f"/v1/attestation?nonce={nonce.hex()}")
        fields = ("platform", "quote", "enclave_public_key", "nonce", "supporting")
        return Evidence.from_json({k: data.get(k) for k in fields})

    def attest(self, verifier: Verifier) -> AttestedEnclave:
        """Fresh nonce, evidence, verification under the verifier's policy; raises unless all checks pass."""
        evidence = self.evidence(verifier.new_nonce())
        verified = verifier.verify(evidence)
        return AttestedEnclave(verified, EnclaveKeys.from_bytes(verified.public_key))

    def submit(self, container: bytes, data_key: bytes, policy: Policy) -> dict[str, Any]:
        """Attest, wrap the data key to the enclave, sign the submission, upload the container."""
        if self._identity is None or self._name is None:
            raise ServiceError("submitting needs the participant's identity")
        header, _ = read_header(container)
        enclave = self.attest(Verifier(policy))
        wrapped = wrap_key(data_key, enclave.keys.hpke, context=wrap_context(header.dataset_id, self._name))
        signature = self._identity.sign(submission_digest(container, wrapped, enclave.keys))
        headers = {
            "x-caltrain-participant": self._name,
            "x-caltrain-wrapped-key": base64.b64encode(wrapped).decode(),
            "x-caltrain-signature": base64.b64encode(signature).decode(),
            "content-type": "application/octet-stream",
        }
        result: dict[str, Any] = self.request("POST", "/v1/datasets", body=container, headers=headers)
        # The attested enclave identity, kept by the participant to check linkage proofs offline later.
        result["enclave"] = {"signing_key": enclave.keys.signing.hex(), "measurement": enclave.verified.measurement}
        return result

    def start_job(self, config: TrainConfig) -> dict[str, Any]:
        body = json.dumps(config.to_dict()).encode()
        result: dict[str, Any] = self.request(
            "POST", "/v1/jobs", body=body, headers={"content-type": "application/json"}, signed=True
        )
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}")
        return result

    def wait_job(
        self, job_id: str, *, poll_s: float = 0.5, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll until the job is done or failed, reporting each new epoch."""
        reported = 0
        while True:
            job = self.job(job_id)
            for epoch in job["progress"][reported:]:
                if on_progress:
                    on_progress(epoch)
            reported = len(job["progress"])
            if job["state"] == "done":
                return job
            if job["state"] == "failed":
                raise TrainingError(f"job {job_id} failed: {job['error']}")
            time.sleep(poll_s)

    def backnet(self, job_id: str) -> dict[str, torch.Tensor]:
        """The trained BackNet's weights (held in the clear by the host)."""
        try:
            response = self._http.get(f"/v1/jobs/{job_id}/backnet")
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {self._http.base_url}: {exc}") from None
        if not response.is_success:
            raise ServiceError(f"BackNet of {job_id}: HTTP {response.status_code} {response.text[:200]}")
        state: dict[str, torch.Tensor] = torch.load(io.BytesIO(response.content), weights_only=True)
        return state

    def export_frontnet(self, job_id: str) -> dict[str, torch.Tensor]:
        """Ask the enclave for the trained FrontNet, encrypted to a key generated here and now."""
        recipient = HpkeKeyPair.generate()
        body = json.dumps({"recipient_key": recipient.public_bytes.hex()}).encode()
        out = self.request("POST", f"/v1/jobs/{job_id}/export", body=body, signed=True)
        raw = recipient.open(base64.b64decode(out["ciphertext"]), export_info(job_id))
        state: dict[str, torch.Tensor] = torch.load(io.BytesIO(raw), weights_only=True)
        return state

    def trace(
        self,
        job_id: str,
        x: np.ndarray,
        policy: Policy,
        *,
        predicted: np.ndarray | None = None,
        k: int = 10,
        method: str = "ours",
    ) -> dict[str, Any]:
        """Attest, encrypt the mispredicted inputs to the enclave, ask who is responsible, check every proof."""
        enclave = self.attest(Verifier(policy))
        buf = io.BytesIO()
        if predicted is None:
            np.savez(buf, x=np.asarray(x, dtype=np.float32))
        else:
            np.savez(buf, x=np.asarray(x, dtype=np.float32), predicted=np.asarray(predicted, dtype=np.int64))
        ciphertext = seal_to(enclave.keys.hpke, buf.getvalue(), trace_info(job_id))
        body = json.dumps({"ciphertext": base64.b64encode(ciphertext).decode(), "k": k, "method": method}).encode()
        report: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/trace", body=body, signed=True)
        measurement = bytes.fromhex(enclave.verified.measurement)
        for answer in report["answers"]:
            for record in answer["records"]:
                verify_linkage_proof(LinkageProof.from_dict(record), enclave.keys.signing, measurement=measurement)
        return report

    def suspicion(self, job_id: str, *, method: str = "ours") -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/suspicion?method={method}", signed=True)
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status")
        return result


def draft_policy(evidence: Evidence) -> Policy:
    """A policy pinning what this evidence shows, for a person to review (compare with `caltrain measure`)."""
    if evidence.platform != "simulated":
        raise ServiceError(
            f"drafting a {evidence.platform} policy from evidence is not automatic: write it from the expected "
            "measurement (see the README, 'Running on real hardware')"
        )
    body, _, _ = parse_quote(evidence.quote)
    return Policy(
        platforms=["simulated"],
        measurements=[body["measurement"]],
        allow_simulated=True,
        simulated=SimulatedPolicy(platform_keys=[body["platform_key"]]),
    )


def pretty(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
