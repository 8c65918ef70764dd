"""Backend registry: one verifier backend and one evidence collector per platform name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from caltrain.attestation.errors import UnknownPlatform
from caltrain.attestation.evidence import Evidence, QuoteClaims
from caltrain.attestation.policy import Policy
from caltrain.attestation.trace import Trace


class VerifierBackend(Protocol):
    """Checks a platform's quote (signature, certificate chain, collateral) and reads its claims."""

    platform: str
    simulated: bool  # True for backends with no hardware root: policies must opt in

    def verify_quote(
        self, evidence: Evidence, policy: Policy, *, now: datetime, trace: Trace | None = None
    ) -> QuoteClaims: ...


class EvidenceCollector(Protocol):
    """Runs inside the enclave: asks the platform for a quote over 64 bytes of report data."""

    platform: str

    def collect(self, report_data: bytes) -> tuple[bytes, dict[str, bytes]]: ...


_VERIFIERS: dict[str, VerifierBackend] = {}
_COLLECTORS: dict[str, Callable[..., EvidenceCollector]] = {}


def register_backend(
    verifier: VerifierBackend, collector_factory: Callable[..., EvidenceCollector] | None = None
) -> None:
    _VERIFIERS[verifier.platform] = verifier
    if collector_factory is not None:
        _COLLECTORS[verifier.platform] = collector_factory


def _load_builtin() -> None:
    # Importing a backend module registers it; done lazily so the registry has no import cycle.
    import caltrain.attestation.backends  # noqa: F401


def get_backend(platform: str) -> VerifierBackend:
    _load_builtin()
    try:
        return _VERIFIERS[platform]
    except KeyError:
        raise UnknownPlatform(f"no verifier for platform {platform!r}; known: {sorted(_VERIFIERS)}") from None


def make_collector(name: str, /, **options: Any) -> EvidenceCollector:
    _load_builtin()
    try:
        factory = _COLLECTORS[name]
    except KeyError:
        raise UnknownPlatform(f"no evidence collector for platform {name!r}; known: {sorted(_COLLECTORS)}") from None
    return factory(**options)


def registered_platforms() -> list[str]:
    _load_builtin()
    return sorted(_VERIFIERS)
