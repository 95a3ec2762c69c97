"""Password-guessing counters shared by the worker processes of one host: the
`Throttle` contract of store/throttle.py in the SQLite state file
(store/sqlite_state.py), in a table of its own.

Every operation is one `BEGIN IMMEDIATE` transaction of the state store (its lock
handling, its StateStoreUnavailable), so `reserve` reads the counters, applies the rule
of core/throttle.py and records the attempt in all of them atomically across
processes. Rows carry their counter's expiry and are swept now and then.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mfaproxy.core.throttle import Refusal, first_refusal, next_allowed
from mfaproxy.store.sqlite_state import SqliteStateStore
from mfaproxy.store.throttle import Counter

SCHEMA = """
CREATE TABLE IF NOT EXISTS password_failures (
    counter TEXT NOT NULL, at REAL NOT NULL, token TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS password_failures_counter ON password_failures (counter, at);
CREATE INDEX IF NOT EXISTS password_failures_expiry ON password_failures (expires)
"""
SWEEP_EVERY = 256


def _events(conn: sqlite3.Connection, counter: Counter, now: float) -> list[float]:
    name, rule = counter
    rows = conn.execute(
        "SELECT at FROM password_failures WHERE counter = ? AND at > ? ORDER BY at",
        (name, now - rule.window),
    ).fetchall()
    return [float(at) for (at,) in rows]


def _insert(conn: sqlite3.Connection, counter: Counter, token: str, now: float) -> None:
    name, rule = counter
    conn.execute(
        "INSERT INTO password_failures VALUES (?, ?, ?, ?)", (name, now, token, now + rule.window)
    )


class SqliteThrottle:
    def __init__(self, store: SqliteStateStore) -> None:
        self._store = store
        self._writes = 0

        def create(conn: sqlite3.Connection) -> None:
            for statement in SCHEMA.split(";"):
                conn.execute(statement)

        store.transaction(create, 0.0)

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            conn.execute("DELETE FROM password_failures WHERE expires <= ?", (now,))

    async def reserve(self, counters: Sequence[Counter], token: str, now: float) -> Refusal | None:
        def body(conn: sqlite3.Connection) -> Refusal | None:
            found = [(rule, _events(conn, (name, rule), now)) for name, rule in counters]
            refusal = first_refusal(found, now)
            if refusal is None:
                for counter in counters:
                    _insert(conn, counter, token, now)
                self._sweep(conn, now)
            return refusal

        return self._store.transaction(body, now)

    async def check(self, counter: Counter, now: float) -> float | None:
        def body(conn: sqlite3.Connection) -> float | None:
            at = next_allowed(counter[1], _events(conn, counter, now), now)
            return at if now < at else None

        return self._store.transaction(body, now)

    async def add(self, counter: Counter, token: str, now: float) -> None:
        def body(conn: sqlite3.Connection) -> None:
            _insert(conn, counter, token, now)
            self._sweep(conn, now)

        self._store.transaction(body, now)

    async def release(self, names: Sequence[str], token: str) -> None:
        def body(conn: sqlite3.Connection) -> None:
            for name in names:
                conn.execute(
                    "DELETE FROM password_failures WHERE counter = ? AND token = ?", (name, token)
                )

        self._store.transaction(body, 0.0)

    async def clear(self, name: str) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM password_failures WHERE counter = ?", (name,))

        self._store.transaction(body, 0.0)

    async def close(self) -> None:
        """The connection is the state store's: closed with it."""
