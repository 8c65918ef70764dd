"""Bounded input: each route's body limit, enforced as the body streams in, before anything is buffered.

A request whose Content-Length exceeds its route's limit is answered 413 at once, unread; a chunked body (or one
that sends more than it declared) is cut off with 413 the moment it passes the limit. Routes then read bodies
only through the ASGI `receive` this middleware wraps, so no route can buffer more than its limit.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from caltrain.errors import CaltrainError, RequestTooLarge, ServiceError, http_status

MiB = 1 << 20
MAX_UPLOAD_BYTES = 4 << 30  # one dataset container, streamed to disk
MAX_DEPLOY_BYTES = 256 * MiB  # an owner's model: sealed FrontNet and clear BackNet, base64 in JSON
MAX_QUERY_BYTES = 96 * MiB  # a sealed forensic query: up to 4,096 inputs
MAX_INFER_BYTES = 1 * MiB
MAX_CONTROL_BYTES = 1 * MiB  # job specs, sealed export / suspicion requests, cancellations
MAX_OTHER_BYTES = 64 * 1024  # routes that take no body

# (method, path pattern, limit): the first match applies.
BODY_LIMITS: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("POST", re.compile(r"/v1/datasets"), MAX_UPLOAD_BYTES),
    ("POST", re.compile(r"/v1/models"), MAX_DEPLOY_BYTES),
    ("POST", re.compile(r"/v1/jobs/[^/]+/trace"), MAX_QUERY_BYTES),
    ("POST", re.compile(r"/v1/(sessions|infer)"), MAX_INFER_BYTES),
    ("POST", re.compile(r"/v1/jobs(/[^/]+/(export|suspicion|cancel))?"), MAX_CONTROL_BYTES),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def body_limit(method: str, path: str) -> int:
    for m, pattern, limit in BODY_LIMITS:
        if m == method and pattern.fullmatch(path):
            return limit
    return MAX_OTHER_BYTES


def error_response(exc: CaltrainError) -> JSONResponse:
    """The one shape of every error answer: `{"error": class name, "detail": what was wrong}`, the catalog's
    status, and Retry-After where waiting helps."""
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return JSONResponse(status_code=http_status(type(exc)), content={"error": type(exc).__name__, "detail": str(exc)},
                        headers=headers)


class BodyLimits:
    """ASGI middleware: refuse an oversized body by its Content-Length, or cut it off while it streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(ServiceError("Content-Length must be a decimal number"))(scope, receive, send)
                return
            if int(declared) > limit:
                exc = RequestTooLarge(f"body of {int(declared)} bytes; {scope['path']} takes at most {limit}")
                await error_response(exc)(scope, receive, send)
                return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(f"body passed {limit} bytes, the most {scope['path']} takes")
            return message

        await self.app(scope, bounded, send)
