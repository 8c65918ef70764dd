"""What every route reaches through `request.app.state`: the enclave proxy, the consortium, the authenticator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from caltrain.enclave.consortium import Consortium, Member, Role
from caltrain.enclave.host import EnclaveHost
from caltrain.service.auth import RequestAuthenticator


@dataclass
class ServerState:
    enclave: EnclaveHost
    consortium: Consortium
    auth: RequestAuthenticator
    state_dir: Path
    extensions: dict[str, Any] = field(default_factory=dict)


def server(request: Request) -> ServerState:
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state


async def authenticated(request: Request, role: Role | None = None) -> Member:
    """The consortium member who signed this request (with `role`, if given), or an `AuthError`."""
    body = await request.body()
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return server(request).auth.authenticate(request.method, path, request.headers, body, role=role)
