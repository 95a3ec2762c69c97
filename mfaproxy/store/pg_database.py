"""The user store's way to PostgreSQL: the DSN with the timeouts and keepalives that
notice a vanished server, statements run on reused connections (store/pg_connections.py),
a transaction rolled back by a deadlock run again, server trouble mapped to
`UserStoreUnavailable`, and the store's up/down metrics and log lines.

Availability. Connections are made on demand with a bounded ``connect_timeout``, every
statement has a ``statement_timeout`` (lock waits included), and TCP keepalives with
``tcp_user_timeout`` notice a vanished server. Any failure to reach or use the server
raises `UserStoreUnavailable` at once; the caller's failmode decides what to answer. Idle
connections are reused; one the server has closed (a restart, a failover) is recognised
before use without a round trip and replaced, so service resumes with the first request
after the server is back. Metrics: ``mfaproxy_upstream_up{service="postgres"}`` and
``mfaproxy_upstream_duration_seconds{service="postgres", result="ok"|"failure"}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from mfaproxy.errors import StoreError, UserStoreUnavailable
from mfaproxy.observability.metrics import UPSTREAM_LATENCY, UPSTREAM_UP
from mfaproxy.store.pg_connections import PgConnections

log = structlog.get_logger(__name__)

T = TypeVar("T")
Connection: TypeAlias = psycopg.Connection[TupleRow]
SERVICE = "postgres"
_ROLLBACK_RETRIES = 3

# Errors meaning the server is out of reach or cannot serve us now, as opposed to a
# statement being wrong: connection lost or refused, shutdown, timeouts, too many
# connections (all OperationalError), and a read-only server.
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, pg_errors.ReadOnlySqlTransaction)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class PgDatabase:
    """Statements against one PostgreSQL server, for `PostgresUserStore`. `dsn` is a libpq
    connection string or URI; `connect_timeout` (whole seconds, at least 2, as libpq
    counts them) bounds each connection attempt and `statement_timeout` each statement."""

    def __init__(
        self, dsn: str, *, connect_timeout: float, statement_timeout: float, max_idle: int
    ) -> None:
        if connect_timeout <= 0 or statement_timeout <= 0 or max_idle < 0:
            raise ValueError("timeouts must be positive and max_idle not negative")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # not chained, not quoted: the DSN may hold a password
            raise StoreError("the PostgreSQL DSN does not parse") from None
        self.server = str(params.get("host") or params.get("hostaddr") or "localhost")
        settings: dict[str, Any] = {
            "application_name": "mfaproxy",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": math.ceil((connect_timeout + statement_timeout) * 1000),
        }
        settings.update(params)
        settings["connect_timeout"] = max(2, math.ceil(connect_timeout))
        self._connections = PgConnections(
            make_conninfo("", **settings), math.ceil(statement_timeout * 1000), max_idle
        )
        self._up: bool | None = None

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a connection; map server trouble to `UserStoreUnavailable`."""
        started = time.perf_counter()
        try:
            result = self._attempt(work)
        except UNAVAILABLE as exc:
            self._observe(started, up=False, error=exc)
            raise UserStoreUnavailable(f"PostgreSQL {self.server}: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            self._observe(started, up=True)  # the server answered; the statement failed
            raise StoreError(f"PostgreSQL {self.server}: {_first_line(exc)}") from exc
        self._observe(started, up=True)
        return result

    def _attempt(self, work: Callable[[Connection], T]) -> T:
        conn = self._connections.take()
        reusable = True
        try:
            for attempt in range(1, _ROLLBACK_RETRIES + 1):
                try:
                    return work(conn)
                except pg_errors.TransactionRollback:  # deadlock, serialisation
                    if attempt == _ROLLBACK_RETRIES:
                        raise
            raise AssertionError("unreachable")
        except pg_errors.ReadOnlySqlTransaction:
            reusable = False  # a standby (after a failover?): reconnect to find the primary
            raise
        finally:
            self._connections.give(conn, reusable=reusable)

    def _observe(self, started: float, *, up: bool, error: BaseException | None = None) -> None:
        result = "ok" if up else "failure"
        UPSTREAM_LATENCY.labels(service=SERVICE, result=result).observe(
            time.perf_counter() - started
        )
        UPSTREAM_UP.labels(service=SERVICE, server=self.server).set(1 if up else 0)
        was_up, self._up = self._up, up
        if not up and was_up is not False:
            detail = _first_line(error) if error else ""
            log.warning("user_store_down", backend=SERVICE, server=self.server, error=detail)
        elif up and was_up is False:
            log.info("user_store_up", backend=SERVICE, server=self.server)

    def transaction(self, work: Callable[[Connection], T]) -> T:
        def in_transaction(conn: Connection) -> T:
            with conn.transaction():
                return work(conn)

        return self.run(in_transaction)

    def rowcount(self, query: str, params: Params) -> int:
        return self.run(lambda conn: conn.execute(query, params).rowcount)

    def unsynced(self, query: str, params: Params) -> int:
        """One statement committed with `synchronous_commit = off`: atomic and visible at
        once like any other, but the commit does not wait for the WAL to reach disk, so
        a crash of the server may lose the last few hundred milliseconds of such writes
        (never corrupt anything). For short-lived marks only (see store/users.py)."""

        def unsynced(conn: Connection) -> int:
            conn.execute("SET LOCAL synchronous_commit TO OFF")
            return int(conn.execute(query, params).rowcount)

        return self.transaction(unsynced)

    def one(self, query: str, params: Params) -> tuple[Any, ...] | None:
        return self.run(lambda conn: conn.execute(query, params).fetchone())

    def all(self, query: str, params: Params) -> list[tuple[Any, ...]]:
        return self.run(lambda conn: conn.execute(query, params).fetchall())

    def close(self) -> None:
        self._connections.close()
