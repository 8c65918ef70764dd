"""HTTP routes for forensic queries (auditor role): trace mispredictions, rank all instances by suspicion."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from caltrain.enclave.consortium import Role
from caltrain.enclave.wire import ForensicReply, SuspicionQuery, TraceQuery
from caltrain.errors import ServiceError
from caltrain.service.state import authenticated, server

router = APIRouter(prefix="/v1/jobs", tags=["accountability"])


class TraceRequest(BaseModel):
    ciphertext: str = Field(description="HPKE ciphertext (base64) to the enclave key of an .npz with x, predicted")
    k: int = Field(default=10, ge=1, le=100)
    method: str = "ours"


def _parse(body: bytes, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(json.loads(body))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ServiceError(f"malformed request body: {exc}") from None


@router.post("/{job_id}/trace")
async def trace(request: Request, job_id: str) -> dict[str, Any]:
    """Which training instances, and which contributors, are responsible for these mispredictions."""
    await authenticated(request, Role.AUDITOR)
    req = _parse(await request.body(), TraceRequest)
    try:
        ciphertext = base64.b64decode(req.ciphertext, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("ciphertext is not valid base64") from None
    msg = TraceQuery(job_id=job_id, ciphertext=ciphertext, k=req.k, method=req.method)
    reply = await run_in_threadpool(server(request).enclave.call, msg, ForensicReply)
    return reply.report


@router.post("/{job_id}/suspicion")
async def suspicion(request: Request, job_id: str, method: str = "ours") -> dict[str, Any]:
    """Dataset-level detection: every training instance by suspicion, no misprediction needed."""
    await authenticated(request, Role.AUDITOR)
    msg = SuspicionQuery(job_id=job_id, method=method)
    reply = await run_in_threadpool(server(request).enclave.call, msg, ForensicReply)
    return reply.report
