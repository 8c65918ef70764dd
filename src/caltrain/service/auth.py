"""Request authentication: consortium members sign each HTTP request with their Ed25519 identity.

The signature covers the method, the path with its query, a timestamp and the SHA-256 of the body, which travels
as a header. So the server checks who is asking from the headers alone, before it reads a byte of the body, and
then only that the body it reads has the signed digest (`BodyDigest`).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping

from caltrain.crypto.errors import BadSignature, InvalidKey
from caltrain.crypto.hashing import sha256, tagged_hash
from caltrain.crypto.signing import Identity, verify_signature
from caltrain.enclave.consortium import Consortium, Member, Role
from caltrain.errors import AuthError, Unauthenticated

MEMBER, TIMESTAMP, SIGNATURE = "x-caltrain-member", "x-caltrain-timestamp", "x-caltrain-signature"
CONTENT_SHA256 = "x-caltrain-content-sha256"
# Seconds since the epoch, as `sign_request` writes them: digits, optionally a fraction. Nothing else (no
# "nan", "inf", exponent, sign or whitespace) is a timestamp.
_TIMESTAMP = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def request_digest(method: str, path: str, timestamp: str, body_sha256: bytes) -> bytes:
    return tagged_hash("caltrain/request/v1", method.upper().encode(), path.encode(), timestamp.encode(), body_sha256)


def sign_request(identity: Identity, name: str, method: str, path: str, body: bytes) -> dict[str, str]:
    """Headers that authenticate one request (method, path with query, body) as `name`."""
    ts = f"{time.time():.3f}"
    digest = sha256(body)
    sig = identity.sign(request_digest(method, path, ts, digest))
    return {MEMBER: name, TIMESTAMP: ts, SIGNATURE: base64.b64encode(sig).decode(), CONTENT_SHA256: digest.hex()}


class BodyDigest:
    """Hashes a body as it streams in; `check` refuses one whose digest is not the signed one."""

    def __init__(self, expected: bytes) -> None:
        self.expected = expected
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def check(self) -> None:
        if self._hash.digest() != self.expected:
            raise Unauthenticated("the request body is not the one signed (its SHA-256 differs from the signed one)")


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
        self, method: str, path: str, headers: Mapping[str, str], *, roles: frozenset[Role] | None = None
    ) -> tuple[Member, BodyDigest]:
        """The member who signed this request, holding one of `roles` if given (a courtesy check: the enclave
        checks its own calls' authorization itself), judged from the headers alone; and the digest the body
        must then have."""
        name, ts, sig, content = (headers.get(h) for h in (MEMBER, TIMESTAMP, SIGNATURE, CONTENT_SHA256))
        if not (name and ts and sig and content):
            raise Unauthenticated(
                "request is not signed: send X-Caltrain-Member, -Timestamp, -Signature and -Content-SHA256"
            )
        member = self._consortium.member(name)
        if roles is not None and not member.roles & roles:
            raise AuthError(f"member {name!r} holds none of the roles {sorted(r.value for r in roles)}")
        if not _TIMESTAMP.fullmatch(ts):
            raise Unauthenticated(f"request timestamp {ts[:40]!r} is not seconds since the epoch")
        if not _DIGEST.fullmatch(content):
            raise Unauthenticated("X-Caltrain-Content-SHA256 must be 64 lowercase hex digits")
        try:
            signature = base64.b64decode(sig, validate=True)
        except ValueError:
            raise Unauthenticated("malformed request signature (not base64)") from None
        age = self._clock() - float(ts)
        if not math.isfinite(age) or abs(age) > self._window_s:
            raise Unauthenticated(f"request timestamp is {age:.0f} s off; the window is {self._window_s:.0f} s")
        digest = bytes.fromhex(content)
        try:
            verify_signature(member.public_key, request_digest(method, path, ts, digest), signature, what="request")
        except (BadSignature, InvalidKey):
            raise Unauthenticated(f"request signature does not verify for member {name!r}") from None
        now = self._clock()
        self._seen = {s: t for s, t in self._seen.items() if now - t <= self._window_s}
        if signature in self._seen:
            raise Unauthenticated("request replayed: this signed request was already accepted")
        self._seen[signature] = now
        return member, BodyDigest(digest)
