"""HPKE sealing and key wrapping: only the right recipient key with the right info/context opens."""

from __future__ import annotations

import pytest

from caltrain.crypto import aead
from caltrain.crypto.errors import IntegrityError, InvalidKey, KeyUnwrapError
from caltrain.crypto.hpke import HpkeKeyPair, seal_to, wrap_key


def test_seal_open_round_trip() -> None:
    pair = HpkeKeyPair.generate()
    assert len(pair.public_bytes) == 32
    ciphertext = seal_to(pair.public_bytes, b"inference request", b"req/1")
    assert pair.open(ciphertext, b"req/1") == b"inference request"
    assert seal_to(pair.public_bytes, b"x", b"i") != seal_to(pair.public_bytes, b"x", b"i")  # fresh ephemeral


def test_open_rejects_wrong_key_info_and_tampering() -> None:
    pair = HpkeKeyPair.generate()
    ciphertext = seal_to(pair.public_bytes, b"secret", b"info")
    with pytest.raises(IntegrityError):
        HpkeKeyPair.generate().open(ciphertext, b"info")
    with pytest.raises(IntegrityError):
        pair.open(ciphertext, b"other info")
    for i in (0, 31, 32, len(ciphertext) - 1):
        tampered = bytearray(ciphertext)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError):
            pair.open(bytes(tampered), b"info")
    with pytest.raises(IntegrityError):
        pair.open(ciphertext[:20], b"info")


def test_wrap_unwrap_is_bound_to_recipient_and_context() -> None:
    enclave = HpkeKeyPair.generate()
    data_key = aead.new_key()
    wrapped = wrap_key(data_key, enclave.public_bytes, context=b"dataset-a/alice")
    assert enclave.unwrap_key(wrapped, context=b"dataset-a/alice") == data_key
    with pytest.raises(KeyUnwrapError):
        enclave.unwrap_key(wrapped, context=b"dataset-b/alice")
    with pytest.raises(KeyUnwrapError):
        HpkeKeyPair.generate().unwrap_key(wrapped, context=b"dataset-a/alice")
    with pytest.raises(KeyUnwrapError):
        enclave.unwrap_key(wrapped[:-1] + bytes([wrapped[-1] ^ 1]), context=b"dataset-a/alice")


def test_wrapped_key_is_not_a_plain_hpke_message_and_vice_versa() -> None:
    enclave = HpkeKeyPair.generate()
    context = b"dataset-a/alice"
    with pytest.raises(IntegrityError):
        enclave.open(wrap_key(aead.new_key(), enclave.public_bytes, context=context), context)
    with pytest.raises(KeyUnwrapError):
        enclave.unwrap_key(seal_to(enclave.public_bytes, aead.new_key(), context), context=context)


def test_key_lengths_are_checked() -> None:
    enclave = HpkeKeyPair.generate()
    with pytest.raises(InvalidKey):
        seal_to(b"\x01" * 31, b"x", b"")
    with pytest.raises(InvalidKey):
        wrap_key(b"\x00" * 16, enclave.public_bytes, context=b"c")
    assert enclave.public_bytes.hex()[:16] in repr(enclave)
