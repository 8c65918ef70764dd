"""Ingest throughput: opening (verifying, decrypting) a participant container vs raw AES-GCM on its bytes.

Run: python benchmarks/ingest_throughput.py [size_mb] [repetitions]. The last line is a JSON summary.
"""

from __future__ import annotations

import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable

from caltrain.crypto import aead
from caltrain.crypto.container import ContainerHeader, chunk_aad, open_container, pack_arrays, read_header
from caltrain.crypto.hashing import sha256
from caltrain.crypto.signing import Identity

PAYLOAD_SIZE = 3136  # a 1x28x28 float32 image


def make_container(size_mb: float, identity: Identity, data_key: bytes) -> bytes:
    """A container of random records totalling about `size_mb` megabytes of payload."""
    count = int(size_mb * 1e6) // PAYLOAD_SIZE
    return pack_arrays(
        os.urandom(count * PAYLOAD_SIZE),
        [i % 10 for i in range(count)],
        payload_size=PAYLOAD_SIZE,
        dataset_id="bench",
        identity=identity,
        participant_id="bench",
        data_key=data_key,
        schema={"shape": [1, 28, 28], "dtype": "float32", "classes": 10},
    )


def chunk_views(blob: bytes, header: ContainerHeader) -> list[memoryview]:
    """The encrypted chunks (nonce || ciphertext || tag) of a container, for the raw AES-GCM baseline."""
    view = memoryview(blob)
    (header_length,) = struct.unpack_from(">I", view, 4)
    offset, out = 8 + header_length + 64, []
    for _ in range(header.chunk_count):
        (length,) = struct.unpack_from(">I", view, offset)
        out.append(view[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return out


def raw_aesgcm(data_key: bytes, chunks: list[memoryview], aads: list[bytes]) -> None:
    aes = aead.cipher(data_key)
    for chunk, aad in zip(chunks, aads, strict=True):
        aead.decrypt_with(aes, chunk, aad)


def timed_mb_s(label: str, fn: Callable[[], object], megabytes: float, repetitions: int) -> float:
    """Median MB/s of `fn` over `repetitions` runs, printing each run."""
    rates = []
    for i in range(repetitions):
        start = time.perf_counter()
        fn()
        rate = megabytes / (time.perf_counter() - start)
        rates.append(rate)
        print(f"{label} run {i + 1}: {rate:8.1f} MB/s")
    return statistics.median(rates)


def measure(size_mb: float = 200.0, repetitions: int = 5) -> dict[str, float]:
    identity, data_key = Identity.generate(), aead.new_key()
    blob = make_container(size_mb, identity, data_key)
    megabytes = len(blob) / 1e6
    header, _ = read_header(blob)
    header_hash = sha256(blob[8 : 8 + struct.unpack_from(">I", blob, 4)[0]])
    aads = [chunk_aad(header_hash, i, header.chunk_count) for i in range(header.chunk_count)]
    chunks = chunk_views(blob, header)
    raw = timed_mb_s("raw aes-gcm", lambda: raw_aesgcm(data_key, chunks, aads), megabytes, repetitions)

    def open_once() -> object:
        return open_container(
            blob, data_key, participant_key=identity.public_key, expected_dataset_id="bench"
        )

    opened = timed_mb_s("open_container", open_once, megabytes, repetitions)
    return {"open_mb_s": round(opened, 1), "raw_aesgcm_mb_s": round(raw, 1), "ratio": round(opened / raw, 3),
            "size_mb": round(megabytes, 1)}


def main() -> None:
    size_mb = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0
    repetitions = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(json.dumps(measure(size_mb, repetitions)))


if __name__ == "__main__":
    main()
