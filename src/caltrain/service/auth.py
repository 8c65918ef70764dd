"""Request authentication: consortium members sign each request with their Ed25519 identity."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Mapping

from caltrain.crypto.errors import BadSignature, InvalidKey
from caltrain.crypto.hashing import sha256, tagged_hash
from caltrain.crypto.signing import Identity, verify_signature
from caltrain.enclave.consortium import Consortium, Member, Role
from caltrain.errors import AuthError, Unauthenticated

MEMBER, TIMESTAMP, SIGNATURE = "x-caltrain-member", "x-caltrain-timestamp", "x-caltrain-signature"


def request_digest(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    return tagged_hash("caltrain/request/v1", method.upper().encode(), path.encode(), timestamp.encode(), sha256(body))


def sign_request(identity: Identity, name: str, method: str, path: str, body: bytes) -> dict[str, str]:
    """Headers that authenticate one request (method, path with query, body) as `name`."""
    ts = f"{time.time():.3f}"
    sig = identity.sign(request_digest(method, path, ts, body))
    return {MEMBER: name, TIMESTAMP: ts, SIGNATURE: base64.b64encode(sig).decode()}


class RequestAuthenticator:
    """Checks request signatures against the consortium; a signed request is accepted once, while fresh."""

    def __init__(
        self, consortium: Consortium, *, window_s: float = 120.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._consortium = consortium
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[bytes, float] = {}

    def authenticate(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, roles: frozenset[Role] | None = None
    ) -> Member:
        """The member who signed this request, holding one of `roles` if given (a courtesy check: the enclave
        checks its own calls' authorization itself)."""
        name, ts, sig = headers.get(MEMBER), headers.get(TIMESTAMP), headers.get(SIGNATURE)
        if not (name and ts and sig):
            raise Unauthenticated("request is not signed: send X-Caltrain-Member, -Timestamp and -Signature")
        member = self._consortium.member(name)
        if roles is not None and not member.roles & roles:
            raise AuthError(f"member {name!r} holds none of the roles {sorted(r.value for r in roles)}")
        try:
            age = self._clock() - float(ts)
            signature = base64.b64decode(sig, validate=True)
        except ValueError:
            raise Unauthenticated("malformed authentication headers") from None
        if not math.isfinite(age):
            raise Unauthenticated(f"request timestamp {ts!r} is not a finite number of seconds")
        if abs(age) > self._window_s:
            raise Unauthenticated(f"request timestamp is {age:.0f} s off; the window is {self._window_s:.0f} s")
        try:
            verify_signature(member.public_key, request_digest(method, path, ts, body), signature, what="request")
        except (BadSignature, InvalidKey):
            raise Unauthenticated(f"request signature does not verify for member {name!r}") from None
        now = self._clock()
        self._seen = {s: t for s, t in self._seen.items() if now - t <= self._window_s}
        if signature in self._seen:
            raise Unauthenticated("request replayed: this signed request was already accepted")
        self._seen[signature] = now
        return member
