"""The caltrain server: FastAPI over uvicorn, the untrusted host side of the enclave.

It routes requests to the enclave and runs whatever the partition puts on the host. It never sees
plaintext records, inputs or keys: those only exist inside the enclave process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from caltrain.enclave.consortium import Consortium
from caltrain.enclave.errors import DuplicateDataset, RequestReplayed, UnknownDataset
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.errors import (
    AuthError,
    CaltrainError,
    EnclaveError,
    ServiceError,
    Unauthenticated,
)
from caltrain.inference.errors import (
    DuplicateModel,
    ReplayedRequest,
    RequestTooLarge,
    SessionExpired,
    UnknownModel,
    UnknownSession,
)
from caltrain.inference.serving import BatchingConfig, InferenceService
from caltrain.service import forensics, inference, ingestion, training
from caltrain.service.auth import RequestAuthenticator
from caltrain.service.jobs import JobManager, UnknownJob
from caltrain.service.state import ServerState
from caltrain.training.cluster import Cluster, ClusterConfig
from caltrain.training.errors import NoActiveJob

log = logging.getLogger("caltrain.server")

ROUTERS = (ingestion.router, training.router, forensics.router, inference.router)


def status_code(exc: CaltrainError) -> int:
    """HTTP status for a caltrain error: the client's fault is 4xx, the server's 5xx."""
    for cls, code in (
        (RequestReplayed, 409),
        (Unauthenticated, 401),
        (AuthError, 403),
        (UnknownDataset, 404),
        (UnknownJob, 404),
        (NoActiveJob, 404),
        (UnknownModel, 404),
        (SessionExpired, 410),
        (UnknownSession, 404),
        (DuplicateDataset, 409),
        (DuplicateModel, 409),
        (ReplayedRequest, 409),
        (RequestTooLarge, 413),
        (EnclaveError, 503),
        (ServiceError, 400),
    ):
        if isinstance(exc, cls):
            return code
    return 400


def create_app(
    *,
    state_dir: Path,
    consortium: Consortium,
    backend: str = "simulated",
    device: str = "cpu",
    enclave: EnclaveHost | None = None,
    batching: BatchingConfig | None = None,
    workers: ClusterConfig | None = None,
) -> FastAPI:
    """Build the app; the enclave (and, with `workers`, the worker processes) start with the app (lifespan) and
    stop with it."""
    host = enclave or EnclaveHost(state_dir=state_dir, config=EnclaveConfig(consortium), backend=backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ready = host.start() if host.ready is None else host.ready
        if ready.simulated:
            log.warning("SIMULATED TEE backend: the enclave is an ordinary process; no hardware protection")
        log.info("enclave ready: platform=%s measurement=%s", ready.platform, ready.measurement)
        app.state.server = ServerState(host, consortium, RequestAuthenticator(consortium), state_dir)
        cluster = app.state.server.extensions["cluster"] = Cluster(host, workers) if workers else None
        if cluster is not None:
            cluster.start()
            log.info("%d workers; jobs train on them. Workers on this machine: %s", cluster.config.world,
                     " ".join(cluster.launch_command()))
        jobs = app.state.server.extensions["jobs"] = JobManager(host, state_dir, device, cluster)
        service = app.state.server.extensions["inference"] = InferenceService(host, batching)
        try:
            yield
        finally:
            jobs.close()
            service.close()
            if cluster is not None:
                cluster.stop()
            host.stop()

    app = FastAPI(
        title="caltrain",
        version="1",
        summary="Confidential and accountable deep learning on TEEs",
        description="Host side of the caltrain enclave. Every payload that carries private data is encrypted "
        "to the attested enclave key; the host routes ciphertext and runs only the BackNet.",
        lifespan=lifespan,
    )

    @app.exception_handler(CaltrainError)
    async def caltrain_error(request: Request, exc: CaltrainError) -> JSONResponse:
        code = status_code(exc)
        log.log(
            logging.ERROR if code >= 500 else logging.WARNING,
            "%s %s -> %d %s: %s",
            request.method,
            request.url.path,
            code,
            type(exc).__name__,
            exc,
        )
        return JSONResponse(status_code=code, content={"error": type(exc).__name__, "detail": str(exc)})

    for router in ROUTERS:
        app.include_router(router)
    return app
