"""The durable store-and-forward spool: escalations waiting for the uplink (SQLite, WAL).

An escalation whose policy allows waiting is written here before the client hears ``202``;
from then on it is the agent's promise. A row is ``pending`` until the forwarder gets the
cloud's answer (``done``, answer kept for polling), the router refuses it for good
(``failed``), or its TTL passes first (``expired``). Every state change is one committed
transaction with ``synchronous=FULL``: a row acknowledged to the client survives ``kill -9``
and power loss, and a delivery recorded ``done`` is never sent again. A delivery cut between
the router's answer and the commit is sent again with the same idempotency key, which the
router answers from its record instead of dispatching twice.

Quota: the payload bytes of pending rows never exceed ``max_bytes``; a new row that would is
refused with :class:`SpoolFull` and rows already accepted are untouched. Finished rows give
their payload back at once and keep only the answer, until ``keep_s`` after they finished.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from fleetvl.errors import FleetVLError

__all__ = ["Spool", "SpoolEntry", "SpoolFull", "SpoolMeta", "SpoolStatus"]

# What sqlite3 stores in a column.
_SqlValue = str | bytes | int | float | None


class SpoolMeta(TypedDict, total=False):
    """What the agent knew of a queued escalation, for the answer the forwarder builds."""

    model: str
    reason: str
    webhook: str | None
    local_tokens: int
    local_max_tokens: int
    gate: dict[str, object] | None  # the local attempt's gate verdict
    policy: dict[str, dict[str, object]]  # ResolvedPolicy.explain()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    payload BLOB,
    bytes INTEGER NOT NULL,
    meta TEXT NOT NULL,
    result TEXT,
    error TEXT,
    finished REAL
);
CREATE INDEX IF NOT EXISTS spool_due ON spool (state, next_attempt);
"""


class SpoolFull(FleetVLError):
    """Accepting this escalation would pass the spool's disk quota (HTTP 507)."""

    def __init__(self, size: int, used: int, quota: int) -> None:
        self.size, self.used, self.quota = size, used, quota
        super().__init__(
            f"store-and-forward spool is full: {used} of {quota} bytes hold waiting requests, "
            f"this one needs {size}; retry when the uplink is back or ask for on_uplink_down "
            "'answer_local'"
        )


@dataclass(frozen=True)
class SpoolEntry:
    """A pending row, as the forwarder sees it."""

    id: str
    tenant: str
    payload: bytes
    expires: float
    attempts: int
    meta: SpoolMeta


@dataclass(frozen=True)
class SpoolStatus:
    """A row, as a polling client sees it."""

    id: str
    state: str  # pending | done | failed | expired
    created: float
    expires: float
    attempts: int
    result: dict[str, object] | None
    error: str | None
    meta: SpoolMeta


class Spool:
    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        keep_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the spool. ``clock`` is wall time: TTLs outlive restarts."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.keep_s = keep_s
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged row survives power loss.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, sql: str, args: tuple[_SqlValue, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # -- writes ---------------------------------------------------------------------------

    def put(self, id: str, tenant: str, payload: bytes, ttl_s: float, meta: SpoolMeta) -> None:
        """Persist a waiting escalation (committed and fsynced on return).

        Raises:
            SpoolFull: over the quota; nothing was written.
        """
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                used = self._db.execute(
                    "SELECT COALESCE(SUM(bytes), 0) FROM spool WHERE state = 'pending'"
                ).fetchone()[0]
                if used + len(payload) > self.max_bytes:
                    raise SpoolFull(len(payload), used, self.max_bytes)
                self._db.execute(
                    "INSERT INTO spool (id, tenant, created, expires, state, payload, bytes, meta)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (id, tenant, now, now + ttl_s, payload, len(payload), json.dumps(meta)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def complete(self, id: str, result: Mapping[str, object]) -> bool:
        """Record the cloud's answer; False if the row was not pending (already finished)."""
        cur = self._tx(
            "UPDATE spool SET state = 'done', result = ?, payload = NULL, bytes = 0, "
            "finished = ? WHERE id = ? AND state = 'pending'",
            (json.dumps(result), self.clock(), id),
        )
        return cur.rowcount == 1

    def fail(self, id: str, error: str) -> None:
        """The router refused it for a reason retrying cannot fix."""
        self._tx(
            "UPDATE spool SET state = 'failed', error = ?, payload = NULL, bytes = 0, "
            "finished = ? WHERE id = ? AND state = 'pending'",
            (error, self.clock(), id),
        )

    def retry_later(self, id: str, delay_s: float, error: str) -> None:
        self._tx(
            "UPDATE spool SET attempts = attempts + 1, next_attempt = ?, error = ? "
            "WHERE id = ? AND state = 'pending'",
            (self.clock() + delay_s, error, id),
        )

    def expire(self) -> list[str]:
        """Mark pending rows past their TTL expired (payload freed); their ids."""
        now = self.clock()
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM spool WHERE state = 'pending' AND expires <= ?", (now,)
                )
            ]
            if ids:
                self._db.execute(
                    "UPDATE spool SET state = 'expired', payload = NULL, bytes = 0, "
                    "finished = ?, error = 'ttl passed before the uplink returned' "
                    "WHERE state = 'pending' AND expires <= ?",
                    (now, now),
                )
        return ids

    def purge(self) -> int:
        """Forget finished rows older than ``keep_s``."""
        cur = self._tx(
            "DELETE FROM spool WHERE state != 'pending' AND finished < ?",
            (self.clock() - self.keep_s,),
        )
        return cur.rowcount

    # -- reads ----------------------------------------------------------------------------

    def due(self, limit: int = 16) -> list[SpoolEntry]:
        """Pending rows whose next attempt is due, oldest first."""
        now = self.clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tenant, payload, expires, attempts, meta FROM spool "
                "WHERE state = 'pending' AND next_attempt <= ? AND expires > ? "
                "ORDER BY created LIMIT ?",
                (now, now, limit),
            ).fetchall()
        return [SpoolEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def get(self, id: str) -> SpoolStatus | None:
        with self._lock:
            r = self._db.execute(
                "SELECT id, state, created, expires, attempts, result, error, meta "
                "FROM spool WHERE id = ?",
                (id,),
            ).fetchone()
        if r is None:
            return None
        return SpoolStatus(
            r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6],
            json.loads(r[7]),
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM spool GROUP BY state").fetchall()
        return dict(rows)

    def pending_bytes(self) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COALESCE(SUM(bytes), 0) FROM spool WHERE state = 'pending'"
                ).fetchone()[0]
            )
