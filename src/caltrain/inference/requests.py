"""The session, request and answer format both ends share (client and enclave); the host only moves ciphertext.

A client opens a session once: a fresh 32-byte session key and its issue time, HPKE-sealed to the attested
enclave key with `info` binding the session id (one X25519 per session, not per request). Both ends derive
the session's request key from it with HKDF. A request is AES-256-GCM under that key, its associated data
binding model id, session id, the request's counter and top-k; the plaintext is the float32 input and
nothing else, so the enclave decrypts it straight into its batch. An answer is AES-256-GCM under a key
HKDF-derives from the session key for that one request, bound to (model, session, counter): the host can
neither read it nor pass one request's answer off as another's.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import struct
import time
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from caltrain.crypto import aead
from caltrain.crypto.hpke import ENCAPSULATED_KEY_BYTES, HpkeKeyPair, seal_to
from caltrain.enclave.protocol import request_aad, request_key_info, response_context, session_info
from caltrain.inference.errors import BadRequest

_SESSION = struct.Struct(">32sQ")  # session key, issued at (ms since the epoch)
SESSION_SIZE = ENCAPSULATED_KEY_BYTES + _SESSION.size + aead.TAG_BYTES
_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_TOP_K = 1000
MAX_COUNTER = (1 << 63) - 1


def request_size(input_shape: tuple[int, ...]) -> int:
    """Bytes of one request ciphertext for a model: fixed, so the host can reject wrong sizes unopened."""
    return aead.NONCE_BYTES + 4 * math.prod(input_shape) + aead.TAG_BYTES


def check_request(session_id: str, counter: int, top_k: int) -> None:
    """The clear fields of a request (all bound into its associated data), checked before anything opens."""
    if not _ID.match(session_id):
        raise BadRequest("session id must be 32 lowercase hex characters")
    if not 1 <= counter <= MAX_COUNTER:
        raise BadRequest(f"request counter must be 1..{MAX_COUNTER}")
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"top-k must be 1..{MAX_TOP_K}")


def _derive(session_key: bytes, info: bytes) -> AESGCM:
    """HKDF-SHA256 expand only: the session key is already a uniform random key, so the extract step adds
    nothing (RFC 5869 §3.3) and skipping it makes each answer key 3 µs instead of 9."""
    return aead.cipher(HKDFExpand(hashes.SHA256(), aead.KEY_BYTES, info=info).derive(session_key))


def request_cipher(session_key: bytes, session_id: str) -> AESGCM:
    """The session's request key: derived once per session, on both ends."""
    return _derive(session_key, request_key_info(session_id))


def seal_answer(session_key: bytes, model_id: str, session_id: str, counter: int, answer: dict[str, Any]) -> bytes:
    """Enclave side: encrypt one answer under its own request's key."""
    context = response_context(model_id, session_id, counter)
    return aead.encrypt_with(_derive(session_key, context), json.dumps(answer).encode(), context)


def open_session(hpke: HpkeKeyPair, session_id: str, ciphertext: bytes) -> tuple[bytes, int]:
    """Enclave side: the session key and its issue time; `IntegrityError` unless sealed for this session id."""
    if not _ID.match(session_id) or len(ciphertext) != SESSION_SIZE:
        raise BadRequest(f"a session opens with a 32-hex id and {SESSION_SIZE} bytes of HPKE ciphertext")
    session_key, issued_at_ms = _SESSION.unpack(hpke.open(ciphertext, session_info(session_id)))
    return session_key, issued_at_ms


class ClientSession:
    """A client's side of one session: its key and the next request counter (thread-safe, never reused)."""

    def __init__(self, enclave_hpke: bytes) -> None:
        self.session_id = os.urandom(16).hex()
        self._key = aead.new_key()
        self.sealed = seal_to(
            enclave_hpke, _SESSION.pack(self._key, int(time.time() * 1000)), session_info(self.session_id)
        )
        self._requests = request_cipher(self._key, self.session_id)
        self._counter = itertools.count(1)  # next() is atomic under the GIL: concurrent callers never share one

    def seal(self, model_id: str, x: np.ndarray, top_k: int) -> tuple[int, bytes]:
        """Encrypt one input (float32, the model's input shape); returns its counter and ciphertext."""
        counter = next(self._counter)
        check_request(self.session_id, counter, top_k)
        body = np.ascontiguousarray(x, dtype="<f4").tobytes()
        return counter, aead.encrypt_with(self._requests, body, request_aad(model_id, self.session_id, counter, top_k))

    def open_answer(self, model_id: str, counter: int, ciphertext: bytes) -> dict[str, Any]:
        context = response_context(model_id, self.session_id, counter)
        answer: dict[str, Any] = json.loads(
            aead.decrypt_with(_derive(self._key, context), ciphertext, context, what="answer")
        )
        return answer
