"""HTTP routes for partitioned training jobs. Every route that reveals anything about a job needs a member's
signature; admission and export are decided by the enclave. Jobs queue first come, first served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from caltrain.enclave.wire import CreateJob, ExportModel, to_json
from caltrain.service.errors import JobNotFinished
from caltrain.service.jobs import JobManager
from caltrain.service.openapi import SEALED_BODY, SIGNED, wire_body
from caltrain.service.state import authenticated, forward_sealed, member_request, server

router = APIRouter(prefix="/v1/jobs", tags=["training"])


def jobs(request: Request) -> JobManager:
    manager = server(request).extensions["jobs"]
    assert isinstance(manager, JobManager)
    return manager


@router.post("", status_code=202, openapi_extra={
    **wire_body("CreateJob", "a CreateJob an owner signed for the attested enclave: `spec` is the training config "
                "(model, frontnet_layers, epochs, batch_size, optimizer, lr, ..., datasets, eval_datasets), no seed"),
    **SIGNED})
async def start_job(request: Request) -> dict[str, Any]:
    """Ask the enclave to admit a job (body: a `CreateJob` an owner signed for the attested enclave); it is
    queued when every dataset's data-use policy admits it. The answer carries the enclave's signed admission."""
    msg = await member_request(request, CreateJob)
    signed, job = await run_in_threadpool(jobs(request).submit, msg)
    return {"signed": to_json(signed), "job": job.to_json()}


@router.get("", openapi_extra=SIGNED)
async def list_jobs(request: Request) -> list[dict[str, Any]]:
    """Every job's state and progress, in the order they were admitted (members only)."""
    await authenticated(request)
    return [j.to_json() for j in jobs(request).jobs.values()]


@router.get("/{job_id}", openapi_extra=SIGNED)
async def job(request: Request, job_id: str) -> dict[str, Any]:
    """A job's state (queued, running, done, failed, cancelled), per-epoch progress and, once done, the
    enclave-signed result and linkage statement."""
    await authenticated(request)
    return jobs(request).get(job_id).to_json()


@router.post("/{job_id}/cancel", openapi_extra=SIGNED)
async def cancel(request: Request, job_id: str) -> dict[str, Any]:
    """Cancel a job: a queued one at once, a running one at its next epoch end (by the owner who asked for it,
    or another owner). The enclave keeps it admitted; the host no longer runs it."""
    member, _ = await authenticated(request)
    return jobs(request).cancel(job_id, member).to_json()


@router.get("/{job_id}/backnet", openapi_extra=SIGNED)
async def backnet(request: Request, job_id: str) -> FileResponse:
    """The trained BackNet, in the clear (it lives on the host; docs/security.md); members only."""
    await authenticated(request)
    path = jobs(request).backnet_path(job_id)
    if jobs(request).get(job_id).state != "done" or not path.exists():
        raise JobNotFinished(f"job {job_id} has no trained BackNet yet")
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/{job_id}/export", openapi_extra={**SEALED_BODY, **SIGNED})
async def export_model(request: Request, job_id: str) -> dict[str, str]:
    """The trained FrontNet and the job's seed, sealed to the asking member's consortium key: a sealed
    `ExportModel`, answered only if every training dataset's policy names that member a FrontNet recipient."""
    jobs(request).get(job_id)
    return await forward_sealed(request, ExportModel)
