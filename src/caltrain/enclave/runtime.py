"""The trusted side: the enclave's context and its call (ECALL) dispatcher.

Layers above register handlers with `@ecall(RequestType)`; the enclave process imports the modules in
`manifest.ECALL_MODULES` at start. Handlers receive the context, never the channel; the host never
receives an object, only the reply message.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from caltrain.attestation.registry import EvidenceCollector
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.crypto.sealing import Sealer
from caltrain.crypto.signing import Identity
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.protocol import EnclaveKeys
from caltrain.enclave.wire import Failure, Message
from caltrain.errors import CaltrainError, EnclaveError


class MonotonicCounters(Protocol):
    """Platform counters that only move forward: what lets sealed state detect a rollback."""

    def counter_read(self, name: str) -> int: ...

    def counter_increment(self, name: str) -> int: ...


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
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def public_keys(self) -> EnclaveKeys:
        return EnclaveKeys(self.hpke.public_bytes, self.identity.public_key)


Req = TypeVar("Req", bound=Message)
Handler = Callable[[EnclaveContext, Any], Message]
HANDLERS: dict[type[Message], Handler] = {}


def ecall(request: type[Req]) -> Callable[[Callable[[EnclaveContext, Req], Message]], Handler]:
    def register(fn: Callable[[EnclaveContext, Req], Message]) -> Handler:
        if request in HANDLERS:
            raise TypeError(f"two handlers for {request.__name__}")
        HANDLERS[request] = fn
        return fn

    return register


def dispatch(ctx: EnclaveContext, msg: Message) -> Message:
    """Run the handler for `msg`; every failure becomes a `Failure` reply naming its error class."""
    handler = HANDLERS.get(type(msg))
    if handler is None:
        return Failure(error="EnclaveError", detail=f"the enclave has no call {msg.type_name}")
    try:
        return handler(ctx, msg)
    except CaltrainError as exc:
        return Failure(error=type(exc).__name__, detail=str(exc))
    except Exception as exc:  # an enclave bug must not kill the enclave or leak a traceback with data
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return Failure(error=EnclaveError.__name__, detail=f"internal error {type(exc).__name__} at {where}")
