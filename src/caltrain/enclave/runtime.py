"""The trusted side: the enclave's context and its call (ECALL) dispatcher.

Layers above register handlers with `@ecall(RequestType)`; the enclave process imports the modules in
`manifest.ECALL_MODULES` at start. `dispatch` enforces the wire schema's declarations in one place: a host-sent
request runs as it is; a member-sent one runs only after its signature verified against the measured consortium
and its single-use id was admitted, and its answer leaves signed (sealed to the member, for a sealed request).
Handlers of member requests receive the verified `Member`; none decides who may call it. Handlers receive the
context, never the channel; the host never receives an object, only the reply message.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from caltrain.attestation.registry import EvidenceCollector
from caltrain.crypto.errors import CryptoError
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.crypto.sealing import Sealer
from caltrain.crypto.signing import Identity
from caltrain.enclave.authority import (
    RequestLedger,
    open_sealed_request,
    request_digest,
    seal_reply,
    sign_reply,
    verify_authorization,
)
from caltrain.enclave.consortium import Member
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.protocol import EnclaveKeys
from caltrain.enclave.wire import ROUTES, Failure, Members, Message, Route, SealedRequest, WireError
from caltrain.errors import AuthError, CaltrainError, EnclaveError, Unauthenticated


class MonotonicCounters(Protocol):
    """Platform counters that only move forward: what lets sealed state detect a rollback."""

    def counter_read(self, name: str) -> int: ...

    def counter_increment(self, name: str) -> int: ...


T = TypeVar("T")


@dataclass
class EnclaveContext:
    """Everything the trusted code holds. Lives only in the enclave process."""

    config: EnclaveConfig
    measurement: str
    platform: str
    simulated: bool
    state_dir: Path
    hpke: HpkeKeyPair
    identity: Identity
    sealer: Sealer
    collector: EvidenceCollector
    counters: MonotonicCounters
    ledger: RequestLedger = field(default_factory=RequestLedger)
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def public_keys(self) -> EnclaveKeys:
        return EnclaveKeys(self.hpke.public_bytes, self.identity.public_key)

    def extension(self, key: str, kind: type[T]) -> T:
        """The state a module restored at boot (`on_boot`) under `key`, checked to be the `kind` it stored."""
        value = self.extensions[key]
        if not isinstance(value, kind):
            raise TypeError(f"enclave state {key!r} is {type(value).__name__}, not {kind.__name__}")
        return value


Handler = Callable[..., Message]  # (ctx, request) for host requests, (ctx, request, member) for member requests
HANDLERS: dict[type[Message], Handler] = {}


def ecall(request: type[Message]) -> Callable[[Handler], Handler]:
    """Register the handler of a request the wire schema declares (`wire.request`)."""

    def register(fn: Handler) -> Handler:
        if request not in ROUTES:
            raise TypeError(f"{request.__name__} is not a declared request")
        if request in HANDLERS:
            raise TypeError(f"two handlers for {request.__name__}")
        HANDLERS[request] = fn
        return fn

    return register


BootHook = Callable[[EnclaveContext], None]
BOOT_HOOKS: list[BootHook] = []


def on_boot(fn: BootHook) -> BootHook:
    """Run `fn` once the context exists, before the enclave announces itself: sealed state is restored (or the
    enclave refuses to start) before any call is answered."""
    BOOT_HOOKS.append(fn)
    return fn


def dispatch(ctx: EnclaveContext, msg: Message) -> Message:
    """Authorize and run `msg`; every failure becomes a `Failure` reply naming its error class."""
    try:
        return _dispatch(ctx, msg)
    except CaltrainError as exc:
        return Failure(error=type(exc).__name__, detail=str(exc))
    except Exception as exc:  # an enclave bug must not kill the enclave or leak a traceback with data
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return Failure(error=EnclaveError.__name__, detail=f"internal error {type(exc).__name__} at {where}")


def _dispatch(ctx: EnclaveContext, msg: Message) -> Message:
    route = ROUTES.get(type(msg))
    if route is None:
        raise EnclaveError(f"{msg.type_name} is not a request the enclave answers")
    if isinstance(msg, SealedRequest):
        try:
            inner = open_sealed_request(ctx.hpke, msg)
        except (CryptoError, WireError) as exc:
            raise Unauthenticated(f"sealed request does not open for this enclave: {exc}") from None
        inner_route = ROUTES.get(type(inner))
        if inner_route is None or not inner_route.sealed:
            raise AuthError(f"{inner.type_name} does not travel sealed")
        member, digest = _authorize(ctx, inner, inner_route)
        return seal_reply(sign_reply(ctx.identity, _run(ctx, inner, inner_route, member), digest), member)
    if route.sealed:
        raise AuthError(f"{msg.type_name} must travel sealed: its answer is for its requester only")
    if isinstance(route.sender, Members):
        member, digest = _authorize(ctx, msg, route)
        return sign_reply(ctx.identity, _run(ctx, msg, route, member), digest)
    return _run(ctx, msg, route, None)


def _authorize(ctx: EnclaveContext, msg: Message, route: Route) -> tuple[Member, bytes]:
    member = verify_authorization(msg, route, ctx.config.consortium, ctx.public_keys)
    ctx.ledger.admit(msg)
    return member, request_digest(msg, ctx.public_keys)


def _run(ctx: EnclaveContext, msg: Message, route: Route, member: Member | None) -> Message:
    handler = HANDLERS.get(type(msg))
    if handler is None:
        raise EnclaveError(f"the enclave has no call {msg.type_name}")
    answer = handler(ctx, msg) if member is None else handler(ctx, msg, member)
    if not isinstance(answer, route.reply):
        raise EnclaveError(f"{msg.type_name} answered {answer.type_name}, not {route.reply.__name__}")
    return answer
