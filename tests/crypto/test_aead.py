"""AES-256-GCM envelopes: round trip, and every wrong input is an `IntegrityError` or `InvalidKey`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caltrain.crypto import aead
from caltrain.crypto.errors import IntegrityError, InvalidKey


@given(st.binary(max_size=256), st.binary(max_size=64))
def test_round_trip(plaintext: bytes, aad: bytes) -> None:
    key = aead.new_key()
    blob = aead.encrypt(key, plaintext, aad)
    assert len(blob) == aead.NONCE_BYTES + len(plaintext) + aead.TAG_BYTES
    assert aead.decrypt(key, blob, aad) == plaintext
    assert aead.decrypt(key, memoryview(blob), aad) == plaintext


def test_random_nonce_per_blob_and_explicit_nonce_is_used() -> None:
    key = aead.new_key()
    assert aead.encrypt(key, b"x", b"") != aead.encrypt(key, b"x", b"")
    nonce = bytes(range(12))
    blob = aead.encrypt(key, b"x", b"", nonce)
    assert blob[:12] == nonce and blob == aead.encrypt(key, b"x", b"", nonce)


def test_wrong_key_and_wrong_aad_are_rejected() -> None:
    key = aead.new_key()
    blob = aead.encrypt(key, b"secret", b"context-a")
    with pytest.raises(IntegrityError, match="failed authentication"):
        aead.decrypt(aead.new_key(), blob, b"context-a")
    with pytest.raises(IntegrityError):
        aead.decrypt(key, blob, b"context-b")


@given(st.data())
def test_any_bit_flip_is_rejected(data: st.DataObject) -> None:
    key = aead.new_key()
    blob = bytearray(aead.encrypt(key, b"some plaintext", b"aad"))
    position = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[position // 8] ^= 1 << (position % 8)
    with pytest.raises(IntegrityError):
        aead.decrypt(key, bytes(blob), b"aad")


def test_short_blob_and_bad_lengths() -> None:
    key = aead.new_key()
    with pytest.raises(IntegrityError, match="shorter"):
        aead.decrypt(key, b"\x00" * 27, b"")
    with pytest.raises(InvalidKey):
        aead.encrypt(b"\x00" * 16, b"x", b"")
    with pytest.raises(InvalidKey):
        aead.decrypt(b"\x00" * 31, b"\x00" * 40, b"")
    with pytest.raises(InvalidKey):
        aead.encrypt(key, b"x", b"", b"\x00" * 8)
    assert len(aead.new_key()) == 32 and aead.new_key() != aead.new_key()
