"""The linkage log at rest: one SQLite file, every record sealed with a label that binds log id and position.

The host may read, copy, edit or roll back the file. Sealing keeps records confidential and makes a row moved to
another position (or another log) fail to unseal; the signed statement catches dropped, added, reordered or
re-sealed records on load; a `trusted` statement held outside the store catches a rollback of the whole file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from caltrain.accountability.errors import RecordTampered, StatementInvalid
from caltrain.accountability.linkage import LinkageLog, LinkageRecord, SignedStatement
from caltrain.crypto.errors import SealingError
from caltrain.crypto.sealing import Sealer
from caltrain.crypto.signing import Identity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS statement (id INTEGER PRIMARY KEY CHECK (id = 0), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (position INTEGER PRIMARY KEY, blob BLOB NOT NULL);
"""


def _label(log_id: bytes, position: int) -> str:
    return f"caltrain/linkage/{log_id.hex()}/{position}"


def save_log(path: Path, log: LinkageLog, sealer: Sealer) -> None:
    """Write the records not yet stored and replace the signed statement, in one transaction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA)
        (stored,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
        rows = (
            (r.position, sealer.seal(r.to_bytes(), label=_label(log.log_id, r.position)))
            for r in log.records()[stored:]
        )
        db.executemany("INSERT INTO records (position, blob) VALUES (?, ?)", rows)
        db.execute("INSERT OR REPLACE INTO statement (id, body) VALUES (0, ?)", (log.signed.to_json(),))
    db.close()


def load_log(
    path: Path, sealer: Sealer, identity: Identity, *, measurement: bytes, trusted: SignedStatement | None = None
) -> LinkageLog:
    """Unseal and verify every record against the signed statement; raise a `LinkageTampered` subclass if not intact."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT body FROM statement WHERE id = 0").fetchone()
        if row is None:
            raise StatementInvalid(f"{path}: no signed statement stored")
        signed = SignedStatement.from_json(row[0])
        signed.verify(identity.public_key, measurement=measurement)
        records = []
        for position, blob in db.execute("SELECT position, blob FROM records ORDER BY position"):
            try:
                plain = sealer.unseal(bytes(blob), label=_label(signed.statement.log_id, position))
            except SealingError:
                raise RecordTampered(f"row {position} does not unseal at its position: altered, forged or moved") \
                    from None
            records.append(LinkageRecord.from_bytes(plain))
    db.close()
    return LinkageLog.restore(identity, signed, records, measurement=measurement, trusted=trusted)
