"""HTTP routes for partitioned training jobs."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from caltrain.enclave.wire import Exported, ExportFrontNet
from caltrain.errors import ServiceError
from caltrain.service.jobs import JobManager
from caltrain.service.state import authenticated, server
from caltrain.training.config import TrainConfig

router = APIRouter(prefix="/v1/jobs", tags=["training"])


def jobs(request: Request) -> JobManager:
    manager = server(request).extensions["jobs"]
    assert isinstance(manager, JobManager)
    return manager


@router.post("", status_code=202)
async def start_job(request: Request) -> dict[str, Any]:
    """Start partitioned training over the ingested datasets (body: a TrainConfig). Any member may ask."""
    member = await authenticated(request)
    try:
        config = TrainConfig.from_dict(json.loads(await request.body()))
    except json.JSONDecodeError as exc:
        raise ServiceError(f"body must be a JSON training config: {exc}") from None
    return jobs(request).submit(config, member.name).to_json()


@router.get("")
def list_jobs(request: Request) -> list[dict[str, Any]]:
    return [j.to_json() for j in jobs(request).jobs.values()]


@router.get("/{job_id}")
def job(request: Request, job_id: str) -> dict[str, Any]:
    """A job's state and per-epoch progress (loss, accuracy, throughput)."""
    return jobs(request).get(job_id).to_json()


@router.get("/{job_id}/backnet")
def backnet(request: Request, job_id: str) -> FileResponse:
    """The trained BackNet, in the clear: it lives on the host (DESIGN.md §2)."""
    path = jobs(request).backnet_path(job_id)
    if jobs(request).get(job_id).state != "done" or not path.exists():
        raise ServiceError(f"job {job_id} has no trained BackNet yet")
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/{job_id}/export")
async def export_frontnet(request: Request, job_id: str) -> dict[str, Any]:
    """The trained FrontNet, HPKE-encrypted by the enclave to a key the requesting member names."""
    member = await authenticated(request)
    try:
        recipient = bytes.fromhex(json.loads(await request.body())["recipient_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(f'body must be {{"recipient_key": HEX}}: {exc}') from None
    jobs(request).get(job_id)
    msg = ExportFrontNet(job_id=job_id, recipient_key=recipient)
    out = await run_in_threadpool(server(request).enclave.call, msg, Exported)
    return {
        "job_id": job_id,
        "recipient": member.name,
        "front_digest": out.front_digest,
        "ciphertext": base64.b64encode(out.ciphertext).decode(),
    }
