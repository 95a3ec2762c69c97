"""The accounting spool: records taken in with `answer: at_once`, kept until an upstream
accounting server acknowledged them (FreeRADIUS's detail file, read back by its detail
reader: "robust proxy accounting").

One SQLite file in the state directory (`accounting-spool.sqlite3`), shared by the
`server.workers` processes of one host:

- Durable: WAL with `synchronous = FULL` for `append`, so a record the NAS was told is
  recorded survives a crash of the process and a power cut. Several records are written
  in one transaction (the caller batches them), so one fsync covers them all.
- Bounded: `append` takes in at most `max_records` waiting records, counted by triggers
  in the same transaction (no `COUNT(*)` over a long spool), so two workers cannot both
  take the last place.
- Shared safely: `claim` leases the oldest due rows to one process for as long as one
  forward can take; another process skips them, and takes them once the lease ran out
  (its holder died). A row is deleted only by `acknowledge`, after an upstream answered:
  delivery is at-least-once (a crash between the answer and the delete sends it again).
- Sealed: each record is AES-256-GCM sealed (store/crypto.py) under a subkey of the
  master key, with the row's random token and its plain columns as associated data. A
  row edited, forged, moved or copied does not open: `claim` hands it back as a
  `RejectedRow` (reason `unauthentic` or `malformed`), and the caller discards it.

Methods block (SQLite, fsync): the daemon calls them from one thread of its own
(auth/accounting_spool.py). Times are Unix seconds passed in by the caller.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfaproxy.errors import DecryptionError, SpoolUnavailable
from mfaproxy.store.crypto import SecretBox
from mfaproxy.store.ids import unique_token
from mfaproxy.store.ownership import create_private

SEAL_INFO = b"mfaproxy accounting spool v1"
# A busy file (another worker mid-transaction) is waited for this long, then the spool
# counts as unavailable.
BUSY_TIMEOUT_SECONDS = 5.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token TEXT NOT NULL UNIQUE,
        request_id TEXT NOT NULL,
        status_type TEXT NOT NULL,
        received REAL NOT NULL,
        sealed BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS spool_received ON spool (received)",
    """CREATE TABLE IF NOT EXISTS spool_size (
        one INTEGER PRIMARY KEY CHECK (one = 1), records INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO spool_size VALUES (1, (SELECT COUNT(*) FROM spool))",
    """CREATE TRIGGER IF NOT EXISTS spool_added AFTER INSERT ON spool
        BEGIN UPDATE spool_size SET records = records + 1; END""",
    """CREATE TRIGGER IF NOT EXISTS spool_removed AFTER DELETE ON spool
        BEGIN UPDATE spool_size SET records = records - 1; END""",
)


@dataclass(frozen=True)
class SpoolEntry:
    """A record to keep: the attributes to forward (wire form, in order) and where it
    came from. `received` is when mfaproxy got it (Acct-Delay-Time grows from there)."""

    request_id: str
    client: str
    status_type: str
    received: float
    attributes: bytes


@dataclass(frozen=True)
class SpooledRecord:
    """A row claimed for forwarding, authenticated."""

    row: int
    entry: SpoolEntry
    attempts: int


@dataclass(frozen=True)
class RejectedRow:
    """A claimed row that did not open (edited, moved, forged, or not ours at all)."""

    row: int
    reason: str  # "unauthentic" | "malformed"


@dataclass(frozen=True)
class ExpiredRow:
    row: int
    request_id: str
    status_type: str
    received: float


def _associated(token: str, request_id: str, status_type: str, received: float) -> str:
    # The plain columns are bound in too: a row whose columns were changed does not open.
    return f"acct-spool:{token}:{request_id}:{status_type}:{received!r}"


class AccountingSpool:
    """The spool file; see the module docstring. Not thread-safe: one thread uses it."""

    def __init__(self, path: str | Path, master_key: bytes) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private(self.path)  # root creating it gives it to the directory's owner
        self._box = SecretBox(master_key, info=SEAL_INFO)
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            self._guard(self._setup)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL journal (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        with self._transaction():
            for statement in SCHEMA:
                conn.execute(statement)

    def _guard(self, operation: Any) -> Any:
        try:
            return operation()
        except sqlite3.Error as exc:
            raise SpoolUnavailable(f"accounting spool {self.path}: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")  # the write lock from the start
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _size(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT records FROM spool_size").fetchone()
        if row is None or not isinstance(row[0], int) or row[0] < 0:
            # The counter row was removed or edited: count once, and put it right.
            (count,) = conn.execute("SELECT COUNT(*) FROM spool").fetchone()
            conn.execute("INSERT OR REPLACE INTO spool_size VALUES (1, ?)", (count,))
            return int(count)
        return row[0]

    # ------------------------------------------------------------------ sealing

    def _seal(self, token: str, entry: SpoolEntry) -> bytes:
        # Client name (length-prefixed, UTF-8) then the attributes as they go on the wire.
        client = entry.client.encode("utf-8", "surrogatepass")
        plaintext = len(client).to_bytes(2, "big") + client + entry.attributes
        aad = _associated(token, entry.request_id, entry.status_type, entry.received)
        return self._box.seal(aad, plaintext)

    def _open(self, row: sqlite3.Row | tuple[Any, ...]) -> SpooledRecord | RejectedRow:
        row_id, token, request_id, status_type, received, sealed, attempts = row
        plain = (token, request_id, status_type)
        if not all(isinstance(v, str) for v in plain) or not isinstance(sealed, bytes):
            return RejectedRow(row_id, "malformed")
        if not isinstance(received, float | int) or not isinstance(attempts, int):
            return RejectedRow(row_id, "malformed")
        try:
            opened = self._box.open(
                _associated(token, request_id, status_type, float(received)), sealed
            )
        except DecryptionError:
            return RejectedRow(row_id, "unauthentic")
        # Authentic, so it is what we wrote; checked all the same.
        size = int.from_bytes(opened[:2], "big")
        if len(opened) < 2 + size:
            return RejectedRow(row_id, "malformed")
        client = opened[2 : 2 + size].decode("utf-8", "replace")
        entry = SpoolEntry(request_id, client, status_type, float(received), opened[2 + size :])
        return SpooledRecord(row_id, entry, attempts)

    # ------------------------------------------------------------------ operations

    def append(
        self, entries: Sequence[SpoolEntry], max_records: int, lease_until: float = 0.0
    ) -> list[int]:
        """Keep the first entries that fit under `max_records`, in one fsynced
        transaction; returns the rows of those kept (the rest were refused: spool
        full). They are leased to the caller until `lease_until`, which forwards them
        from memory meanwhile (0: anyone may claim them at once)."""

        def write() -> list[int]:
            with self._transaction() as conn:
                room = max(0, max_records - self._size(conn))
                rows = []
                for entry in entries[:room]:
                    cursor = conn.execute(
                        "INSERT INTO spool (token, request_id, status_type, received, sealed,"
                        " next_try, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (*self._row(entry), lease_until),
                    )
                    assert cursor.lastrowid is not None
                    rows.append(cursor.lastrowid)
                return rows

        kept: list[int] = self._guard(write)
        return kept

    def _row(self, entry: SpoolEntry) -> tuple[Any, ...]:
        token = unique_token()
        sealed = self._seal(token, entry)
        return (token, entry.request_id, entry.status_type, entry.received, sealed, 0.0)

    def claim(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[SpooledRecord | RejectedRow]:
        """Lease up to `limit` of the oldest rows that are due and not leased."""

        def take() -> list[tuple[Any, ...]]:
            # One statement: atomic against another reader, whatever the isolation.
            return list(
                self._conn.execute(
                    "UPDATE spool SET lease_until = ? WHERE id IN (SELECT id FROM spool"
                    " WHERE next_try <= ? AND lease_until <= ? ORDER BY id LIMIT ?)"
                    " RETURNING id, token, request_id, status_type, received, sealed, attempts",
                    (now + lease_seconds, now, now, limit),
                ).fetchall()
            )

        rows = sorted(self._guard(take), key=lambda row: int(row[0]))  # oldest first
        return [self._open(row) for row in rows]

    def _unsynced(self, sql: str, args: Iterable[tuple[Any, ...]]) -> None:
        """A write that need not be fsynced: losing it (a power cut) at worst sends a
        record again or retries it sooner, which at-least-once delivery allows."""

        def write() -> None:
            self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._transaction() as conn:
                    conn.executemany(sql, args)
            finally:
                self._conn.execute("PRAGMA synchronous = FULL")

        self._guard(write)

    def acknowledge(self, rows: Iterable[int]) -> None:
        """An upstream has them (or they were discarded): delete them."""
        # One statement for the batch: the ids go in as one JSON array.
        ids = json.dumps([int(row) for row in rows])
        self._unsynced("DELETE FROM spool WHERE id IN (SELECT value FROM json_each(?))", [(ids,)])

    def retry(self, rows: Iterable[int], next_try: float) -> None:
        """Not acknowledged: give them back, due again at `next_try`."""
        self._unsynced(
            "UPDATE spool SET attempts = attempts + 1, next_try = ?, lease_until = 0 WHERE id = ?",
            [(next_try, row) for row in rows],
        )

    def release(self, rows: Iterable[int]) -> None:
        """Claimed but not tried (shutting down): due again at once, for anyone."""
        self._unsynced("UPDATE spool SET lease_until = 0 WHERE id = ?", [(r,) for r in rows])

    def expire(self, cutoff: float) -> list[ExpiredRow]:
        """Delete the rows received before `cutoff` (too old to forward), and say which."""

        def delete() -> list[tuple[Any, ...]]:
            with self._transaction() as conn:
                return list(
                    conn.execute(
                        "DELETE FROM spool WHERE received < ?"
                        " RETURNING id, request_id, status_type, received",
                        (cutoff,),
                    ).fetchall()
                )

        return [ExpiredRow(*row) for row in self._guard(delete)]

    def stats(self) -> tuple[int, float | None]:
        """How many records wait, and when the oldest of them was received."""

        def read() -> tuple[int, float | None]:
            with self._transaction() as conn:  # a write when the counter needs repair
                size = self._size(conn)
                oldest = conn.execute("SELECT MIN(received) FROM spool").fetchone()[0]
            return size, float(oldest) if isinstance(oldest, float | int) else None

        stats: tuple[int, float | None] = self._guard(read)
        return stats

    def close(self) -> None:
        self._conn.close()
