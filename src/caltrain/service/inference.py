"""HTTP routes for DeepEnclave serving: deploy models, list them, answer encrypted inference requests."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from typing import Any, TypeVar

import torch
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from caltrain.enclave.consortium import Role
from caltrain.enclave.wire import DeployModel, WireError, from_json, to_json
from caltrain.inference.errors import BadRequest
from caltrain.inference.serving import InferenceService
from caltrain.jsonfile import validation_summary
from caltrain.service.deployments import Deployments
from caltrain.service.errors import JobNotFinished
from caltrain.service.jobs import JobManager
from caltrain.service.openapi import SIGNED, json_body
from caltrain.service.state import authenticated, server

router = APIRouter(prefix="/v1", tags=["inference"])
B = TypeVar("B", bound=BaseModel)


class DeployIn(BaseModel):
    """Deploy a model: `request` is a `DeployModel` an owner signed for the attested enclave (wire JSON; the host
    fills in its shared-memory slots, which the signature leaves out). From a finished job the request names the
    job and its enclave-signed FrontNet digest; an external model carries `sealed_weights` (the enclave's part,
    HPKE-sealed to it) and `backnet` here (the host's part, a torch state_dict, in the clear)."""

    request: dict[str, Any] = Field(description="a signed DeployModel message (caltrain.enclave.wire.to_json)")
    backnet: str = Field(default="", description="base64 of torch.save(state_dict); external models only")


class ModelOut(BaseModel):
    model_id: str
    architecture: str
    m: int
    ternary: bool
    owner: str
    source: str
    front_digest: str
    input_shape: list[int]
    num_classes: int
    request_size: int = Field(description="bytes of one request ciphertext")


class SessionIn(BaseModel):
    session_id: str = Field(description="32 hex characters, fresh per session (bound into the HPKE context)")
    ciphertext: str = Field(description="base64 HPKE ciphertext to the enclave key: session key and issue time")


class SessionOut(BaseModel):
    session_id: str
    expires_in_s: float = Field(description="the session's lifetime; then (or after max_requests) open another")
    max_requests: int


class InferIn(BaseModel):
    model_id: str
    session_id: str
    counter: int = Field(description="1, 2, 3, ... per session; each is accepted once (1024-wide reorder window)")
    top_k: int = Field(description="how many labels to answer (bound into the ciphertext's associated data)")
    ciphertext: str = Field(description="base64 AES-256-GCM of the float32 input under the session's request key")


class InferOut(BaseModel):
    model_id: str
    session_id: str
    counter: int
    ciphertext: str = Field(description="base64 AES-256-GCM answer under a key derived for this request")


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def _parse(body: bytes, model: type[B]) -> B:
    """A JSON body (already read within the route's limit) as `model`, or a typed `BadRequest`."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(f"malformed {model.__name__}: {validation_summary(exc)}") from None


def inference(request: Request) -> InferenceService:
    service = server(request).extensions["inference"]
    assert isinstance(service, InferenceService)
    return service


def _load_state(raw: bytes, what: str) -> object:
    try:
        return torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:  # whatever bytes a client sent: not a state_dict is its fault
        raise BadRequest(f"{what} is not a torch state_dict: {type(exc).__name__}") from None


@router.post("/models", status_code=201, openapi_extra={**json_body(DeployIn), **SIGNED})
async def deploy(request: Request) -> dict[str, Any]:
    """Deploy a model for inference; the enclave checks the owner's signature, role and the datasets' consent.
    The answer carries the enclave's signed deployment record. The deployment survives restarts: the enclave
    keeps what the owner authorized, sealed, and serves it again after it restarts."""
    _, raw = await authenticated(request, frozenset({Role.OWNER}))
    body = _parse(raw, DeployIn)
    try:
        msg = from_json(DeployModel, body.request)
    except WireError as exc:
        raise BadRequest(f"malformed DeployModel: {exc}") from None
    server(request).courtesy_check(msg)
    if msg.job_id:
        jobs = server(request).extensions["jobs"]
        assert isinstance(jobs, JobManager)
        if body.backnet:
            raise BadRequest(f"job {msg.job_id}'s BackNet is the host's: send none with it")
        if jobs.get(msg.job_id).state != "done":
            raise JobNotFinished(f"job {msg.job_id} is {jobs.get(msg.job_id).state}, not done")
        host_state = await run_in_threadpool(torch.load, jobs.backnet_path(msg.job_id), weights_only=True)
    else:
        host_state = _load_state(_b64(body.backnet, "backnet"), "backnet")
    deployments = server(request).extensions["deployments"]
    assert isinstance(deployments, Deployments)
    signed, info = await run_in_threadpool(deployments.deploy, msg, host_state)
    return {"signed": to_json(signed), "model": ModelOut(**info.to_json()).model_dump()}


@router.get("/models", response_model=list[ModelOut])
def models(request: Request) -> list[ModelOut]:
    return [ModelOut(**s.info.to_json()) for s in inference(request).models.values()]


@router.get("/models/{model_id}", response_model=ModelOut)
def model(request: Request, model_id: str) -> ModelOut:
    return ModelOut(**inference(request).get(model_id).info.to_json())


@router.post("/sessions", status_code=201, response_model=SessionOut, openapi_extra=json_body(SessionIn))
async def open_session(request: Request) -> SessionOut:
    """Open an inference session: a session key sealed to the attested enclave, used by many requests.
    Anonymous: no signature (inference users are not consortium members)."""
    body = _parse(await request.body(), SessionIn)
    opened = await run_in_threadpool(
        inference(request).open_session, body.session_id, _b64(body.ciphertext, "ciphertext")
    )
    return SessionOut(session_id=opened.session_id, expires_in_s=opened.expires_in_s, max_requests=opened.max_requests)


@router.post("/infer", response_model=InferOut, openapi_extra=json_body(InferIn))
async def infer(request: Request) -> InferOut:
    """One encrypted input in, its encrypted top-k out; batched with concurrent requests on the server.
    Anonymous: no signature; the session key sealed to the enclave is what authenticates the request."""
    body = _parse(await request.body(), InferIn)
    server = inference(request).get(body.model_id)
    future = server.submit(body.session_id, body.counter, body.top_k, _b64(body.ciphertext, "ciphertext"))
    answer = await asyncio.wrap_future(future)
    return InferOut(model_id=body.model_id, session_id=body.session_id, counter=body.counter,
                    ciphertext=base64.b64encode(answer).decode())
