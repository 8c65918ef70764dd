"""State restored at boot is handed out only as the kind its module stored (`EnclaveContext.extension`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from caltrain.enclave.boot import boot
from caltrain.enclave.datastore import DatasetStore
from caltrain.enclave.ingest import STORE, restore_datasets
from caltrain.training.enclave_side import JobRegistry
from tests.helpers import People


def test_extension_returns_the_stored_state_and_refuses_another_kind(people: People, tmp_path: Path) -> None:
    config = tmp_path / "consortium.json"
    config.write_bytes(people.consortium.canonical_bytes())
    ctx = boot(state_dir=tmp_path, backend="simulated", config_path=config)
    restore_datasets(ctx)
    assert ctx.extension(STORE, DatasetStore) is ctx.extensions[STORE]
    with pytest.raises(TypeError, match="not JobRegistry"):
        ctx.extension(STORE, JobRegistry)
