"""What every route reaches through `request.app.state`, and the helpers routes share to forward member requests.

The host is a courier: a member's request to the enclave travels as the wire message the member signed (JSON,
`caltrain.enclave.wire.to_json`), or sealed to the enclave, and the enclave decides. The checks here mirror the
enclave's (same function, same consortium) only to refuse early; they are a courtesy, never the protection.

Who asks is judged from the headers before any body is read; bodies are read only within their route's limit
(`caltrain.service.limits`), and must then hash to the digest the member signed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from caltrain.enclave.authority import verify_authorization
from caltrain.enclave.consortium import Consortium, Member
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.wire import ROUTES, Members, Message, SealedReply, SealedRequest, WireError, from_json, to_json
from caltrain.errors import ServiceError
from caltrain.service.auth import RequestAuthenticator
from caltrain.service.store import ServerStore

M = TypeVar("M", bound=Message)


@dataclass
class ServerState:
    enclave: EnclaveHost
    consortium: Consortium
    auth: RequestAuthenticator
    state_dir: Path
    store: ServerStore
    extensions: dict[str, Any] = field(default_factory=dict)

    def courtesy_check(self, msg: Message) -> Member:
        """The enclave's own authorization check, run early on the host (it cannot see replays)."""
        return verify_authorization(msg, ROUTES[type(msg)], self.consortium, self.enclave.keys)


def server(request: Request) -> ServerState:
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    """A body as strict JSON (UTF-8, no NaN or infinity), or a `ServiceError` naming what is wrong."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ServiceError(f"body must be UTF-8 JSON: byte {exc.start} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise ServiceError(f"body must be JSON: {str(exc)[:200]}") from None


async def authenticated(request: Request, roles: frozenset[Any] | None = None) -> tuple[Member, bytes]:
    """The consortium member who signed this HTTP request (holding one of `roles`, if given), judged from its
    headers before the body is read, and the body, once it hashed to the signed digest."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    member, digest = server(request).auth.authenticate(request.method, path, request.headers, roles=roles)
    body = await request.body()
    digest.update(body)
    digest.check()
    return member, body


async def member_request(request: Request, cls: type[M]) -> M:
    """A member's request to the enclave: the HTTP request signed by a member the route admits, its JSON body the
    wire message the member signed for the enclave; checked early as a courtesy."""
    sender = ROUTES[cls].sender
    assert isinstance(sender, Members)
    _, body = await authenticated(request, sender.roles)
    try:
        msg = from_json(cls, parse_json(body))
    except WireError as exc:
        raise ServiceError(f"malformed {cls.__name__}: {exc}") from None
    server(request).courtesy_check(msg)
    return msg


async def forward_sealed(
    request: Request, inner: type[Message], relay: Callable[[bytes], bytes] | None = None
) -> dict[str, str]:
    """Pass a sealed member request (whose inner type the route names) to the enclave and its sealed answer back
    (through `relay`, when the enclave needs other enclaves first: a trace of a job sharded over workers).

    The host cannot read either; it only checks, as a courtesy, that the HTTP request is signed by a member
    holding a role the inner request's route admits.
    """
    sender = ROUTES[inner].sender
    assert isinstance(sender, Members)
    _, raw = await authenticated(request, sender.roles)
    body = parse_json(raw)
    try:
        ciphertext = base64.b64decode(body["sealed"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise ServiceError('body must be {"sealed": BASE64}') from None
    if relay is not None:
        return {"sealed": base64.b64encode(await run_in_threadpool(relay, ciphertext)).decode()}
    sealed = await run_in_threadpool(server(request).enclave.call, SealedRequest(ciphertext=ciphertext), SealedReply)
    return {"sealed": base64.b64encode(sealed.ciphertext).decode()}


def signed_json(signed: Message, reply: Message) -> dict[str, Any]:
    """A signed answer as the member receives it, with its content readable beside it (the member trusts only
    the signed form)."""
    return {"signed": to_json(signed), "reply": to_json(reply)}
