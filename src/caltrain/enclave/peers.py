"""Enclave to enclave: mutual attestation before any key moves, and the grant sealed to an attested peer.

A peer is accepted only if its evidence verifies under `peer_policy`: the same platform and the same measurement
as this enclave. The measurement covers the enclave's code and its configuration, which holds the consortium
file, so a peer with other code, or serving another consortium, is refused with the attestation error that says
which. On the simulated backend the platform key of this enclave's own evidence stands in for the vendor's root
(every enclave of one deployment runs on the same simulated platform); on SGX the pinned Intel root and the
collateral decide, as for participants. Nonces are drawn inside and accepted once, so evidence cannot be
replayed from an earlier join.

A grant (a job's keys and spec) is signed by the granting enclave's attested identity key and HPKE-sealed to the
attested HPKE key of the peer, bound to a context (job, rank, world): only that peer opens it, and it accepts it
only from the enclave it attested in turn.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from caltrain.attestation.backends.simulated import parse_quote
from caltrain.attestation.evidence import Evidence
from caltrain.attestation.policy import Policy, SimulatedPolicy
from caltrain.attestation.verifier import NONCE_BYTES, NonceTracker, Verifier
from caltrain.crypto.errors import BadSignature, CryptoError, InvalidKey
from caltrain.crypto.hashing import report_data_for, tagged_hash
from caltrain.crypto.hpke import seal_to
from caltrain.crypto.signing import SIGNATURE_BYTES, verify_signature
from caltrain.enclave.errors import GrantRefused
from caltrain.enclave.protocol import EnclaveKeys
from caltrain.enclave.runtime import EnclaveContext
from caltrain.errors import AttestationError

_GRANT_TAG = "caltrain/peer-grant/v1"




def peer_policy(ctx: EnclaveContext) -> Policy:
    """What a peer must show: this platform, this measurement (hence this code and this consortium)."""
    policy: dict[str, object] = {"platforms": [ctx.platform], "measurements": [ctx.measurement]}
    if ctx.simulated:
        quote, _ = ctx.collector.collect(bytes(64))
        body, _, _ = parse_quote(quote)
        policy |= {"allow_simulated": True, "simulated": SimulatedPolicy(platform_keys=[body["platform_key"]])}
    return Policy.model_validate(policy)


def own_evidence(ctx: EnclaveContext, nonce: bytes) -> Evidence:
    """This enclave's evidence binding its public keys to a peer's `nonce`."""
    keys = ctx.public_keys.to_bytes()
    quote, supporting = ctx.collector.collect(report_data_for(keys, nonce))
    return Evidence(ctx.platform, quote, keys, nonce, supporting)


def evidence_fields(evidence: Evidence) -> dict[str, Any]:
    """Evidence as the wire's peer messages carry it (platform, quote, supporting data in base64, keys)."""
    return {"platform": evidence.platform, "quote": evidence.quote, "keys": evidence.enclave_public_key,
            "supporting": {k: base64.b64encode(v).decode() for k, v in evidence.supporting.items()}}


def decode_supporting(supporting: dict[str, str]) -> dict[str, bytes]:
    try:
        return {k: base64.b64decode(v, validate=True) for k, v in supporting.items()}
    except ValueError:
        raise AttestationError("peer evidence: supporting data is not base64") from None


class PeerVerifier:
    """Issues this enclave's nonces for peers and verifies each peer's evidence once, under `peer_policy`."""

    def __init__(self, ctx: EnclaveContext) -> None:
        self._verifier = Verifier(peer_policy(ctx), nonces=NonceTracker())

    def issue(self) -> bytes:
        return self._verifier.new_nonce()

    def verify(self, evidence: Evidence) -> EnclaveKeys:
        """The peer's attested keys; an `AttestationError` naming the failed check otherwise."""
        if len(evidence.nonce) != NONCE_BYTES:
            raise AttestationError(f"peer evidence must answer a {NONCE_BYTES}-byte nonce")
        verified = self._verifier.verify(evidence)
        try:
            return EnclaveKeys.from_bytes(verified.public_key)
        except InvalidKey as exc:
            raise AttestationError(f"peer evidence binds malformed keys: {exc}") from None


def grant_context(job_id: str, rank: int, world: int) -> bytes:
    return tagged_hash(_GRANT_TAG, job_id.encode(), str(rank).encode(), str(world).encode())


def _grant_digest(context: bytes, recipient: EnclaveKeys, payload: bytes) -> bytes:
    return tagged_hash(_GRANT_TAG, context, recipient.to_bytes(), payload)


def seal_grant(ctx: EnclaveContext, payload: dict[str, object], *, recipient: EnclaveKeys, context: bytes) -> bytes:
    """`payload` (JSON) signed by this enclave and sealed to the attested `recipient`, for `context` only."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    signature = ctx.identity.sign(_grant_digest(context, recipient, body))
    return seal_to(recipient.hpke, struct.pack(">Q", len(body)) + body + signature, context)


def open_grant(ctx: EnclaveContext, sealed: bytes, *, sender: EnclaveKeys, context: bytes) -> dict[str, Any]:
    """The payload of a grant sealed to this enclave for `context` and signed by the attested `sender`."""
    try:
        raw = ctx.hpke.open(sealed, context)
        (length,) = struct.unpack_from(">Q", raw)
        body, signature = raw[8 : 8 + length], raw[8 + length :]
        if len(signature) != SIGNATURE_BYTES:
            raise GrantRefused("the grant's signature has the wrong length")
        verify_signature(sender.signing, _grant_digest(context, ctx.public_keys, body), signature, what="peer grant")
        payload = json.loads(body)
    except (CryptoError, BadSignature, struct.error, ValueError) as exc:
        raise GrantRefused(f"the grant does not open for this enclave from the attested peer: {exc}") from None
    if not isinstance(payload, dict):
        raise GrantRefused("a grant holds a JSON object")
    return payload

