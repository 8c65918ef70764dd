"""The host's durable state behind one small interface: JSON documents by kind and key, kept in the order they
were first written (the job queue is first come, first served).

`SqliteStore` (a file under `--state`) is what `caltrain serve` uses; `MemoryStore` keeps the same contract in
memory. Another database can replace SQLite by implementing `ServerStore`; `tests/service/test_store.py` runs one
suite against every implementation. Nothing secret is stored here: the host keeps only what it already sees
(public job specs, progress, enclave-signed results and statements, deployment records).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

from caltrain.service.errors import StoreError

Kind = Literal["jobs", "deployments"]
KINDS: tuple[Kind, ...] = ("jobs", "deployments")
SCHEMA_VERSION = 1


class ServerStore(Protocol):
    def put(self, kind: Kind, key: str, doc: dict[str, Any]) -> None:
        """Insert or replace `doc` under `key`; a replaced document keeps its place in the order."""

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None: ...

    def list(self, kind: Kind) -> list[dict[str, Any]]:
        """Every document of `kind`, in the order its key was first written."""

    def delete(self, kind: Kind, key: str) -> None: ...

    def close(self) -> None: ...


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise StoreError(f"unknown document kind {kind!r}; the store keeps {KINDS}")


class MemoryStore:
    """`ServerStore` in memory: state that lives as long as the process (tests, throwaway servers)."""

    def __init__(self) -> None:
        self._docs: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self._lock = threading.Lock()

    def put(self, kind: Kind, key: str, doc: dict[str, Any]) -> None:
        _check(kind)
        body = json.dumps(doc, allow_nan=False)  # what SQLite would refuse, refused here too
        with self._lock:
            self._docs[kind][key] = body

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        _check(kind)
        with self._lock:
            body = self._docs[kind].get(key)
        return None if body is None else dict(json.loads(body))

    def list(self, kind: Kind) -> list[dict[str, Any]]:
        _check(kind)
        with self._lock:
            return [json.loads(b) for b in self._docs[kind].values()]

    def delete(self, kind: Kind, key: str) -> None:
        _check(kind)
        with self._lock:
            self._docs[kind].pop(key, None)

    def close(self) -> None:
        pass


class SqliteStore:
    """`ServerStore` in one SQLite file: every write is one committed transaction (a `kill -9` leaves the last
    committed state, never a torn one)."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"{path}: state schema version {version}; this caltrain reads {SCHEMA_VERSION}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS documents (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                "key TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (kind, key))"
            )
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state store {path}: {exc}") from None
        self._lock = threading.Lock()

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"state store: {exc}") from None

    def put(self, kind: Kind, key: str, doc: dict[str, Any]) -> None:
        _check(kind)
        self._run(
            "INSERT INTO documents (kind, key, body) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
            (kind, key, json.dumps(doc, allow_nan=False)),
        )

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        _check(kind)
        rows = self._run("SELECT body FROM documents WHERE kind = ? AND key = ?", (kind, key))
        return dict(json.loads(rows[0][0])) if rows else None

    def list(self, kind: Kind) -> list[dict[str, Any]]:
        _check(kind)
        return [json.loads(b) for (b,) in self._run("SELECT body FROM documents WHERE kind = ? ORDER BY seq", (kind,))]

    def delete(self, kind: Kind, key: str) -> None:
        _check(kind)
        self._run("DELETE FROM documents WHERE kind = ? AND key = ?", (kind, key))

    def close(self) -> None:
        with self._lock:
            self._db.close()
