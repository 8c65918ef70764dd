"""What runs inside the enclave, and its measurement.

The measurement is SHA-256 over every trusted source file (sorted relative paths and contents) and the
canonical enclave configuration. It is reproducible from a source checkout (`caltrain measure`). Under
Gramine the hardware measures the same files as trusted files; third-party libraries (torch, cryptography)
are measured there too, but not by this simulated measurement (README: simulation caveats).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from caltrain.enclave.consortium import Consortium

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Source trees loaded into the enclave process. Host-only layers (service, cli, exposure) are not trusted code.
TRUSTED_SOURCES = (
    "__init__.py",
    "errors.py",
    "crypto",
    "attestation",
    "enclave",
    "models",
    "data",
    "training",
    "inference",
    "accountability",
)

CONFIG_FILE = "enclave-config.json"

# Modules the enclave imports at start; each registers its calls (ECALLs) with the dispatcher.
ECALL_MODULES = (
    "caltrain.enclave.ingest",
    "caltrain.training.enclave_side",
    "caltrain.accountability.enclave_side",
    "caltrain.inference.enclave_side",
)


@dataclass(frozen=True)
class EnclaveConfig:
    """The enclave's measured configuration."""

    consortium: Consortium = field(default_factory=Consortium)

    @classmethod
    def from_consortium_file(cls, path: Path) -> EnclaveConfig:
        return cls(Consortium.load(path))

    def canonical_bytes(self) -> bytes:
        doc = {"format": "caltrain-enclave-config/v1", "consortium": json.loads(self.consortium.canonical_bytes())}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def trusted_files(root: Path = PACKAGE_ROOT) -> list[Path]:
    files: list[Path] = []
    for name in TRUSTED_SOURCES:
        path = root / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def measure(config: EnclaveConfig, root: Path = PACKAGE_ROOT) -> str:
    h = hashlib.sha256(b"caltrain-measurement/v1\0")
    for path in trusted_files(root):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big"))
        h.update(data)
    cfg = config.canonical_bytes()
    h.update(len(cfg).to_bytes(8, "big") + cfg)
    return h.hexdigest()
