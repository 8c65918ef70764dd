"""One suite, every `ServerStore`: what the job queue and the deployments rely on, in memory and in SQLite
(where it must also survive the process that wrote it)."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from caltrain.service.errors import StoreError
from caltrain.service.store import MemoryStore, ServerStore, SqliteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerStore]:
    s: ServerStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "server.sqlite")
    yield s
    s.close()


def test_put_get_list_delete_keep_first_written_order(store: ServerStore) -> None:
    assert store.get("jobs", "a") is None and store.list("jobs") == []
    for key in ("b", "a", "c"):
        store.put("jobs", key, {"id": key, "n": 1})
    store.put("jobs", "b", {"id": "b", "n": 2})  # replaced in place: b stays first (FIFO)
    assert [d["id"] for d in store.list("jobs")] == ["b", "a", "c"]
    assert store.get("jobs", "b") == {"id": "b", "n": 2}
    store.delete("jobs", "a")
    store.delete("jobs", "nope")
    assert [d["id"] for d in store.list("jobs")] == ["b", "c"]


def test_kinds_are_separate_and_documents_are_copies(store: ServerStore) -> None:
    store.put("jobs", "x", {"v": [1]})
    store.put("deployments", "x", {"v": [2]})
    doc = store.get("jobs", "x")
    assert doc is not None
    doc["v"].append(99)  # changing what was read changes nothing stored
    assert store.get("jobs", "x") == {"v": [1]} and store.get("deployments", "x") == {"v": [2]}


def test_refuses_unknown_kinds_and_non_json(store: ServerStore) -> None:
    with pytest.raises(StoreError, match="unknown document kind"):
        store.put("secrets", "k", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.put("jobs", "k", {"x": math.nan})
    assert store.get("jobs", "k") is None


def _write_then_die(path: Path) -> None:
    s = SqliteStore(path)
    for i in range(50):
        s.put("jobs", f"j{i}", {"i": i})
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: what kill -9 leaves


def test_sqlite_keeps_every_committed_write_through_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite"
    proc = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(path,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    reopened = SqliteStore(path)
    assert [d["i"] for d in reopened.list("jobs")] == list(range(50))
    reopened.close()


def test_sqlite_refuses_a_newer_schema_and_a_non_database(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite"
    SqliteStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(junk)
