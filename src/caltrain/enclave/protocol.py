"""Digests both sides of the boundary sign or bind: defined once, used by the participant and the enclave."""

from __future__ import annotations

from dataclasses import dataclass

from caltrain.crypto.errors import InvalidKey
from caltrain.crypto.hashing import tagged_hash

KEY_BYTES = 32


@dataclass(frozen=True)
class EnclaveKeys:
    """The two public keys an enclave generates inside and binds in its evidence (HPKE, then Ed25519)."""

    hpke: bytes
    signing: bytes

    def to_bytes(self) -> bytes:
        return self.hpke + self.signing

    @classmethod
    def from_bytes(cls, data: bytes) -> EnclaveKeys:
        if len(data) != 2 * KEY_BYTES:
            raise InvalidKey(f"enclave public keys must be {2 * KEY_BYTES} bytes, got {len(data)}")
        return cls(data[:KEY_BYTES], data[KEY_BYTES:])


def wrap_context(dataset_id: str, participant: str) -> bytes:
    """HPKE `info` for a container's data key: the key opens only that dataset of that participant."""
    return tagged_hash("caltrain/data-key/v1", dataset_id.encode(), participant.encode())


def job_result_digest(job_id: str, steps: int, front_digest: str, back_digest: str) -> bytes:
    """What the enclave signs when a job finishes: these exact FrontNet and BackNet weights came out of this job.
    A model owner checks it before signing a deployment, and signs the FrontNet digest into the deployment."""
    return tagged_hash(
        "caltrain/job-result/v1", job_id.encode(), str(steps).encode(), front_digest.encode(), back_digest.encode()
    )


def weights_info(model_id: str, architecture_hash: str, m: int, ternary: bool) -> bytes:
    """HPKE `info` of an owner's sealed FrontNet: it opens only as this model id, architecture, cut and mode."""
    return tagged_hash(
        "caltrain/deploy-weights/v1",
        model_id.encode(),
        architecture_hash.encode(),
        str(m).encode(),
        str(int(ternary)).encode(),
    )


def session_info(session_id: str) -> bytes:
    """HPKE `info` of an inference session key: it opens only as the key of this session id."""
    return tagged_hash("caltrain/infer-session/v1", session_id.encode())


def request_key_info(session_id: str) -> bytes:
    """HKDF `info` of a session's request key (the session key itself only ever feeds HKDF)."""
    return tagged_hash("caltrain/infer-request-key/v1", session_id.encode())


def request_aad(model_id: str, session_id: str, counter: int, top_k: int) -> bytes:
    """Associated data of a request: it opens only for this model, session, counter and top-k."""
    return tagged_hash(
        "caltrain/infer-request/v2", model_id.encode(), session_id.encode(), counter.to_bytes(8, "big"),
        top_k.to_bytes(2, "big"),
    )


def response_context(model_id: str, session_id: str, counter: int) -> bytes:
    """HKDF `info` of an answer's key and the answer's associated data: it belongs to this one request."""
    return tagged_hash("caltrain/infer-response/v2", model_id.encode(), session_id.encode(), counter.to_bytes(8, "big"))
