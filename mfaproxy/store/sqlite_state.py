"""Ephemeral state shared by the worker processes of one host, in one SQLite file.

`server.workers: N` runs N processes on the same UDP ports; a NAS may send the answer
to a challenge to any of them, and a retransmission, a replayed code or a rate limit
must be seen by all. Redis does that for a cluster; on one host this file does it
without another service. It implements the `StateStore` contract of store/state.py
with the same semantics as the memory store (the caller's `now` decides expiry).

Atomicity across processes: every check-and-change is one SQLite write transaction
(`BEGIN IMMEDIATE` takes the file's write lock first), so of two workers racing for one
challenge exactly one `take`s it and `rate_limit` admits exactly `max_events`.

Cost: this is short-lived state, not a record of anything, so it is not made durable:
`synchronous = OFF` (no fsync; a power cut loses challenges in flight, which expire in
minutes anyway) in WAL mode (readers never wait for the writer). An operation is a few
microseconds of SQLite on the calling thread: it runs on the event loop directly, with
no thread hop, like the memory store. When another worker holds the write lock (for
microseconds), the call retries at once instead of SQLite's millisecond sleeps, up to
LOCK_WAIT_SECONDS; then it raises StateStoreUnavailable and the store failmode decides.
That retry spins on the event loop, so a holder that is stuck (a process stopped inside
a transaction, an operator's `sqlite3` shell left in BEGIN) froze the whole daemon: each
write spun its full wait, and a Status-Server went unanswered for as long as the lock
was held. After a wait that ran out, writes for the next FAIL_FAST_SECONDS wait only
BRIEF_WAIT_SECONDS (ample for another worker's transaction) before they raise: the
requests get the failmode's answer, and the daemon keeps answering.

The file is created 0600 in a 0700 directory owned by the service user, and what the
daemon writes into it is sealed first (store/sealed.py wraps every state store), so a
value read back is authenticated before it is trusted, as with Redis.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mfaproxy.errors import StateStoreUnavailable
from mfaproxy.store.ids import unique_token
from mfaproxy.store.ownership import create_private
from mfaproxy.store.state import JsonDict

T = TypeVar("T")

LOCK_WAIT_SECONDS = 0.5
FAIL_FAST_SECONDS = 5.0
BRIEF_WAIT_SECONDS = 0.01  # within FAIL_FAST_SECONDS of a wait that ran out
# Expired values and old events are swept every PRUNE_EVERY writes of a process.
PRUNE_EVERY = 512
# Rate-limit windows are at most a day long in practice (as in the memory store).
EVENT_HORIZON = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS state_values (
    namespace TEXT NOT NULL, key TEXT NOT NULL, expires REAL NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (namespace, key));
CREATE INDEX IF NOT EXISTS state_values_expiry ON state_values (expires);
CREATE TABLE IF NOT EXISTS state_events (
    namespace TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
    token TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS state_events_key ON state_events (namespace, key, at);
CREATE TABLE IF NOT EXISTS state_groups (
    namespace TEXT NOT NULL, grp TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (namespace, grp, key));
"""


class SqliteStateStore:
    """`StateStore` in a SQLite file shared by the processes of one host."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private(self.path)  # root creating it gives it to the directory's owner
        # timeout=0: a busy file raises at once and _retry spins (see the docstring).
        self._conn = sqlite3.connect(
            self.path, timeout=0, isolation_level=None, check_same_thread=False
        )
        self._writes = 0
        self._fail_fast_until = 0.0  # monotonic time; see the module docstring
        try:
            self._retry(self._setup)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL journal (got {mode})")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _retry(self, operation: Callable[[], T]) -> T:
        deadline = None
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StateStoreUnavailable(f"state file {self.path}: {exc}") from None
                now = time.monotonic()
                if deadline is None:
                    # Stuck a moment ago: wait only as long as a worker's transaction
                    # takes, not the full wait again.
                    stuck = now < self._fail_fast_until
                    deadline = now + (BRIEF_WAIT_SECONDS if stuck else LOCK_WAIT_SECONDS)
                if now > deadline:
                    self._fail_fast_until = now + FAIL_FAST_SECONDS
                    raise StateStoreUnavailable(f"state file {self.path}: locked") from None
                os.sched_yield()  # the holder is another worker, mid-transaction
            except sqlite3.Error as exc:
                raise StateStoreUnavailable(f"state file {self.path}: {exc}") from None

    def _write(self, body: Callable[[sqlite3.Connection], T], now: float) -> T:
        """`body` inside one write transaction (the file's write lock held throughout)."""
        conn = self._conn

        def transaction() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        result = self._retry(transaction)
        self._count_write(now)
        return result

    def transaction(self, body: Callable[[sqlite3.Connection], T], now: float) -> T:
        """For other parts kept in this file (store/sqlite_throttle.py): `body` in one
        write transaction, with this store's lock handling and failures."""
        return self._write(body, now)

    def _statement(
        self, sql: str, args: tuple[Any, ...] | dict[str, Any], now: float | None
    ) -> Any:
        """One statement in its own (implicit) transaction: atomic, and a single call
        into SQLite (each call releases and retakes the GIL, which costs more than
        SQLite itself when the pools' threads are busy). Returns the first row."""
        row = self._retry(lambda: self._conn.execute(sql, args).fetchone())
        self._count_write(now)
        return row

    def _count_write(self, now: float | None) -> None:
        self._writes += 1
        if now is not None and self._writes % PRUNE_EVERY == 0:
            self._retry(lambda: self._prune(now))

    def _prune(self, now: float) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM state_values WHERE expires <= ?", (now,))
        conn.execute("DELETE FROM state_events WHERE at <= ?", (now - EVENT_HORIZON,))
        conn.execute(
            "DELETE FROM state_groups WHERE NOT EXISTS (SELECT 1 FROM state_values v "
            "WHERE v.namespace = state_groups.namespace AND v.key = state_groups.key)"
        )
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ values

    async def put(self, namespace: str, key: str, value: JsonDict, ttl: float, now: float) -> None:
        payload = json.dumps(value, separators=(",", ":"))
        self._statement(
            "INSERT OR REPLACE INTO state_values VALUES (?, ?, ?, ?)",
            (namespace, key, now + ttl, payload),
            now,
        )

    async def put_if_absent(
        self, namespace: str, key: str, value: JsonDict, ttl: float, now: float
    ) -> JsonDict | None:
        payload = json.dumps(value, separators=(",", ":"))
        while True:
            # One statement, so one atomic write: stored unless a live value is there.
            stored = self._statement(
                "INSERT INTO state_values VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET "
                "expires = excluded.expires, value = excluded.value "
                "WHERE state_values.expires <= ? RETURNING 1",
                (namespace, key, now + ttl, payload, now),
                now,
            )
            if stored is not None:
                return None
            current = await self.get(namespace, key, now)
            if current is not None:
                return current
            # Taken or expired between the two statements: try to store again.

    async def get(self, namespace: str, key: str, now: float) -> JsonDict | None:
        row = self._retry(
            lambda: self._conn.execute(
                "SELECT value FROM state_values WHERE namespace = ? AND key = ? AND expires > ?",
                (namespace, key, now),
            ).fetchone()
        )
        return None if row is None else _load(row[0])

    async def take(self, namespace: str, key: str, now: float) -> JsonDict | None:
        # One statement: the row is gone for everyone else once it is returned here.
        row = self._write(
            lambda conn: conn.execute(
                "DELETE FROM state_values WHERE namespace = ? AND key = ? RETURNING value, expires",
                (namespace, key),
            ).fetchone(),
            now,
        )
        if row is None or float(row[1]) <= now:
            return None
        return _load(row[0])

    async def delete(self, namespace: str, key: str) -> None:
        self._statement(
            "DELETE FROM state_values WHERE namespace = ? AND key = ?", (namespace, key), None
        )

    # ------------------------------------------------------------------ events

    async def rate_limit(
        self,
        namespace: str,
        key: str,
        now: float,
        *,
        max_events: int,
        window: float,
        min_interval: float = 0.0,
    ) -> bool:
        # Check and record in one statement (one atomic write).
        admitted = self._statement(
            "INSERT INTO state_events SELECT :ns, :key, :now, '' WHERE "
            "(SELECT count(*) FROM state_events WHERE namespace = :ns AND key = :key "
            "AND at > :start) < :max AND coalesce((SELECT max(at) FROM state_events "
            "WHERE namespace = :ns AND key = :key AND at > :start), -1e300) <= :latest "
            "RETURNING 1",
            {
                "ns": namespace,
                "key": key,
                "now": now,
                "start": now - window,
                "max": max_events,
                "latest": now - min_interval,
            },
            now,
        )
        return admitted is not None

    async def reserve(
        self, namespace: str, key: str, now: float, *, max_events: int, window: float
    ) -> str | None:
        token = unique_token()

        def body(conn: sqlite3.Connection) -> str | None:
            (count,) = conn.execute(
                "SELECT count(*) FROM state_events WHERE namespace = ? AND key = ? AND at > ?",
                (namespace, key, now - window),
            ).fetchone()
            if count >= max_events:
                return None
            conn.execute(
                "INSERT INTO state_events VALUES (?, ?, ?, ?)", (namespace, key, now, token)
            )
            return token

        return self._write(body, now)

    async def release(self, namespace: str, key: str, token: str) -> None:
        self._statement(
            "DELETE FROM state_events WHERE namespace = ? AND key = ? AND token = ?",
            (namespace, key, token),
            None,
        )

    async def put_bounded(
        self,
        namespace: str,
        key: str,
        value: JsonDict,
        ttl: float,
        now: float,
        *,
        group: str,
        limit: int,
    ) -> list[str]:
        payload = json.dumps(value, separators=(",", ":"))

        def body(conn: sqlite3.Connection) -> list[str]:
            conn.execute(
                "INSERT OR REPLACE INTO state_values VALUES (?, ?, ?, ?)",
                (namespace, key, now + ttl, payload),
            )
            (seq,) = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM state_groups "
                "WHERE namespace = ? AND grp = ?",
                (namespace, group),
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO state_groups VALUES (?, ?, ?, ?)",
                (namespace, group, key, seq),
            )
            # Members that were taken or expired leave the group first.
            conn.execute(
                "DELETE FROM state_groups WHERE namespace = ? AND grp = ? AND NOT EXISTS "
                "(SELECT 1 FROM state_values v WHERE v.namespace = state_groups.namespace "
                "AND v.key = state_groups.key AND v.expires > ?)",
                (namespace, group, now),
            )
            members = [
                str(row[0])
                for row in conn.execute(
                    "SELECT key FROM state_groups WHERE namespace = ? AND grp = ? ORDER BY seq",
                    (namespace, group),
                )
            ]
            retired = members[: max(0, len(members) - limit)]
            for old in retired:
                conn.execute(
                    "DELETE FROM state_values WHERE namespace = ? AND key = ?", (namespace, old)
                )
                conn.execute(
                    "DELETE FROM state_groups WHERE namespace = ? AND grp = ? AND key = ?",
                    (namespace, group, old),
                )
            return retired

        return self._write(body, now)

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        row = self._retry(
            lambda: self._conn.execute(
                "SELECT count(*) FROM state_events WHERE namespace = ? AND key = ? AND at > ?",
                (namespace, key, now - window),
            ).fetchone()
        )
        return int(row[0])

    async def size(self, namespace: str, now: float) -> int:
        row = self._retry(
            lambda: self._conn.execute(
                "SELECT count(*) FROM state_values WHERE namespace = ? AND expires > ?",
                (namespace, now),
            ).fetchone()
        )
        return int(row[0])

    async def close(self) -> None:
        self._conn.close()


def _load(text: Any) -> JsonDict:
    """A stored value; one that is not a JSON object (a damaged or tampered file) is an
    unusable store, never a crash or a half-trusted value."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise StateStoreUnavailable("state file holds a value that is not a JSON object")
    return value
