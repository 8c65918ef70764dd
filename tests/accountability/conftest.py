"""Shared fixtures: a small signed linkage log, and one backdoored digits model trained once per session."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
import torch

from caltrain.accountability.fingerprints import l2_normalize
from caltrain.accountability.linkage import LinkageLog
from caltrain.crypto.hashing import record_commitment
from caltrain.crypto.sealing import Sealer, derive_sealing_key
from caltrain.crypto.signing import Identity

MEASUREMENT = bytes(range(32))


@pytest.fixture(scope="session", autouse=True)
def _single_thread() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


@pytest.fixture(scope="session")
def enclave() -> Identity:
    return Identity.generate()


@pytest.fixture()
def sealer() -> Sealer:
    return Sealer(derive_sealing_key(b"s" * 32, MEASUREMENT), MEASUREMENT)


def participant_records(n: int, seed: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """A participant's record payloads, labels, and commitments as its receipt would hold them."""
    rng = np.random.default_rng(seed)
    payloads = [rng.bytes(16) for _ in range(n)]
    labels = rng.integers(0, 3, n)
    salt = rng.bytes(32)
    hashes = [record_commitment(salt, i, p, int(lbl)) for i, (p, lbl) in enumerate(zip(payloads, labels, strict=True))]
    return payloads, labels, np.array(hashes, dtype=object)


@pytest.fixture()
def log(enclave: Identity) -> LinkageLog:
    """12 records from two participants ("alice": dataset a, "bob": dataset b), 8-d fingerprints."""
    out = LinkageLog(enclave, log_id=b"L" * 16, job_id="job-L", model_hash=b"M" * 32, measurement=MEASUREMENT)
    for name, seed in (("alice", 1), ("bob", 2)):
        _, labels, hashes = participant_records(6, seed)
        fps = l2_normalize(np.random.default_rng(seed).standard_normal((6, 8)).astype(np.float32))
        out.append(record_ids=[f"{name}/{i}" for i in range(6)], contributors=[name] * 6, labels=labels,
                   instance_hashes=list(hashes), dataset_ids=[f"ds-{name}"] * 6, dataset_indexes=np.arange(6),
                   fingerprints=fps)
    return out
