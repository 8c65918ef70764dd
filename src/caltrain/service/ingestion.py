"""HTTP routes of the ingestion protocol (attestation, dataset upload, status)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from caltrain.enclave.consortium import Role
from caltrain.enclave.wire import DatasetInfo, DatasetList, EvidenceReply, GetEvidence, IngestDataset, ListDatasets
from caltrain.errors import ServiceError
from caltrain.service.state import server

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
    x_caltrain_participant: str = Header(description="submitting participant's name"),
    x_caltrain_wrapped_key: str = Header(description="container data key, HPKE-wrapped to the enclave, base64"),
    x_caltrain_signature: str = Header(description="participant's Ed25519 signature of the submission, base64"),
) -> dict[str, Any]:
    """Upload one encrypted container (request body). All or nothing: on any error nothing is ingested."""
    state = server(request)
    state.consortium.member(x_caltrain_participant, role=Role.PARTICIPANT)
    body = await request.body()
    if len(body) > MAX_UPLOAD_BYTES:
        raise ServiceError(f"upload is {len(body)} bytes; the limit is {MAX_UPLOAD_BYTES}")
    msg = IngestDataset(
        participant=x_caltrain_participant,
        container=body,
        wrapped_key=_b64(x_caltrain_wrapped_key, "wrapped key"),
        signature=_b64(x_caltrain_signature, "signature"),
    )
    info = await run_in_threadpool(state.enclave.call, msg, DatasetInfo)
    return {
        "dataset_id": info.dataset_id,
        "participant": info.participant,
        "record_count": info.record_count,
        "merkle_root": info.merkle_root,
        "schema": info.schema,
    }


@router.get("/status")
def status(request: Request) -> dict[str, Any]:
    """Datasets ingested (participant, record count, commitment root) and the enclave's identity."""
    state = server(request)
    ready = state.enclave.ready
    assert ready is not None
    datasets = state.enclave.call(ListDatasets(), DatasetList).datasets
    jobs = state.extensions.get("jobs")
    return {
        "enclave": {"platform": ready.platform, "measurement": ready.measurement, "simulated": ready.simulated},
        "datasets": datasets,
        "jobs": [j.to_json() for j in jobs.jobs.values()] if jobs else [],
    }
