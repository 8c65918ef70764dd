"""Ingest throughput: opening (verifying, decrypting) a participant container vs raw AES-GCM on its bytes.

Run: PYTHONPATH=src python benchmarks/ingest_throughput.py [size_mb] [repetitions]. Each repetition packs a
fresh container (the enclave accepts a container once) and times, back to back on the same bytes: raw AES-GCM
decryption of its chunks (the baseline), `open_container` in this process, and an ingest call to a real
simulated enclave process, whose reply carries the time it spent inside `open_container` and persisting. The
machine is shared, so each figure is a median and every ratio compares measurements of the same repetitions.
The last line is a JSON summary.
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from caltrain.crypto import aead
from caltrain.crypto.container import ContainerHeader, chunk_aad, open_container, pack_arrays, read_header
from caltrain.crypto.hashing import sha256
from caltrain.crypto.hpke import HpkeKeyPair, wrap_key
from caltrain.crypto.signing import Identity
from caltrain.enclave.authority import UNSIGNED, authorize
from caltrain.enclave.consent import DataUsePolicy
from caltrain.enclave.consortium import Consortium, DatasetSchema, Member, Role
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.protocol import wrap_context
from caltrain.enclave.wire import DatasetReceipt, IngestDataset

PAYLOAD_SIZE = 3136  # a 1x28x28 float32 image
PARTICIPANT = "bench"


def make_container(size_mb: float, identity: Identity, data_key: bytes, dataset_id: str = "bench") -> bytes:
    """A container of random records totalling about `size_mb` megabytes of payload."""
    count = int(size_mb * 1e6) // PAYLOAD_SIZE
    images = np.random.default_rng(count).random(count * PAYLOAD_SIZE // 4, dtype=np.float32)  # within the schema
    return pack_arrays(
        images.tobytes(),
        [i % 10 for i in range(count)],
        payload_size=PAYLOAD_SIZE,
        dataset_id=dataset_id,
        identity=identity,
        participant_id=PARTICIPANT,
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


def raw_aesgcm_seconds(blob: bytes, data_key: bytes) -> float:
    """Seconds to AES-GCM-decrypt every chunk of `blob` (fresh output buffers, as `cryptography` allocates)."""
    header, _ = read_header(blob)
    header_hash = sha256(blob[8 : 8 + struct.unpack_from(">I", blob, 4)[0]])
    aads = [chunk_aad(header_hash, i, header.chunk_count) for i in range(header.chunk_count)]
    chunks = chunk_views(blob, header)
    aes = aead.cipher(data_key)
    start = time.perf_counter()
    for chunk, aad in zip(chunks, aads, strict=True):
        aead.decrypt_with(aes, chunk, aad)
    return time.perf_counter() - start


def submission(blob: bytes, dataset_id: str, identity: Identity, data_key: bytes, host: EnclaveHost) -> IngestDataset:
    """The signed upload a participant would send for `blob`, with the default data-use policy."""
    wrapped = wrap_key(data_key, host.keys.hpke, context=wrap_context(dataset_id, PARTICIPANT))
    msg = IngestDataset(container=blob, wrapped_key=wrapped, policy=DataUsePolicy().canonical_bytes(), auth=UNSIGNED)
    return authorize(msg, identity=identity, member=PARTICIPANT, keys=host.keys)


def measure(size_mb: float = 200.0, repetitions: int = 5) -> dict[str, float]:
    identity = Identity.generate()
    encryption = HpkeKeyPair.generate().public_bytes
    member = Member(PARTICIPANT, frozenset({Role.PARTICIPANT}), identity.public_key, encryption)
    consortium = Consortium((member,), DatasetSchema((1, 28, 28), 10))
    rates: dict[str, list[float]] = {"raw": [], "open": [], "enclave_open": [], "end_to_end": []}
    store_shares: list[float] = []
    with tempfile.TemporaryDirectory() as state, EnclaveHost(
        state_dir=Path(state), config=EnclaveConfig(consortium)
    ) as host:
        for i in range(repetitions):
            data_key, dataset_id = aead.new_key(), f"bench-{i}"
            blob = make_container(size_mb, identity, data_key, dataset_id)
            megabytes = len(blob) / 1e6
            raw = raw_aesgcm_seconds(blob, data_key)
            start = time.perf_counter()
            open_container(blob, data_key, participant_key=identity.public_key, expected_dataset_id=dataset_id)
            opened = time.perf_counter() - start
            msg = submission(blob, dataset_id, identity, data_key, host)
            start = time.perf_counter()
            _, info = host.call_member(msg, DatasetReceipt)
            end_to_end = time.perf_counter() - start
            for name, seconds in (("raw", raw), ("open", opened), ("enclave_open", info.open_seconds),
                                  ("end_to_end", end_to_end)):
                rates[name].append(megabytes / seconds)
            store_shares.append(info.store_seconds / end_to_end)
            print(f"run {i + 1}: raw aes-gcm {rates['raw'][-1]:7.1f} MB/s | open_container in process "
                  f"{rates['open'][-1]:6.1f} | in enclave {rates['enclave_open'][-1]:6.1f} | ingest call end to end "
                  f"{rates['end_to_end'][-1]:6.1f} (persisting {store_shares[-1]:.0%} of it)")
            del blob, msg
    med = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "enclave_open_mb_s": round(med["enclave_open"], 1),
        "end_to_end_mb_s": round(med["end_to_end"], 1),
        "open_mb_s": round(med["open"], 1),
        "raw_aesgcm_mb_s": round(med["raw"], 1),
        "ratio": round(med["enclave_open"] / med["raw"], 3),
        "end_to_end_ratio": round(med["end_to_end"] / med["raw"], 3),
        "open_ratio": round(med["open"] / med["raw"], 3),
        "store_share": round(statistics.median(store_shares), 3),
        "size_mb": round(megabytes, 1),
    }


def main() -> None:
    size_mb = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0
    repetitions = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(json.dumps(measure(size_mb, repetitions)))


if __name__ == "__main__":
    main()
