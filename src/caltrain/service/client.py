"""The client side of the protocol: attest the enclave, send it only what its key may open, sign what a member
asks, and believe only answers the attested enclave signed for that very request."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
import torch

import caltrain.crypto.errors
from caltrain.accountability.linkage import LinkageProof, verify_linkage_proof
from caltrain.attestation import Evidence, Policy, VerifiedEnclave, Verifier
from caltrain.attestation.backends.simulated import parse_quote
from caltrain.attestation.policy import SimulatedPolicy
from caltrain.crypto.container import read_header
from caltrain.crypto.hpke import wrap_key
from caltrain.crypto.signing import verify_signature
from caltrain.enclave.authority import (
    UNSIGNED,
    authorize,
    open_sealed_reply,
    open_signed_reply,
    request_digest,
    seal_request,
)
from caltrain.enclave.consent import DataUsePolicy
from caltrain.enclave.errors import ReplyInvalid
from caltrain.enclave.protocol import EnclaveKeys, job_result_digest, wrap_context
from caltrain.enclave.wire import (
    CreateJob,
    DatasetReceipt,
    Exported,
    ExportModel,
    ForensicReply,
    IngestDataset,
    JobCreated,
    Message,
    SealedReply,
    SignedReply,
    SuspicionQuery,
    TraceQuery,
    from_json,
    to_json,
)
from caltrain.errors import CaltrainError, EnclaveUnavailable, ServiceError, TrainingError, error_class
from caltrain.service.auth import sign_request
from caltrain.service.errors import ServerUnreachable
from caltrain.service.participant import MemberHome
from caltrain.training.config import TrainConfig
from caltrain.training.core import check_spec
from caltrain.training.errors import JobRefused

R = TypeVar("R", bound=Message)

# Headers of a dataset upload (the container itself is the body).
REQUEST_ID_HEADER, SIGNATURE_HEADER = "x-caltrain-request-id", "x-caltrain-auth"
WRAPPED_KEY_HEADER, POLICY_HEADER = "x-caltrain-wrapped-key", "x-caltrain-data-policy"


@dataclass(frozen=True)
class AttestedEnclave:
    verified: VerifiedEnclave
    keys: EnclaveKeys

    def identity(self) -> dict[str, str]:
        """What a member keeps to check the enclave's signatures offline later."""
        return {"signing_key": self.keys.signing.hex(), "measurement": self.verified.measurement}


@dataclass(frozen=True)
class SignedAnswer:
    """An answer that left the enclave signed for one request: the typed reply, and the signed form to keep."""

    reply: Message
    signed: SignedReply
    enclave: AttestedEnclave

    def to_json(self) -> dict[str, Any]:
        return {"signed": to_json(self.signed), "enclave": self.enclave.identity()}


class CaltrainClient:
    """A small synchronous client. With a member's home, requests that need a member are signed by it."""

    def __init__(
        self,
        server: str,
        *,
        home: MemberHome | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout, transport=transport)
        self.home = home

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CaltrainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _member(self, what: str) -> MemberHome:
        if self.home is None:
            raise ServiceError(f"{what} needs a member's home (--home)")
        return self.home

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
            home = self._member(f"{method} {path}")
            headers.update(sign_request(home.identity, home.name, method, path, body))
        try:
            response = self._http.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"cannot reach {self._http.base_url}: {exc}") from None
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

    # --- member requests: signed for the attested enclave, answered signed (or sealed to us) ---------------

    def _authorized(self, msg: R, enclave: AttestedEnclave) -> R:
        home = self._member(msg.type_name)
        return authorize(msg, identity=home.identity, member=home.name, keys=enclave.keys)

    def _signed_answer(self, msg: Message, signed: SignedReply, enclave: AttestedEnclave, expect: type[R]) -> R:
        return open_signed_reply(
            signed, enclave_key=enclave.keys.signing, request=request_digest(msg, enclave.keys), expect=expect
        )

    def call_signed(self, path: str, msg: Message, expect: type[R], enclave: AttestedEnclave) -> tuple[R, Any]:
        """POST a member request as JSON; returns (its verified reply, the server's whole JSON answer)."""
        return self.call_signed_body(path, msg, expect, enclave, to_json)

    def call_signed_body(
        self,
        path: str,
        msg: Message,
        expect: type[R],
        enclave: AttestedEnclave,
        body: Callable[[Message], dict[str, Any]],
    ) -> tuple[R, Any]:
        """`call_signed` where the route wraps the signed request in a body of its own (`body(signed)`)."""
        msg = self._authorized(msg, enclave)
        out = self.request("POST", path, body=json.dumps(body(msg)).encode(), signed=True,
                           headers={"content-type": "application/json"})
        return self._signed_answer(msg, _signed_reply(out), enclave, expect), out

    def call_sealed(self, path: str, msg: Message, expect: type[R], enclave: AttestedEnclave) -> SignedAnswer:
        """POST a member request sealed to the enclave; the answer comes back sealed to our encryption key."""
        home = self._member(msg.type_name)
        msg = self._authorized(msg, enclave)
        envelope = seal_request(msg, enclave.keys)
        body = json.dumps({"sealed": base64.b64encode(envelope.ciphertext).decode()}).encode()
        out = self.request("POST", path, body=body, signed=True, headers={"content-type": "application/json"})
        try:
            sealed = SealedReply(ciphertext=base64.b64decode(out["sealed"], validate=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplyInvalid(f"the server's answer is not a sealed reply: {exc!r}") from None
        signed = open_sealed_reply(sealed, home.encryption, request=request_digest(msg, enclave.keys))
        return SignedAnswer(self._signed_answer(msg, signed, enclave, expect), signed, enclave)

    def submit(
        self, container: bytes, data_key: bytes, attestation: Policy, consent: DataUsePolicy
    ) -> tuple[DatasetReceipt, AttestedEnclave]:
        """Attest, wrap the data key to the enclave, sign the upload with its data-use policy, and return the
        receipt the enclave signed for exactly this upload."""
        home = self._member("submitting")
        header, _ = read_header(container)
        enclave = self.attest(Verifier(attestation))
        wrapped = wrap_key(data_key, enclave.keys.hpke, context=wrap_context(header.dataset_id, home.name))
        msg = self._authorized(
            IngestDataset(container=container, wrapped_key=wrapped, policy=consent.canonical_bytes(), auth=UNSIGNED),
            enclave,
        )
        headers = {
            **sign_request(home.identity, home.name, "POST", "/v1/datasets", container),
            REQUEST_ID_HEADER: msg.auth.request_id,
            SIGNATURE_HEADER: msg.auth.signature,
            WRAPPED_KEY_HEADER: base64.b64encode(wrapped).decode(),
            POLICY_HEADER: base64.b64encode(msg.policy).decode(),
            "content-type": "application/octet-stream",
        }
        out = self.request("POST", "/v1/datasets", body=container, headers=headers)
        return self._signed_answer(msg, _signed_reply(out), enclave, DatasetReceipt), enclave

    def check_config(self, config: TrainConfig) -> None:
        """Refuse, before any job exists, a config the enclave would refuse for its shape: an unknown model, a
        cut out of range, a model that does not take the ingested records' shape, datasets not ingested."""
        datasets = {d["dataset_id"]: d for d in self.status()["datasets"]}
        named = list(config.datasets) + list(config.eval_datasets)
        missing = [d for d in named if d not in datasets]
        if missing:
            raise JobRefused(f"dataset {missing[0]!r} has not been ingested; the server has {sorted(datasets)}")
        shapes = {tuple(d["schema"].get("shape", ())) for i, d in datasets.items() if not named or i in named}
        check_spec(config, shapes.pop() if len(shapes) == 1 else None)

    def start_job(self, config: TrainConfig, attestation: Policy) -> JobCreated:
        """Ask the enclave to admit a job; it answers, signed, with the job id it drew and what it admitted."""
        self.check_config(config)
        enclave = self.attest(Verifier(attestation))
        created, _ = self.call_signed("/v1/jobs", CreateJob(spec=config.to_dict(), auth=UNSIGNED), JobCreated,
                                      enclave)
        return created

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}", signed=True)
        return result

    def jobs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/jobs", signed=True)
        return result

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/cancel", signed=True)
        return result

    def wait_job(
        self, job_id: str, *, poll_s: float = 0.5, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled, reporting each new epoch; through server restarts."""
        reported: set[int] = set()
        while True:
            try:
                job = self.job(job_id)
            except (EnclaveUnavailable, ServerUnreachable):  # restarting: ask again
                time.sleep(max(poll_s, 1.0))
                continue
            for epoch in job["progress"]:
                if epoch.get("epoch") not in reported and on_progress:
                    on_progress(epoch)
                reported.add(epoch.get("epoch"))
            if job["state"] == "done":
                return job
            if job["state"] in ("failed", "cancelled"):
                raise TrainingError(f"job {job_id} {job['state']}" + (f": {job['error']}" if job["error"] else ""))
            time.sleep(poll_s)

    def verified_result(self, job: dict[str, Any], enclave: AttestedEnclave) -> dict[str, Any]:
        """A finished job's result (FrontNet and BackNet digests), once its enclave signature verifies."""
        result = job.get("result") or {}
        try:
            digest = job_result_digest(job["job_id"], int(result["steps"]), result["front_digest"],
                                       result["back_digest"])
            verify_signature(enclave.keys.signing, digest, bytes.fromhex(result["signature"]), what="job result")
        except (KeyError, TypeError, ValueError, caltrain.crypto.errors.CryptoError) as exc:
            raise ReplyInvalid(f"job {job.get('job_id')}: its result is not signed by the attested enclave: {exc}") \
                from None
        return dict(result)

    def backnet(self, job_id: str) -> dict[str, torch.Tensor]:
        """The trained BackNet's weights (held in the clear by the host)."""
        home, path = self._member("the BackNet"), f"/v1/jobs/{job_id}/backnet"
        headers = sign_request(home.identity, home.name, "GET", path, b"")
        try:
            response = self._http.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"cannot reach {self._http.base_url}: {exc}") from None
        if not response.is_success:
            raise ServiceError(f"BackNet of {job_id}: HTTP {response.status_code} {response.text[:200]}")
        state: dict[str, torch.Tensor] = torch.load(io.BytesIO(response.content), weights_only=True)
        return state

    def export_model(self, job_id: str, attestation: Policy) -> Exported:
        """The trained FrontNet and the job's seed, sealed by the enclave to this member's encryption key."""
        enclave = self.attest(Verifier(attestation))
        answer = self.call_sealed(f"/v1/jobs/{job_id}/export", ExportModel(job_id=job_id, auth=UNSIGNED), Exported,
                                  enclave)
        assert isinstance(answer.reply, Exported)
        return answer.reply

    def trained_model(self, job_id: str, attestation: Policy) -> tuple[TrainConfig, dict[str, torch.Tensor], int]:
        """A finished job's whole model: its public spec, its weights (the FrontNet sealed to this member by the
        enclave, the BackNet from the host) and its seed."""
        exported = self.export_model(job_id, attestation)
        front: dict[str, torch.Tensor] = torch.load(io.BytesIO(exported.front_state), weights_only=True)
        config = TrainConfig.from_dict(self.job(job_id)["config"])
        return config, {**front, **self.backnet(job_id)}, exported.seed

    def trace(
        self,
        job_id: str,
        x: np.ndarray,
        attestation: Policy,
        *,
        predicted: np.ndarray | None = None,
        k: int = 10,
        method: str = "ours",
    ) -> SignedAnswer:
        """Attest, seal the mispredicted inputs and the question to the enclave, and accept the report only if the
        enclave signed it for this question, its log statement is for this job, and every proof verifies."""
        enclave = self.attest(Verifier(attestation))
        buf = io.BytesIO()
        arrays = {"x": np.asarray(x, dtype=np.float32)}
        if predicted is not None:
            arrays["predicted"] = np.asarray(predicted, dtype=np.int64)
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        query = TraceQuery(job_id=job_id, inputs=buf.getvalue(), k=k, method=method, auth=UNSIGNED)
        answer = self.call_sealed(f"/v1/jobs/{job_id}/trace", query, ForensicReply, enclave)
        assert isinstance(answer.reply, ForensicReply)
        check_report(answer.reply.report, job_id, enclave)
        return answer

    def suspicion(self, job_id: str, attestation: Policy, *, method: str = "ours") -> dict[str, Any]:
        enclave = self.attest(Verifier(attestation))
        query = SuspicionQuery(job_id=job_id, method=method, auth=UNSIGNED)
        answer = self.call_sealed(f"/v1/jobs/{job_id}/suspicion", query, ForensicReply, enclave)
        assert isinstance(answer.reply, ForensicReply)
        return answer.reply.report

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status")
        return result


def _signed_reply(out: Any) -> SignedReply:
    try:
        return from_json(SignedReply, out["signed"])
    except (KeyError, TypeError) as exc:
        raise ReplyInvalid(f"the server's answer carries no signed reply: {exc!r}") from None


def check_report(report: dict[str, Any], job_id: str, enclave: AttestedEnclave) -> None:
    """A signed forensic report is for `job_id` and every record in it is in that job's enclave-signed log."""
    measurement = bytes.fromhex(enclave.verified.measurement)
    if report.get("job_id") != job_id:
        raise ReplyInvalid(f"the report answers job {report.get('job_id')!r}, not {job_id!r}")
    for answer in report["answers"]:
        for record in answer["records"]:
            verify_linkage_proof(
                LinkageProof.from_dict(record), enclave.keys.signing, measurement=measurement, job_id=job_id
            )


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
