"""The request and answer format both ends share (client and enclave); the host only ever moves ciphertext.

A request is HPKE-sealed to the attested enclave key with `info` binding model id and request id. Inside:
a fresh AES-256 response key, the client's issue time (replay window), top-k and the input as float32.
The answer is AES-256-GCM under that response key, bound to model id and request id, so the host can
neither read it nor pass one request's answer off as another's.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from caltrain.crypto import aead
from caltrain.crypto.hpke import ENCAPSULATED_KEY_BYTES, HpkeKeyPair, seal_to
from caltrain.enclave.protocol import request_info, response_aad
from caltrain.inference.errors import BadRequest

_HEADER = struct.Struct(">32sQH")  # response key, issued at (ms since the epoch), top-k
_HPKE_OVERHEAD = ENCAPSULATED_KEY_BYTES + aead.TAG_BYTES
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_TOP_K = 1000


def request_size(input_shape: tuple[int, ...]) -> int:
    """Bytes of one request ciphertext for a model: fixed, so the host can reject wrong sizes unopened."""
    return _HPKE_OVERHEAD + _HEADER.size + 4 * math.prod(input_shape)


def new_request_id() -> str:
    return os.urandom(16).hex()


def check_request_id(request_id: str) -> None:
    if not _REQUEST_ID.match(request_id):
        raise BadRequest("request id must be 32 lowercase hex characters")


def seal_request(
    enclave_hpke: bytes, model_id: str, request_id: str, x: np.ndarray, top_k: int, response_key: bytes
) -> bytes:
    """Client side: encrypt one input (float32, the model's input shape) to the enclave."""
    check_request_id(request_id)
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"top-k must be 1..{MAX_TOP_K}")
    header = _HEADER.pack(response_key, int(time.time() * 1000), top_k)
    body = np.ascontiguousarray(x, dtype="<f4").tobytes()
    return seal_to(enclave_hpke, header + body, request_info(model_id, request_id))


@dataclass(frozen=True)
class OpenedRequest:
    response_key: bytes
    issued_at_ms: int
    top_k: int
    x: torch.Tensor


def open_request(
    hpke: HpkeKeyPair, model_id: str, request_id: str, ciphertext: bytes, input_shape: tuple[int, ...]
) -> OpenedRequest:
    """Enclave side: authenticate and decrypt one request; anything off raises a typed error."""
    check_request_id(request_id)
    if len(ciphertext) != request_size(input_shape):
        raise BadRequest(f"request is {len(ciphertext)} bytes; this model takes {request_size(input_shape)}")
    plain = hpke.open(ciphertext, request_info(model_id, request_id))
    response_key, issued_at_ms, top_k = _HEADER.unpack_from(plain)
    x = torch.frombuffer(bytearray(plain[_HEADER.size :]), dtype=torch.float32).view(input_shape)
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"top-k must be 1..{MAX_TOP_K}")
    if not torch.isfinite(x).all():
        raise BadRequest("input holds NaN or infinity")
    return OpenedRequest(response_key, issued_at_ms, top_k, x)


def seal_answer(response_key: bytes, model_id: str, request_id: str, answer: dict[str, Any]) -> bytes:
    return aead.encrypt(response_key, json.dumps(answer).encode(), response_aad(model_id, request_id))


def open_answer(response_key: bytes, model_id: str, request_id: str, ciphertext: bytes) -> dict[str, Any]:
    plain = aead.decrypt(response_key, ciphertext, response_aad(model_id, request_id), what="answer")
    answer: dict[str, Any] = json.loads(plain)
    return answer

