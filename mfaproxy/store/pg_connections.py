"""Reused PostgreSQL connections for the user store, checked before each reuse."""

from __future__ import annotations

import select
import threading

import psycopg
from psycopg import Connection
from psycopg.pq import TransactionStatus

from mfaproxy.errors import StoreError


class PgConnections:
    """Idle connections kept for reuse, each checked before it is handed out again.

    Not psycopg_pool: its health check sleeps with exponential backoff (1 s, 2 s, 4 s...)
    for each stale connection it meets after a server restart, and it reconnects in the
    background with backoff too, so requests would fail or wait for seconds after the
    database is back. Here a failed connect is reported at once, and a stale connection
    is dropped and replaced at once.
    """

    def __init__(self, conninfo: str, statement_timeout_ms: int, max_idle: int) -> None:
        self._conninfo = conninfo
        self._statement_timeout = str(statement_timeout_ms)
        self._max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Connection:
        while True:
            with self._lock:
                if self._closed:
                    raise StoreError("user store is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if self._usable(conn):
                return conn
            conn.close()

    def give(self, conn: Connection, *, reusable: bool = True) -> None:
        if reusable and self._usable(conn, poll=False):
            with self._lock:
                if not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self) -> Connection:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (self._statement_timeout,)
            )
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _usable(conn: Connection, *, poll: bool = True) -> bool:
        if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
            return False
        if not poll:
            return True
        # An idle connection has nothing to read unless the server has closed it or sent
        # the termination notice of a shutdown: readable means stale.
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return not poller.poll(0)
