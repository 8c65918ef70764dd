"""The caltrain server: FastAPI over uvicorn, the untrusted host side of the enclave.

It routes requests to the enclave and runs whatever the partition puts on the host. It never sees plaintext
records, inputs or keys: those only exist inside the enclave process. Its own state (jobs, deployments) is in a
store under the state directory; the enclave is supervised: when it dies it is restarted, and what it served is
offered to it again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from caltrain.enclave.consortium import Consortium
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.errors import CaltrainError, ServiceError, http_status
from caltrain.inference.serving import BatchingConfig, InferenceService
from caltrain.jsonfile import validation_summary
from caltrain.service import forensics, inference, ingestion, openapi, training
from caltrain.service.auth import RequestAuthenticator
from caltrain.service.deployments import Deployments
from caltrain.service.ingestion import UPLOADS, Uploads
from caltrain.service.jobs import JobManager
from caltrain.service.limits import BodyLimits, error_response
from caltrain.service.state import ServerState
from caltrain.service.store import ServerStore, SqliteStore
from caltrain.training.cluster import Cluster, ClusterConfig

log = logging.getLogger("caltrain.server")

ROUTERS = (ingestion.router, training.router, forensics.router, inference.router)
STORE_FILE = "server.sqlite"


def create_app(
    *,
    state_dir: Path,
    consortium: Consortium,
    backend: str = "simulated",
    device: str = "cpu",
    enclave: EnclaveHost | None = None,
    batching: BatchingConfig | None = None,
    store: ServerStore | None = None,
    workers: ClusterConfig | None = None,
) -> FastAPI:
    """Build the app; the enclave (and, with `workers`, the worker processes) start with the app (lifespan); the
    enclave is supervised while it runs; everything stops with it."""
    host = enclave or EnclaveHost(state_dir=state_dir, config=EnclaveConfig(consortium), backend=backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ready = host.start() if host.ready is None else host.ready
        if ready.simulated:
            log.warning("SIMULATED TEE backend: the enclave is an ordinary process; no hardware protection")
        log.info("enclave ready: platform=%s measurement=%s", ready.platform, ready.measurement)
        db = store or SqliteStore(state_dir / STORE_FILE)
        server = app.state.server = ServerState(host, consortium, RequestAuthenticator(consortium), state_dir, db)
        cluster = Cluster(host, workers) if workers else None
        if cluster is not None:
            cluster.start()
            log.info("%d workers; jobs train on them. Workers on this machine: %s", cluster.config.world,
                     " ".join(cluster.launch_command()))
        jobs = JobManager(host, db, state_dir, device, cluster)
        service = InferenceService(host, batching)
        deployments = Deployments(service, db, state_dir)
        server.extensions.update(jobs=jobs, inference=service, deployments=deployments, cluster=cluster,
                                 uploads=Uploads(state_dir / UPLOADS))
        deployments.restore()
        host.supervise(on_ready=lambda _: deployments.restore())
        try:
            yield
        finally:
            jobs.close()
            service.close()
            if cluster is not None:
                cluster.stop()
            host.stop()
            db.close()

    app = FastAPI(
        title="caltrain",
        version="1",
        summary="Confidential and accountable deep learning on TEEs",
        description="Host side of the caltrain enclave. Every payload that carries private data is encrypted "
        "to the attested enclave key; the host routes ciphertext and runs only the BackNet.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(CaltrainError)
    async def caltrain_error(request: Request, exc: CaltrainError) -> JSONResponse:
        code = http_status(type(exc))
        log.log(
            logging.ERROR if code >= 500 else logging.WARNING,
            "%s %s -> %d %s: %s",
            request.method,
            request.url.path,
            code,
            type(exc).__name__,
            exc,
        )
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ServiceError(f"malformed request: {validation_summary(exc.errors())}"))

    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app)
    app.add_middleware(BodyLimits)
    return app
