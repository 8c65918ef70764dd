"""Authority inside the enclave: members sign requests, the enclave signs (and seals) its answers.

Both sides compute the same digests from the same wire message, so the functions a member's client uses to
sign a request and check an answer live here beside the ones the enclave uses to verify and answer. The host
may call the verifier too, as a courtesy that saves a round trip; only the enclave's call counts, because only
the enclave remembers which single-use request ids it has accepted.

A request's authorization digest binds its content (`wire.content_digest`), the member's name, the attested
enclave's keys (the HPKE key is generated at every boot, so a signature never outlives the enclave instance it
was made for) and a fresh request id.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TypeVar

from caltrain.crypto.errors import BadSignature, InvalidKey
from caltrain.crypto.hashing import tagged_hash
from caltrain.crypto.hpke import HpkeKeyPair, seal_to
from caltrain.crypto.signing import Identity, verify_signature
from caltrain.enclave.consortium import Consortium, Member
from caltrain.enclave.errors import ReplyInvalid, RequestReplayed
from caltrain.enclave.protocol import EnclaveKeys
from caltrain.enclave.wire import (
    Authorization,
    Members,
    Message,
    Route,
    SealedReply,
    SealedRequest,
    SignedReply,
    WireError,
    content_digest,
    decode,
    encode,
)
from caltrain.errors import AuthError, Unauthenticated

R = TypeVar("R", bound=Message)

REQUEST_ID_BYTES = 16
MAX_REQUEST_ID_BYTES = 64
UNSIGNED = Authorization(member="", request_id="", signature="")  # placeholder until `authorize` fills it in
_SEALED_REQUEST_INFO = tagged_hash("caltrain/sealed-request/v1")


def authorization_digest(msg: Message, keys: EnclaveKeys, member: str, request_id: bytes) -> bytes:
    """What a member signs: this request's content, as this member, to this enclave instance, once."""
    return tagged_hash("caltrain/authorize/v1", content_digest(msg), member.encode(), keys.to_bytes(), request_id)


def authorize(msg: R, *, identity: Identity, member: str, keys: EnclaveKeys) -> R:
    """The member's side: `msg` with its `auth` filled in for the enclave whose attested keys are `keys`."""
    request_id = os.urandom(REQUEST_ID_BYTES)
    signature = identity.sign(authorization_digest(msg, keys, member, request_id))
    return dataclasses.replace(  # type: ignore[type-var]
        msg, auth=Authorization(member=member, request_id=request_id.hex(), signature=signature.hex())
    )


def request_digest(msg: Message, keys: EnclaveKeys) -> bytes:
    """The authorization digest of an authorized request (what its answer is bound to)."""
    auth: Authorization = msg.auth  # type: ignore[attr-defined]
    return authorization_digest(msg, keys, auth.member, _request_id(auth))


def _request_id(auth: Authorization) -> bytes:
    try:
        raw = bytes.fromhex(auth.request_id)
    except ValueError:
        raise Unauthenticated("request id is not hex") from None
    if not REQUEST_ID_BYTES <= len(raw) <= MAX_REQUEST_ID_BYTES:
        raise Unauthenticated(f"request id must be {REQUEST_ID_BYTES}..{MAX_REQUEST_ID_BYTES} bytes")
    return raw


def verify_authorization(msg: Message, route: Route, consortium: Consortium, keys: EnclaveKeys) -> Member:
    """The member who signed `msg`, holding a role its route admits; `AuthError` / `Unauthenticated` otherwise.

    Checks nothing about replay: `RequestLedger.admit` does, inside the enclave.
    """
    if not isinstance(route.sender, Members):
        raise AuthError(f"{msg.type_name} is not a member request")
    auth: Authorization = msg.auth  # type: ignore[attr-defined]
    member = consortium.member(auth.member)
    if not member.roles & route.sender.roles:
        raise AuthError(f"{msg.type_name} needs a {route.sender.describe()}; {member.name!r} holds none of them")
    try:
        signature = bytes.fromhex(auth.signature)
        verify_signature(
            member.public_key,
            authorization_digest(msg, keys, member.name, _request_id(auth)),
            signature,
            what=f"{msg.type_name} by {member.name}",
        )
    except (ValueError, BadSignature, InvalidKey):
        raise Unauthenticated(
            f"{msg.type_name}: the signature of {member.name!r} does not verify for this request and enclave"
        ) from None
    return member


class RequestLedger:
    """The request ids this enclave instance accepted: each authorizes exactly one call. Ids are bound to the
    per-boot enclave key, so the ledger only has to remember the current boot's."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def admit(self, msg: Message) -> None:
        request_id = _request_id(msg.auth)  # type: ignore[attr-defined]
        if request_id in self._seen:
            raise RequestReplayed(f"{msg.type_name}: request id {request_id.hex()[:16]}… was already used")
        self._seen.add(request_id)


def _reply_digest(request: bytes, frame: bytes) -> bytes:
    return tagged_hash("caltrain/reply/v1", request, frame)


def sign_reply(identity: Identity, answer: Message, request: bytes) -> SignedReply:
    """The enclave's side: `answer`, signed and bound to the request digest it answers."""
    frame = encode(answer)
    return SignedReply(frame=frame, request_digest=request, signature=identity.sign(_reply_digest(request, frame)))


def open_signed_reply(signed: SignedReply, *, enclave_key: bytes, request: bytes, expect: type[R]) -> R:
    """The member's side: the answer inside `signed`, once it is shown to come from the enclave for this request."""
    if signed.request_digest != request:
        raise ReplyInvalid("the answer is bound to another request than the one sent")
    try:
        verify_signature(enclave_key, _reply_digest(request, signed.frame), signed.signature, what="enclave answer")
        answer = decode(signed.frame)
    except (BadSignature, InvalidKey, WireError) as exc:
        raise ReplyInvalid(f"the enclave's answer does not verify: {exc}") from None
    if not isinstance(answer, expect):
        raise ReplyInvalid(f"expected {expect.__name__} from the enclave, got {answer.type_name}")
    return answer


def _sealed_reply_info(request: bytes) -> bytes:
    return tagged_hash("caltrain/sealed-reply/v1", request)


def seal_request(msg: Message, keys: EnclaveKeys) -> SealedRequest:
    """An authorized request the host can neither read nor alter, for the enclave whose keys are `keys`."""
    return SealedRequest(ciphertext=seal_to(keys.hpke, encode(msg), _SEALED_REQUEST_INFO))


def open_sealed_request(hpke: HpkeKeyPair, envelope: SealedRequest) -> Message:
    return decode(hpke.open(envelope.ciphertext, _SEALED_REQUEST_INFO))


def seal_reply(signed: SignedReply, member: Member) -> SealedReply:
    """A signed answer readable only with the member's consortium encryption key."""
    info = _sealed_reply_info(signed.request_digest)
    return SealedReply(ciphertext=seal_to(member.encryption_key, encode(signed), info))


def open_sealed_reply(sealed: SealedReply, recipient: HpkeKeyPair, *, request: bytes) -> SignedReply:
    """The member's side: decrypt a sealed answer to its signed form (then `open_signed_reply`)."""
    signed = decode(recipient.open(sealed.ciphertext, _sealed_reply_info(request)))
    if not isinstance(signed, SignedReply):
        raise ReplyInvalid(f"a sealed answer must hold a SignedReply, not {signed.type_name}")
    return signed
