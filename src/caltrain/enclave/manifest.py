"""What runs inside the enclave, and its measurement.

The measured code is derived, never listed by hand: the static import closure of the enclave's entry module and
the modules that register its calls, following every `import` of a caltrain module (those inside functions too)
and the package `__init__` files on the way. The enclave process refuses to import any caltrain module outside
that set (`MeasuredImportsOnly`), so what it measures is what it runs, and a host-only module (service, cli,
exposure, the research baselines) can change without changing the measurement.

The measurement is SHA-256 over those files (sorted relative paths and contents) and the canonical enclave
configuration. It is reproducible from a source checkout (`caltrain measure`). Under Gramine the hardware
measures the source tree as trusted files; third-party libraries (torch, cryptography) are measured there too,
but not by this simulated measurement (README: simulation caveats).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.machinery
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

from caltrain.enclave.consortium import Consortium

PACKAGE = "caltrain"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = "enclave-config.json"

# Modules the enclave imports at start; each registers its calls (ECALLs) with the dispatcher.
ECALL_MODULES = (
    "caltrain.enclave.ingest",
    "caltrain.training.enclave_side",
    "caltrain.accountability.enclave_side",
    "caltrain.inference.enclave_side",
    "caltrain.training.enclave_distributed",
    "caltrain.accountability.sharded",
)
ENTRY_MODULES = ("caltrain.enclave.main", *ECALL_MODULES)


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


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(name: str, path: Path) -> set[str]:
    """Every module name `path` (module `name`) may import: absolute and relative, `from x import submodule`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def measured_modules(roots: Sequence[str] = ENTRY_MODULES, root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """The caltrain modules the enclave may load: the import closure of `roots`, with their parent packages."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo.extend(parents + sorted(_imported(name, path)))
    return seen


@cache
def trusted_files(root: Path = PACKAGE_ROOT) -> tuple[Path, ...]:
    return tuple(sorted(set(measured_modules(root=root).values()), key=lambda p: p.relative_to(root).as_posix()))


def measure(config: EnclaveConfig, root: Path = PACKAGE_ROOT) -> str:
    h = hashlib.sha256(b"caltrain-measurement/v2\0")
    for path in trusted_files(root):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big"))
        h.update(data)
    cfg = config.canonical_bytes()
    h.update(len(cfg).to_bytes(8, "big") + cfg)
    return h.hexdigest()


class UnmeasuredImport(ImportError):
    """The enclave tried to load a caltrain module outside its measured set."""


class MeasuredImportsOnly(importlib.abc.MetaPathFinder):
    """Installed first on `sys.meta_path` in the enclave process: a caltrain module outside the measured set is
    refused (it could not have been checked by anyone who verified the measurement)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] == PACKAGE and fullname not in self.allowed:
            raise UnmeasuredImport(f"the enclave loads only measured code; {fullname} is not in its import closure")
        return None  # let the normal finders load it


def guard_imports() -> None:
    """Refuse every unmeasured caltrain import from now on, and check none happened before."""
    allowed = measured_modules()
    loaded = {name for name in sys.modules if name.partition(".")[0] == PACKAGE}
    if loaded - set(allowed):
        raise UnmeasuredImport(f"unmeasured caltrain modules already loaded: {sorted(loaded - set(allowed))}")
    sys.meta_path.insert(0, MeasuredImportsOnly(allowed))
