"""A participant's home directory: its identity, its containers' data keys, and its receipts."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caltrain.accountability.linkage import LinkageProof, verify_linkage_proof
from caltrain.crypto import aead
from caltrain.crypto.container import Receipt, open_container, pack_arrays, read_header, receipt_for
from caltrain.crypto.merkle import MerkleTree
from caltrain.crypto.signing import Identity
from caltrain.data.datasets import ArrayDataset
from caltrain.errors import CaltrainError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class HomeError(CaltrainError):
    """A participant home is missing, incomplete, or would be overwritten."""


@dataclass(frozen=True)
class ParticipantHome:
    root: Path
    name: str
    identity: Identity

    @classmethod
    def init(cls, root: Path, name: str) -> ParticipantHome:
        if not _NAME.match(name):
            raise HomeError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if (root / "identity.pem").exists():
            raise HomeError(f"{root} already holds an identity; refusing to overwrite it")
        identity = Identity.generate()
        identity.save(root / "identity.pem")
        (root / "profile.json").write_text(json.dumps({"name": name, "public_key": identity.public_key.hex()}) + "\n")
        return cls(root, name, identity)

    @classmethod
    def load(cls, root: Path) -> ParticipantHome:
        try:
            profile = json.loads((root / "profile.json").read_text())
            identity = Identity.load(root / "identity.pem")
        except (OSError, ValueError) as exc:
            raise HomeError(f"{root} is not a caltrain home (run `caltrain participant init`): {exc}") from None
        if profile.get("public_key") != identity.public_key.hex():
            raise HomeError(f"{root}: profile.json does not match identity.pem")
        return cls(root, str(profile["name"]), identity)

    def pack(self, dataset: ArrayDataset, out: Path, *, dataset_id: str | None = None) -> Receipt:
        """Encrypt and sign `dataset` into a container; keep its data key and receipt in this home."""
        dataset_id = dataset_id or f"{self.name}-{os.urandom(4).hex()}"
        data_key = aead.new_key()
        container = pack_arrays(
            dataset.x.tobytes(),
            dataset.y.tolist(),
            payload_size=int(dataset.x[0].nbytes),
            dataset_id=dataset_id,
            identity=self.identity,
            participant_id=self.name,
            data_key=data_key,
            schema={"shape": list(dataset.sample_shape), "dtype": "float32", "num_classes": dataset.num_classes},
        )
        out.write_bytes(container)
        self._write_private(self.root / "keys" / f"{dataset_id}.key", data_key)
        header, signature = read_header(container)
        receipt = receipt_for(header, signature)
        (self.root / "receipts").mkdir(exist_ok=True)
        (self.root / "receipts" / f"{dataset_id}.json").write_text(receipt.to_json())
        return receipt

    def remember_enclave(self, dataset_id: str, enclave: dict[str, str]) -> None:
        """Keep the identity of the enclave this dataset was attested to: later proofs must be signed by it."""
        (self.root / "receipts" / f"{dataset_id}.enclave.json").write_text(json.dumps(enclave, sort_keys=True))

    def enclave_for(self, dataset_id: str) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads((self.root / "receipts" / f"{dataset_id}.enclave.json").read_text())
        except OSError:
            raise HomeError(f"no attested enclave recorded for dataset {dataset_id!r}: was it submitted?") from None
        return data

    def verify_trace(self, report: dict[str, Any], containers: list[Path]) -> int:
        """Check, offline, every forensic answer that names this participant: the record is in the log signed by
        the enclave attested at submission, and its instance hash is one this participant committed to at upload
        (rebuilt from its own containers). Returns how many records were checked; raises on the first failure."""
        trees: dict[str, tuple[bytes, MerkleTree]] = {}
        for path in containers:
            blob = path.read_bytes()
            header, _ = read_header(blob)
            opened = open_container(blob, self.data_key(header.dataset_id), participant_key=self.identity.public_key)
            trees[header.dataset_id] = (header.merkle_root, MerkleTree(list(opened.record_hashes)))
        checked = 0
        for answer in report["answers"]:
            for entry in answer["records"]:
                proof = LinkageProof.from_dict(entry)
                if proof.record.contributor != self.name:
                    continue
                if proof.record.dataset_id not in trees:
                    raise HomeError(f"an answer names your dataset {proof.record.dataset_id!r}: pass its container")
                root, tree = trees[proof.record.dataset_id]
                enclave = self.enclave_for(proof.record.dataset_id)
                verify_linkage_proof(
                    proof,
                    bytes.fromhex(enclave["signing_key"]),
                    measurement=bytes.fromhex(enclave["measurement"]),
                    contributor=self.name,
                    receipt_root=root,
                    receipt_proof=tree.proof(proof.record.dataset_index),
                )
                checked += 1
        return checked

    def data_key(self, dataset_id: str) -> bytes:
        try:
            return (self.root / "keys" / f"{dataset_id}.key").read_bytes()
        except OSError:
            raise HomeError(f"no data key for dataset {dataset_id!r} in {self.root}") from None

    def receipt(self, dataset_id: str) -> Receipt:
        return Receipt.from_json((self.root / "receipts" / f"{dataset_id}.json").read_text())

    @staticmethod
    def _write_private(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
