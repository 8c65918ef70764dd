"""The enclave answers only with in-enclave methods: a host-chosen name cannot pull research baselines inside."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from caltrain.accountability import attribution
from caltrain.accountability.attribution import ENCLAVE_METHODS, CaltrainKnn, MethodRegistry, get_method
from caltrain.accountability.baselines import BASELINES, get_host_method, host_methods
from caltrain.accountability.errors import MethodAlreadyRegistered, UnknownMethod

IN_ENCLAVE = {"ours", "caltrain-knn"}
BASELINE_NAMES = {"pixel-knn", "tracin-cp-fast", "art-activation", "art-spectral", "cleanlab"}
HEAVY = ("caltrain.accountability.baselines", "caltrain.accountability.evaluation", "art", "captum", "cleanlab")
# Everything the enclave's accountability code imports (directly or through these).
ENCLAVE_MODULES = ("attribution", "enclave_side", "tracing", "linkage", "fingerprints", "search", "store", "errors")


def test_enclave_registry_holds_only_in_enclave_methods() -> None:
    assert set(attribution.available_methods()) == IN_ENCLAVE
    for name in BASELINE_NAMES:
        with pytest.raises(UnknownMethod, match="available: \\['caltrain-knn', 'ours'\\]"):
            get_method(name)


def test_host_registry_sees_both_and_names_are_disjoint() -> None:
    assert set(BASELINES.names()) == BASELINE_NAMES
    assert set(host_methods()) == IN_ENCLAVE | BASELINE_NAMES
    assert not set(BASELINES.names()) & set(ENCLAVE_METHODS.names())
    for name in IN_ENCLAVE | BASELINE_NAMES:
        assert get_host_method(name).name == name
    with pytest.raises(UnknownMethod, match="cleanlab"):
        get_host_method("oracle")


def test_registries_refuse_silent_overwrite() -> None:
    registry = MethodRegistry("test")
    registry.register(CaltrainKnn)
    with pytest.raises(MethodAlreadyRegistered):
        registry.register(CaltrainKnn)
    with pytest.raises(MethodAlreadyRegistered):
        ENCLAVE_METHODS.register(CaltrainKnn)
    assert isinstance(registry.create("caltrain-knn"), CaltrainKnn)


def test_importing_the_enclave_side_imports_no_baseline() -> None:
    code = (
        "import json, sys; import caltrain.accountability.enclave_side; "
        f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {{'art', 'captum', 'cleanlab'}} "
        f"or m in {list(HEAVY)!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("module", ENCLAVE_MODULES)
def test_enclave_modules_never_import_baselines_even_lazily(module: str) -> None:
    source = Path(attribution.__file__).with_name(f"{module}.py")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert not {m for m in imported if m in HEAVY or m.split(".")[0] in {"art", "captum", "cleanlab"}}
