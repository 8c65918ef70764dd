"""HTTP routes of the ingestion protocol (attestation, dataset upload, status)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
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
from caltrain.errors import ServiceError, TooManyUploads
from caltrain.service.openapi import SIGNED, binary_body
from caltrain.service.state import server, signed_json

MAX_NONCE_BYTES = 64
MAX_CONCURRENT_UPLOADS = 2
UPLOADS = "uploads"  # under the state directory: containers being received (emptied at every start)

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
def health(request: Request) -> JSONResponse:
    """What is up and what is down, truthfully: 200 only while the enclave serves and what it served before a
    restart is served again; 503 with Retry-After while it restarts (or after it failed to start), naming why."""
    state = server(request)
    enclave = state.enclave
    ok = enclave.status == "up" and not state.extensions["deployments"].restoring
    body: dict[str, Any] = {
        "status": "ok" if ok else "degraded",
        "enclave": {"status": enclave.status, "restarts": enclave.restarts, "error": enclave.last_error},
        **{name: part.health() for name, part in state.extensions.items() if hasattr(part, "health")},
    }
    if ok:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


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


class Uploads:
    """Containers being received: streamed to files under the state directory, at most `limit` at once."""

    def __init__(self, directory: Path, limit: int = MAX_CONCURRENT_UPLOADS) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():  # what a crash left mid-upload: never acknowledged, never ingested
            stale.unlink()
        self.limit = limit
        self.active = 0

    def health(self) -> dict[str, int]:
        return {"active": self.active, "limit": self.limit}


@router.post("/datasets", status_code=201, openapi_extra={**binary_body("the encrypted container (.ctd)"), **SIGNED})
async def upload_dataset(
    request: Request,
    x_caltrain_request_id: str = Header(description="single-use request id (hex) the participant signed for the "
                                        "enclave"),
    x_caltrain_auth: str = Header(description="the participant's Ed25519 signature of the upload for the enclave "
                                  "(hex): `caltrain.enclave.authority.authorize` over the IngestDataset message"),
    x_caltrain_wrapped_key: str = Header(description="container data key, HPKE-wrapped to the enclave, base64"),
    x_caltrain_data_policy: str = Header(description="the dataset's data-use policy, canonical JSON, base64"),
) -> dict[str, Any]:
    """Upload one encrypted container (request body) with its signed data-use policy. All or nothing: on any
    error nothing is ingested. The answer carries the receipt the enclave signed for exactly this upload.

    The HTTP request is signed by the participant (checked from the headers before the body is read); the body is
    streamed to disk, at most a few uploads at once (429 with Retry-After beyond)."""
    state = server(request)
    member, digest = state.auth.authenticate(
        request.method, request.url.path, request.headers, roles=frozenset({Role.PARTICIPANT})
    )
    uploads: Uploads = state.extensions["uploads"]
    if uploads.active >= uploads.limit:
        raise TooManyUploads(f"{uploads.active} uploads are being received; the server takes {uploads.limit} at once")
    uploads.active += 1
    fd, name = tempfile.mkstemp(dir=uploads.directory, suffix=".part")
    spool = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                digest.update(chunk)
                f.write(chunk)
        digest.check()
        container = await asyncio.to_thread(spool.read_bytes)
    finally:
        uploads.active -= 1
        spool.unlink(missing_ok=True)
    msg = IngestDataset(
        container=container,
        wrapped_key=_b64(x_caltrain_wrapped_key, "wrapped key"),
        policy=_b64(x_caltrain_data_policy, "data-use policy"),
        auth=Authorization(member=member.name, request_id=x_caltrain_request_id, signature=x_caltrain_auth),
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
