"""The SQLite user store's connections: one per thread, WAL with fsynced commits, write
transactions that hold the lock from their start, unsynced writes for short-lived marks,
and a change counter another process's commits move (store/users.py uses them)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mfaproxy.errors import StoreError
from mfaproxy.store.ownership import create_private


class SqliteConnections:
    """A thread-safe source of connections to one SQLite file (created private)."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._watcher: sqlite3.Connection | None = None  # change_counter's own
        self._create_file()

    def _create_file(self) -> None:
        # It holds hashes and ciphertexts only, but there is no reason to share it.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private(self.path)  # root creating it gives it to the directory's owner

    def conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("user store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # only close() touches it from another thread
            )
            mode = self._enable_wal(conn)
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        """Switch a new file to WAL. The switch needs the file to itself and SQLite does
        not apply the busy timeout to it, so when several processes open a fresh file
        at once the losers retry (briefly) instead of failing; once set, WAL persists."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError:
                mode = "locked"
            if mode == "wal" or time.monotonic() > deadline:
                return mode
            time.sleep(0.01)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding the write lock from its start (no lock upgrade races)."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def unsynced(self) -> Iterator[sqlite3.Connection]:
        """A write as atomic as any other but not fsynced (WAL, synchronous NORMAL): it
        survives a crash of this process (it is in the WAL file), and a power cut loses
        at most the last such writes, up to the next synced commit or checkpoint. For
        marks that matter for a minute: the used TOTP step (RFC 6238 section 5.2: it
        only has to outlive the code's window, and a machine that lost power is back
        after that window) and a reset of the failure count. They were two of the three
        disk-synced writes of a TOTP login, its largest cost."""
        conn = self.conn()
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            yield conn
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    def change_counter(self) -> int:
        """A number that changes whenever any other connection (another thread, the
        CLI, another worker) commits a change to the file (SQLite `PRAGMA
        data_version`). Read on a connection of its own that never writes, so every
        write counts; it reads shared memory only (the WAL index), no disk."""
        conn = self._watcher
        if conn is None:
            if self._closed:
                raise StoreError("user store is closed")
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, check_same_thread=False)
            with self._all_lock:
                self._all.append(conn)
            self._watcher = conn
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        """Close every thread's connection; call once the executor using it has drained."""
        with self._all_lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
