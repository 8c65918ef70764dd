"""A member's home directory: its identity and encryption keys, its containers' data keys, data-use policies and
receipts, and the enclave each dataset was attested to."""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caltrain.accountability.linkage import LinkageProof, verify_linkage_proof
from caltrain.crypto import aead
from caltrain.crypto.container import Receipt, open_container, pack_arrays, read_header, receipt_for
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.crypto.merkle import MerkleTree
from caltrain.crypto.signing import Identity
from caltrain.data.datasets import ArrayDataset
from caltrain.enclave.authority import open_signed_reply
from caltrain.enclave.consent import ApprovedModel, DataUsePolicy
from caltrain.enclave.consortium import Member, Role
from caltrain.enclave.wire import ForensicReply, SignedReply, from_json
from caltrain.errors import CaltrainError
from caltrain.models import ZOO
from caltrain.service.errors import HomeError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_policy(dataset: ArrayDataset) -> DataUsePolicy:
    """The cautious starting point `caltrain pack` writes for review: the built-in architectures that fit the
    data, whole model inside the enclave, no evaluation use, auditors may trace, nobody receives the FrontNet."""
    fitting = [s for s in ZOO.values() if s.input_shape == tuple(dataset.sample_shape)]
    return DataUsePolicy(models=[ApprovedModel(name=s.name, architecture=s.hash) for s in fitting])


@dataclass(frozen=True)
class MemberHome:
    root: Path
    name: str
    identity: Identity
    encryption: HpkeKeyPair

    @classmethod
    def init(cls, root: Path, name: str) -> MemberHome:
        if not _NAME.match(name):
            raise HomeError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if (root / "identity.pem").exists() or (root / "encryption.key").exists():
            raise HomeError(f"{root} already holds an identity; refusing to overwrite it")
        identity, encryption = Identity.generate(), HpkeKeyPair.generate()
        files = [root / "identity.pem", root / "encryption.key", root / "profile.json"]
        try:
            root.mkdir(parents=True, exist_ok=True)
            identity.save(files[0])
            _write_private(files[1], encryption.private_bytes())
            profile = {"name": name, "public_key": identity.public_key.hex(),
                       "encryption_key": encryption.public_bytes.hex()}
            files[2].write_text(json.dumps(profile) + "\n")
        except OSError as exc:
            for path in files:  # none of them existed: leave no half home behind
                with contextlib.suppress(OSError):
                    path.unlink()
            raise HomeError(f"cannot create a home in {root}: {exc.strerror or exc}") from None
        return cls(root, name, identity, encryption)

    @classmethod
    def load(cls, root: Path) -> MemberHome:
        try:
            profile = json.loads((root / "profile.json").read_text())
            identity = Identity.load(root / "identity.pem")
            encryption = HpkeKeyPair.from_private_bytes((root / "encryption.key").read_bytes())
        except (OSError, ValueError, CaltrainError) as exc:
            raise HomeError(f"{root} is not a caltrain home (run `caltrain participant init`): {exc}") from None
        if (profile.get("public_key"), profile.get("encryption_key")) != (
            identity.public_key.hex(),
            encryption.public_bytes.hex(),
        ):
            raise HomeError(f"{root}: profile.json does not match the keys in this home")
        return cls(root, str(profile["name"]), identity, encryption)

    def member(self, roles: frozenset[Role]) -> Member:
        """This home as a consortium entry."""
        return Member(self.name, roles, self.identity.public_key, self.encryption.public_bytes)

    def pack(self, dataset: ArrayDataset, out: Path, *, dataset_id: str | None = None) -> Receipt:
        """Encrypt and sign `dataset` into a new container; keep its data key, receipt and a default data-use
        policy (to review before submitting) in this home. Writes nothing if any of them exists already."""
        dataset_id = dataset_id or f"{self.name}-{os.urandom(4).hex()}"
        targets = [out, self._key_path(dataset_id), self._receipt_path(dataset_id), self.policy_path(dataset_id)]
        taken = [p for p in targets if p.exists()]
        if taken:
            raise HomeError(f"{taken[0]} exists; refusing to overwrite it (pick another --dataset-id or --out)")
        if not out.parent.is_dir():
            raise HomeError(f"folder {out.parent} does not exist")
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
        header, signature = read_header(container)
        receipt = receipt_for(header, signature)
        written: list[Path] = []
        try:  # each file appears whole or not at all, none replaces one that exists; on a failure none stays
            for path, data in (
                (out, container),
                (self._key_path(dataset_id), data_key),
                (self._receipt_path(dataset_id), receipt.to_json().encode()),
                (self.policy_path(dataset_id), json.dumps(default_policy(dataset).to_dict(), indent=2).encode()),
            ):
                _publish_new(path, data)
                written.append(path)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            raise HomeError(f"cannot write {exc.filename or out}: {exc.strerror or exc}; nothing was written") \
                from None
        return receipt

    def policy_path(self, dataset_id: str) -> Path:
        return self.root / "policies" / f"{dataset_id}.json"

    def policy(self, dataset_id: str) -> DataUsePolicy:
        return DataUsePolicy.load(self.policy_path(dataset_id))

    def remember_enclave(self, dataset_id: str, enclave: dict[str, str]) -> None:
        """Keep the identity of the enclave this dataset was attested to: later proofs must be signed by it."""
        path = self.root / "receipts" / f"{dataset_id}.enclave.json"
        _atomic_write(path, json.dumps(enclave, sort_keys=True).encode())

    def enclave_for(self, dataset_id: str) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads((self.root / "receipts" / f"{dataset_id}.enclave.json").read_text())
        except OSError:
            raise HomeError(f"no attested enclave recorded for dataset {dataset_id!r}: was it submitted?") from None
        return data

    def verify_trace(self, trace: dict[str, Any], containers: list[Path]) -> int:
        """Check, offline, a forensic report that names this member: first that the enclave attested at submission
        signed the whole report; then every answer record naming this member is in the log that enclave signed
        for the traced job, and its instance hash is one this member committed to at upload (rebuilt from its own
        containers). Returns how many records were checked; raises on the first failure."""
        trees: dict[str, tuple[bytes, MerkleTree]] = {}
        for path in containers:
            blob = path.read_bytes()
            header, _ = read_header(blob)
            opened = open_container(blob, self.data_key(header.dataset_id), participant_key=self.identity.public_key)
            trees[f"{self.name}/{header.dataset_id}"] = (header.merkle_root, MerkleTree(list(opened.record_hashes)))
        if not trees:
            raise HomeError("pass the container(s) of yours the report may name")
        enclaves = {json.dumps(self.enclave_for(d.partition("/")[2]), sort_keys=True) for d in trees}
        if len(enclaves) != 1:
            raise HomeError("your containers were submitted to different enclaves; verify one enclave's report at once")
        enclave = json.loads(enclaves.pop())
        try:
            signed = from_json(SignedReply, trace["signed"])
        except (KeyError, TypeError) as exc:
            raise HomeError(f"not a trace report written by `caltrain trace` (no signed answer): {exc!r}") from None
        report = open_signed_reply(
            signed, enclave_key=bytes.fromhex(enclave["signing_key"]), request=signed.request_digest,
            expect=ForensicReply,
        ).report
        checked = 0
        for answer in report["answers"]:
            for entry in answer["records"]:
                proof = LinkageProof.from_dict(entry)
                if proof.record.contributor != self.name:
                    continue
                if proof.record.dataset_id not in trees:
                    raise HomeError(f"an answer names your dataset {proof.record.dataset_id!r}: pass its container")
                root, tree = trees[proof.record.dataset_id]
                verify_linkage_proof(
                    proof,
                    bytes.fromhex(enclave["signing_key"]),
                    measurement=bytes.fromhex(enclave["measurement"]),
                    job_id=str(report["job_id"]),
                    contributor=self.name,
                    receipt_root=root,
                    receipt_proof=tree.proof(proof.record.dataset_index),
                )
                checked += 1
        return checked

    def _key_path(self, dataset_id: str) -> Path:
        return self.root / "keys" / f"{dataset_id}.key"

    def _receipt_path(self, dataset_id: str) -> Path:
        return self.root / "receipts" / f"{dataset_id}.json"

    def data_key(self, dataset_id: str) -> bytes:
        try:
            return self._key_path(dataset_id).read_bytes()
        except OSError:
            raise HomeError(f"no data key for dataset {dataset_id!r} in {self.root}") from None

    def receipt(self, dataset_id: str) -> Receipt:
        try:
            return Receipt.from_json(self._receipt_path(dataset_id).read_text())
        except OSError:
            raise HomeError(f"no receipt for dataset {dataset_id!r} in {self.root}: not packed here") from None


def _publish_new(path: Path, data: bytes) -> None:
    """Write a new file (owner-only) through a temporary one, then link it into place: a crash leaves no torn
    file, and an existing file is never replaced (`FileExistsError`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only; never replaces an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
