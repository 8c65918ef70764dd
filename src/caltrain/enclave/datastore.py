"""Ingested datasets. In enclave memory they are plaintext; at rest only the participants' own ciphertext
containers and a sealed index holding their data keys exist, so the enclave never writes plaintext records.
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
from caltrain.enclave.consortium import Consortium
from caltrain.enclave.errors import DuplicateDataset, SealedStateError, UnknownDataset

INDEX_FILE = "datasets.sealed"
INDEX_LABEL = "datasets-index/v1"


@dataclass(frozen=True)
class IngestedDataset:
    """One participant's verified records: fixed-size payloads, labels, commitments."""

    header: ContainerHeader
    payloads: np.ndarray  # uint8, (record_count, payload_size), read-only, rows strided (see OpenedContainer)
    labels: np.ndarray  # int64, (record_count,)
    record_hashes: tuple[bytes, ...]

    @property
    def dataset_id(self) -> str:
        return self.header.dataset_id

    @property
    def participant(self) -> str:
        return self.header.participant_id

    def info(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "participant": self.participant,
            "record_count": self.header.record_count,
            "merkle_root": self.header.merkle_root.hex(),
            "schema": self.header.schema,
        }

    @classmethod
    def from_opened(cls, opened: OpenedContainer) -> IngestedDataset:
        labels = np.asarray(opened.labels, dtype=np.int64)
        labels.setflags(write=False)
        return cls(opened.header, opened.payloads, labels, opened.record_hashes)


class DatasetStore:
    """Datasets by id, in ingestion order; `add` is all or nothing and survives a crash at any point."""

    def __init__(self, directory: Path, sealer: Sealer) -> None:
        self._dir = directory
        self._sealer = sealer
        self._entries: list[dict[str, str]] = []
        self.datasets: dict[str, IngestedDataset] = {}

    @classmethod
    def load(cls, directory: Path, sealer: Sealer, consortium: Consortium) -> DatasetStore:
        """Re-open every dataset in the sealed index from its container on disk."""
        store = cls(directory, sealer)
        index_path = directory / INDEX_FILE
        if not index_path.exists():
            return store
        try:
            entries = json.loads(sealer.unseal_file(index_path, label=INDEX_LABEL))
        except CryptoError as exc:
            raise SealedStateError(f"sealed dataset index does not unseal: {exc}") from None
        for entry in entries:
            blob = (directory / entry["file"]).read_bytes()
            if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
                raise SealedStateError(f"container file of dataset {entry['dataset_id']!r} was modified at rest")
            key = consortium.member(entry["participant"]).public_key
            opened = open_container(
                blob, bytes.fromhex(entry["data_key"]), participant_key=key, expected_dataset_id=entry["dataset_id"]
            )
            store.datasets[entry["dataset_id"]] = IngestedDataset.from_opened(opened)
            store._entries.append(entry)
        return store

    def check_new(self, dataset_id: str) -> None:
        if dataset_id in self.datasets:
            raise DuplicateDataset(f"dataset {dataset_id!r} was already ingested; a container is accepted once")

    def add(self, container: bytes, data_key: bytes, opened: OpenedContainer) -> IngestedDataset:
        """Persist the (still encrypted) container, then the sealed index; only then is the dataset visible."""
        dataset = IngestedDataset.from_opened(opened)
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
        }
        entries = [*self._entries, entry]
        self._sealer.seal_file(self._dir / INDEX_FILE, json.dumps(entries).encode(), label=INDEX_LABEL)
        self._entries = entries
        self.datasets[dataset.dataset_id] = dataset
        return dataset

    def get(self, dataset_id: str) -> IngestedDataset:
        try:
            return self.datasets[dataset_id]
        except KeyError:
            raise UnknownDataset(f"no ingested dataset {dataset_id!r}; have {sorted(self.datasets)}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
