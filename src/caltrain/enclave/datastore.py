"""Ingested datasets. In enclave memory they are plaintext; at rest only the participants' own ciphertext
containers and a sealed, counter-pinned index holding their data keys and data-use policies exist, so the enclave
never writes plaintext records and an older or missing index fails closed.

Datasets are named `participant/local-id`: a participant can only ever add to its own namespace, so nobody can
claim another participant's dataset id first.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caltrain.crypto.container import ContainerHeader, OpenedContainer, open_container
from caltrain.crypto.errors import CryptoError
from caltrain.crypto.sealing import Sealer
from caltrain.enclave.consent import DataUsePolicy
from caltrain.enclave.consortium import Consortium, DatasetSchema
from caltrain.enclave.errors import DuplicateDataset, SchemaViolation, SealedStateError, UnknownDataset
from caltrain.enclave.runtime import MonotonicCounters
from caltrain.enclave.sealed_state import CountedState

INDEX_FILE = "datasets.sealed"
INDEX_LABEL = "datasets-index/v2"
INDEX_COUNTER = "datasets-index"


def qualified_id(participant: str, dataset_id: str) -> str:
    return f"{participant}/{dataset_id}"


@dataclass(frozen=True)
class IngestedDataset:
    """One participant's verified records (fixed-size payloads, labels, commitments) and its consent."""

    header: ContainerHeader
    payloads: np.ndarray  # uint8, (record_count, payload_size), read-only, rows strided (see OpenedContainer)
    labels: np.ndarray  # int64, (record_count,)
    record_hashes: tuple[bytes, ...]
    policy: DataUsePolicy

    @property
    def dataset_id(self) -> str:
        return qualified_id(self.participant, self.header.dataset_id)

    @property
    def participant(self) -> str:
        return self.header.participant_id

    def info(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "participant": self.participant,
            "record_count": self.header.record_count,
            "merkle_root": self.header.merkle_root.hex(),
            "policy_digest": self.policy.digest,
            "schema": self.header.schema,
        }

    @classmethod
    def from_opened(cls, opened: OpenedContainer, policy: DataUsePolicy) -> IngestedDataset:
        labels = np.asarray(opened.labels, dtype=np.int64)
        labels.setflags(write=False)
        return cls(opened.header, opened.payloads, labels, opened.record_hashes, policy)


def check_schema(opened: OpenedContainer, schema: DatasetSchema | None) -> None:
    """Raise `SchemaViolation` unless every record is a finite float32 array of the consortium's shape, within
    its value range, with an integer label in [0, num_classes)."""
    header = opened.header
    where = f"dataset {qualified_id(header.participant_id, header.dataset_id)}"
    if schema is None:
        raise SchemaViolation(f"{where}: the consortium declares no dataset schema, so no dataset is accepted")
    if header.payload_size != schema.payload_size:
        raise SchemaViolation(
            f"{where}: records are {header.payload_size} bytes, the schema's float32 {list(schema.shape)} is "
            f"{schema.payload_size}"
        )
    labels = np.asarray(opened.labels, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= schema.num_classes))
    if len(bad):
        raise SchemaViolation(
            f"{where}: record {bad[0]} has label {labels[bad[0]]}, outside 0..{schema.num_classes - 1}"
        )
    values = opened.payloads.view(np.float32)
    low, high = schema.value_range
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values).all(axis=1) & (values >= low).all(axis=1) & (values <= high).all(axis=1)
    bad = np.flatnonzero(~ok)
    if len(bad):
        raise SchemaViolation(f"{where}: record {bad[0]} holds NaN, infinity or values outside [{low}, {high}]")


class DatasetStore:
    """Datasets by qualified id, in ingestion order; `add` is all or nothing and survives a crash at any point."""

    def __init__(self, directory: Path, state: CountedState) -> None:
        self._dir = directory
        self._state = state
        self._entries: list[dict[str, str]] = []
        self.datasets: dict[str, IngestedDataset] = {}

    @classmethod
    def load(
        cls, directory: Path, sealer: Sealer, counters: MonotonicCounters, consortium: Consortium
    ) -> DatasetStore:
        """Re-open every dataset in the sealed index from its container on disk; fail closed on any mismatch."""
        state = CountedState(
            directory / INDEX_FILE, label=INDEX_LABEL, counter=INDEX_COUNTER, sealer=sealer, counters=counters
        )
        store = cls(directory, state)
        raw = state.load()
        for entry in json.loads(raw) if raw is not None else []:
            store.datasets[entry["dataset_id"]] = open_entry(directory, entry, consortium)
            store._entries.append(entry)
        return store

    def check_new(self, dataset_id: str) -> None:
        if dataset_id in self.datasets:
            raise DuplicateDataset(f"dataset {dataset_id!r} was already ingested; a container is accepted once")

    def add(
        self, container: bytes, data_key: bytes, opened: OpenedContainer, policy: DataUsePolicy
    ) -> IngestedDataset:
        """Persist the (still encrypted) container, then the sealed index; only then is the dataset visible."""
        dataset = IngestedDataset.from_opened(opened, policy)
        self.check_new(dataset.dataset_id)
        digest = hashlib.sha256(container).hexdigest()
        name = f"{digest}.ctd"
        _atomic_write(self._dir / name, container)
        entry = {
            "dataset_id": dataset.dataset_id,
            "participant": dataset.participant,
            "file": name,
            "sha256": digest,
            "data_key": data_key.hex(),
            "policy": policy.canonical_bytes().decode(),
        }
        entries = [*self._entries, entry]
        self._state.save(json.dumps(entries).encode())
        self._entries = entries
        self.datasets[dataset.dataset_id] = dataset
        return dataset

    def entry(self, dataset_id: str) -> dict[str, str]:
        """A dataset's sealed index entry (container file and digest, data key, policy): what an attested peer
        enclave needs to open the same container (`open_entry`)."""
        self.get(dataset_id)
        return next(dict(e) for e in self._entries if e["dataset_id"] == dataset_id)

    def get(self, dataset_id: str) -> IngestedDataset:
        try:
            return self.datasets[dataset_id]
        except KeyError:
            raise UnknownDataset(f"no ingested dataset {dataset_id!r}; have {sorted(self.datasets)}") from None


def open_entry(directory: Path, entry: dict[str, str], consortium: Consortium) -> IngestedDataset:
    """Re-open a dataset from its index entry and its container in `directory`; fail closed on any mismatch."""
    try:
        blob = (directory / entry["file"]).read_bytes()
    except OSError as exc:
        raise SealedStateError(f"container of dataset {entry['dataset_id']!r} is unreadable: {exc}") from None
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise SealedStateError(f"container file of dataset {entry['dataset_id']!r} was modified at rest")
    key = consortium.member(entry["participant"]).public_key
    try:
        opened = open_container(blob, bytes.fromhex(entry["data_key"]), participant_key=key)
    except CryptoError as exc:
        raise SealedStateError(f"dataset {entry['dataset_id']!r} no longer opens: {exc}") from None
    dataset = IngestedDataset.from_opened(opened, DataUsePolicy.from_bytes(entry["policy"].encode()))
    if dataset.dataset_id != entry["dataset_id"]:
        raise SealedStateError(f"container of dataset {entry['dataset_id']!r} holds {dataset.dataset_id!r}")
    return dataset


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
