"""HTTP routes of the ingestion protocol (attestation, dataset upload, status)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from caltrain.enclave.consortium import Role
from caltrain.enclave.wire import (
    Authorization,
    DatasetList,
    DatasetReceipt,
    EvidenceReply,
    GetEvidence,
    IngestDataset,
    ListDatasets,
)
from caltrain.errors import ServiceError
from caltrain.service.state import server, signed_json

MAX_NONCE_BYTES = 64
MAX_UPLOAD_BYTES = 4 << 30

router = APIRouter(prefix="/v1")


class EvidenceOut(BaseModel):
    platform: str
    quote: str
    enclave_public_key: str
    nonce: str
    supporting: dict[str, str]
    measurement: str
    simulated: bool


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(f"{what} is not valid base64") from None


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/attestation", response_model=EvidenceOut)
def attestation(request: Request, nonce: str = Query(description="verifier's fresh nonce, hex")) -> EvidenceOut:
    """Evidence that binds the enclave's public keys to the caller's nonce."""
    try:
        raw = bytes.fromhex(nonce)
    except ValueError:
        raise ServiceError("nonce must be hex") from None
    if not 16 <= len(raw) <= MAX_NONCE_BYTES:
        raise ServiceError(f"nonce must be 16..{MAX_NONCE_BYTES} bytes")
    state = server(request)
    reply = state.enclave.call(GetEvidence(nonce=raw), EvidenceReply)
    ready = state.enclave.ready
    assert ready is not None
    return EvidenceOut(
        platform=reply.platform,
        quote=base64.b64encode(reply.quote).decode(),
        enclave_public_key=base64.b64encode(state.enclave.keys.to_bytes()).decode(),
        nonce=base64.b64encode(raw).decode(),
        supporting=reply.supporting,
        measurement=ready.measurement,
        simulated=ready.simulated,
    )


@router.post("/datasets", status_code=201)
async def upload_dataset(
    request: Request,
    x_caltrain_member: str = Header(description="submitting participant's name"),
    x_caltrain_request_id: str = Header(description="single-use request id (hex) the participant signed"),
    x_caltrain_auth: str = Header(description="participant's Ed25519 signature of the upload (hex), see docs"),
    x_caltrain_wrapped_key: str = Header(description="container data key, HPKE-wrapped to the enclave, base64"),
    x_caltrain_data_policy: str = Header(description="the dataset's data-use policy, canonical JSON, base64"),
) -> dict[str, Any]:
    """Upload one encrypted container (request body) with its signed data-use policy. All or nothing: on any
    error nothing is ingested. The answer carries the receipt the enclave signed for exactly this upload."""
    state = server(request)
    state.consortium.member(x_caltrain_member, role=Role.PARTICIPANT)  # courtesy: refuse before reading the body
    body = await request.body()
    if len(body) > MAX_UPLOAD_BYTES:
        raise ServiceError(f"upload is {len(body)} bytes; the limit is {MAX_UPLOAD_BYTES}")
    msg = IngestDataset(
        container=body,
        wrapped_key=_b64(x_caltrain_wrapped_key, "wrapped key"),
        policy=_b64(x_caltrain_data_policy, "data-use policy"),
        auth=Authorization(member=x_caltrain_member, request_id=x_caltrain_request_id, signature=x_caltrain_auth),
    )
    state.courtesy_check(msg)
    signed, receipt = await run_in_threadpool(state.enclave.call_member, msg, DatasetReceipt)
    return signed_json(signed, receipt)


@router.get("/status")
def status(request: Request) -> dict[str, Any]:
    """The enclave's identity and the datasets ingested (participant, record count, commitment root, policy
    digest): what the containers' plaintext headers show anyway. Jobs are listed to members only (/v1/jobs)."""
    state = server(request)
    ready = state.enclave.ready
    assert ready is not None
    datasets = state.enclave.call(ListDatasets(), DatasetList).datasets
    return {
        "enclave": {"platform": ready.platform, "measurement": ready.measurement, "simulated": ready.simulated},
        "datasets": datasets,
    }
