"""Persistent LDAP connections (python-ldap, i.e. libldap), pooled per server and role.

FreeRADIUS's rlm_ldap keeps connections open; opening one per login (TCP, maybe TLS,
a service bind) cost 1.3 ms of kernel time and 3 x the directory's CPU per login here.
So, per server, two bounded pools:

- `service`: connections bound once as the service account; only ever used for
  searches, so their identity never changes;
- `bind`: connections used only for user binds (RFC 4513 section 5.1.3), re-bound for
  every login. After a failed bind a connection is anonymous (RFC 4511 section 4.2.1);
  nothing is ever read on a bind connection except the user's own entry right after
  that user's bind succeeded, so one user's bind can never lend its identity to
  another request.

Health: a connection idle for more than IDLE_CHECK_SECONDS answers a WhoAmI (RFC 4532)
before it is used; a reused connection that turns out dead (the server restarted, an
idle timeout on its side) empties the pool's idle list and the operation is retried
once on a new connection, so a restart costs no login. A new connection that fails is
the server's failure (the caller then fails over). StartTLS (RFC 4513 section 3) is
negotiated on every new connection before any bind; LDAPS from the first byte.

Every call here blocks; they run in the checker's bounded thread pool. libldap is
thread-safe and python-ldap releases the GIL while it waits, so the pool's threads run
in parallel with the event loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ldap

from mfaproxy.config.directory import LdapConfig

IDLE_CHECK_SECONDS = 30.0
Role = str  # "service" or "bind"


class TlsFailure(Exception):
    """TLS could not be set up with this server (certificate, protocol)."""


class Unreachable(Exception):
    """No TCP connection could be made to this server."""


@dataclass
class Pooled:
    conn: Any  # ldap.ldapobject.SimpleLDAPObject (python-ldap ships no type hints)
    last_used: float
    # Set when the connection was just opened (a failure then is the server's).
    fresh: bool = True


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 636 if parts.scheme == "ldaps" else 389
    return parts.hostname or "localhost", parts.port or default


class ConnectionFactory:
    """Opens one configured connection (options, TLS) to one server URL."""

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        self._timeout = float(config.timeout)

    def open(self, url: str) -> Any:
        conn = self.configure(url)
        if self._config.start_tls and url.startswith("ldap://"):
            # RFC 4513 section 3: StartTLS before any bind, so no password goes in clear.
            try:
                conn.start_tls_s()
            except ldap.SERVER_DOWN:
                raise Unreachable from None
            except ldap.LDAPError:
                _unbind_quietly(conn)
                raise TlsFailure from None
        return conn

    def configure(self, url: str) -> Any:
        """A connection object with every option set, not connected yet (libldap
        connects at the first operation); `open` adds StartTLS."""
        config = self._config
        conn = ldap.initialize(url, bytes_mode=False)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        # A referral would send the user's password to a server we did not choose.
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, float(config.connect_timeout))
        conn.set_option(ldap.OPT_TIMEOUT, self._timeout)
        conn.timeout = self._timeout  # python-ldap's limit for the synchronous calls
        demand = ldap.OPT_X_TLS_DEMAND if config.verify_certificate else ldap.OPT_X_TLS_NEVER
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, demand)
        if config.ca_file is not None:
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(config.ca_file))
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # last: applies the TLS options above
        return conn

    def explain_down(self, url: str) -> Exception:
        """A new connection to `url` said SERVER_DOWN: a server that takes TCP but not
        our TLS is a TLS failure (a bad certificate), not an unreachable server."""
        if not url.startswith("ldaps://"):
            return Unreachable()
        try:
            with socket.create_connection(_host_port(url), self._config.connect_timeout):
                return TlsFailure()
        except OSError:
            return Unreachable()


class ConnectionPool:
    """Idle connections to one server for one role, at most `size` (LIFO: the most
    recently used connection is the least likely to have been dropped)."""

    def __init__(
        self,
        url: str,
        size: int,
        factory: ConnectionFactory,
        prepare: Callable[[Any], None] | None = None,
    ) -> None:
        self.url = url
        self.size = size
        self._factory = factory
        # Run on a new connection before it is first used (the service bind).
        self._prepare = prepare
        self._idle: list[Pooled] = []
        self._lock = threading.Lock()
        self._closed = False

    def _new(self) -> Pooled:
        try:
            conn = self._factory.open(self.url)
        except ldap.SERVER_DOWN:
            raise self._factory.explain_down(self.url) from None
        try:
            if self._prepare is not None:
                self._prepare(conn)
        except ldap.SERVER_DOWN:
            _unbind_quietly(conn)
            raise self._factory.explain_down(self.url) from None
        except BaseException:
            _unbind_quietly(conn)
            raise
        return Pooled(conn, time.monotonic())

    def _checkout(self) -> Pooled:
        while True:
            with self._lock:
                item = self._idle.pop() if self._idle else None
            if item is None:
                return self._new()
            item.fresh = False
            if time.monotonic() - item.last_used < IDLE_CHECK_SECONDS or _alive(item.conn):
                return item
            _unbind_quietly(item.conn)

    def _checkin(self, item: Pooled) -> None:
        item.last_used = time.monotonic()
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(item)
                return
        _unbind_quietly(item.conn)

    def clear(self) -> None:
        """Close every idle connection (the server failed or restarted)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for item in idle:
            _unbind_quietly(item.conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.clear()

    @property
    def idle(self) -> int:
        return len(self._idle)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A connection for one operation. A reused one that is dead is replaced once
        by a new one (the idle list is emptied: its peers died with it); a connection
        whose operation raised anything else is not trusted again."""
        item = self._checkout()
        try:
            yield item.conn
        except ldap.SERVER_DOWN:
            _unbind_quietly(item.conn)
            self.clear()
            if item.fresh:
                raise self._factory.explain_down(self.url) from None
            raise _Stale from None
        except (ldap.INVALID_CREDENTIALS, ldap.NO_SUCH_OBJECT, ldap.SIZELIMIT_EXCEEDED):
            self._checkin(item)  # answers about the request, not the connection
            raise
        except BaseException:
            _unbind_quietly(item.conn)
            raise
        self._checkin(item)

    def run(self, operation: Callable[[Any], Any]) -> Any:
        """`operation(conn)` on a pooled connection, retried once on a new connection
        when the pooled one turns out to be dead."""
        try:
            with self.connection() as conn:
                return operation(conn)
        except _Stale:
            with self.connection() as conn:
                return operation(conn)


class _Stale(Exception):
    """A reused connection was dead: retry on a new one."""


def _alive(conn: Any) -> bool:
    try:
        conn.whoami_s()
    except ldap.LDAPError:
        return False
    return True


def _unbind_quietly(conn: Any) -> None:
    # The answer is already known; a failing unbind only means the socket is gone.
    with suppress(ldap.LDAPError):
        conn.unbind_s()
