"""HTTP routes for forensic queries: sealed from an auditor to the enclave, answered sealed to that auditor."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request

from caltrain.enclave.wire import SuspicionQuery, TraceQuery
from caltrain.service.openapi import SEALED_BODY, SIGNED
from caltrain.service.state import forward_sealed, server

router = APIRouter(prefix="/v1/jobs", tags=["accountability"])


@router.post("/{job_id}/trace", openapi_extra={**SEALED_BODY, **SIGNED})
async def trace(request: Request, job_id: str) -> dict[str, str]:
    """Which training instances, and which contributors, are responsible for these mispredictions (a sealed
    `TraceQuery`; the enclave's signed report comes back sealed to the auditor). A job trained on workers has its
    log sharded over them: the query fans out through them first."""
    cluster = server(request).extensions.get("cluster")
    if cluster is not None and cluster.holds(job_id):
        return await forward_sealed(request, TraceQuery, relay=partial(cluster.trace, job_id))
    return await forward_sealed(request, TraceQuery)


@router.post("/{job_id}/suspicion", openapi_extra={**SEALED_BODY, **SIGNED})
async def suspicion(request: Request, job_id: str) -> dict[str, str]:
    """Dataset-level detection: every training instance by suspicion (a sealed `SuspicionQuery`)."""
    return await forward_sealed(request, SuspicionQuery)
