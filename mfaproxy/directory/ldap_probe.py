"""LDAP without a user's password: `mfaproxy doctor` checks each server step by step,
and `policy explain` reads a user's real groups.

Both use the checker's own connections and searches (directory/ldap.py), so what they
report is what a login would meet: the same options, StartTLS, service account, user
filter and group rules. Every call blocks; callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import ldap

from mfaproxy.config.directory import LdapConfig
from mfaproxy.core.doctor import Check
from mfaproxy.directory.ldap import LdapChecker
from mfaproxy.directory.ldap_pool import ConnectionFactory, TlsFailure, Unreachable
from mfaproxy.errors import UpstreamUnavailable


class LookupUnsupported(Exception):
    """Without a service account (direct bind), nothing can be read without a password."""


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or (636 if parts.scheme == "ldaps" else 389)


def _why(exc: ldap.LDAPError) -> str:
    """libldap's description and diagnostic (a TLS or certificate error says which)."""
    detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    text = "; ".join(str(detail[key]) for key in ("desc", "info") if detail.get(key))
    return text or type(exc).__name__


class _Server:
    """One server's checks, in order; each step runs only when the previous passed."""

    def __init__(self, checker: LdapChecker, config: LdapConfig, url: str) -> None:
        self.checker, self.config, self.url = checker, config, url
        self.service = f"ldap {url}"
        self.checks: list[Check] = []

    def add(self, check: Check) -> bool:
        self.checks.append(check)
        return check.ok

    def connect(self) -> bool:
        host, port = _host_port(self.url)
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), self.config.connect_timeout):
                pass
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            return self.add(Check.failed(self.service, "connect", f"{host}:{port}: {why}"))
        took = (time.monotonic() - started) * 1000
        return self.add(Check.passed(self.service, "connect", f"{host}:{port} in {took:.0f} ms"))

    def tls(self, conn: Any) -> bool:
        if self.url.startswith("ldaps://"):
            step = "TLS"
            action = conn.whoami_s  # the handshake happens on the first operation
        elif self.config.start_tls:
            step = "StartTLS"
            action = conn.start_tls_s
        else:
            return self.add(Check.skipped(self.service, "TLS", "none: ldap:// without start_tls"))
        try:
            action()
        except ldap.LDAPError as exc:
            return self.add(Check.failed(self.service, step, _why(exc)))
        verified = "certificate verified" if self.config.verify_certificate else "NOT verified"
        return self.add(Check.passed(self.service, step, verified))

    def bind(self, conn: Any) -> bool:
        if self.config.bind_dn is None:
            detail = "no service account (direct bind with user_dn_template)"
            return self.add(Check.skipped(self.service, "service bind", detail))
        refused = self.checker.bind_service(conn)
        if refused is not None:
            detail = f"{self.config.bind_dn} refused: {refused}"
            return self.add(Check.failed(self.service, "service bind", detail))
        return self.add(Check.passed(self.service, "service bind", f"as {self.config.bind_dn}"))

    def user(self, conn: Any, username: str | None) -> None:
        if username is None:
            self.add(Check.skipped(self.service, "user search", "give --user NAME to search"))
            return
        if self.config.bind_dn is None:
            self.add(Check.skipped(self.service, "user search", "needs a service account"))
            return
        entry = self.checker.find_entry(conn, username)
        if isinstance(entry, str):
            query = self.config.user_filter.replace("{username}", username)
            detail = f"{query} under {self.config.base_dn or '(root)'}: {entry}"
            self.add(Check.failed(self.service, "user search", detail))
            return
        self.add(Check.passed(self.service, "user search", entry.dn))
        groups = sorted(self.checker.entry_groups(conn, entry))
        detail = ", ".join(groups) if groups else "none (group rules and replies will not match)"
        self.add(Check.passed(self.service, "groups", detail))

    def run(self, username: str | None) -> list[Check]:
        if not self.connect():
            return self.checks
        conn = ConnectionFactory(self.config).configure(self.url)
        try:
            if self.tls(conn) and self.bind(conn):
                self.user(conn, username)
        finally:
            with contextlib.suppress(ldap.LDAPError):
                conn.unbind_s()
        return self.checks


def diagnose(checker: LdapChecker, config: LdapConfig, username: str | None) -> list[Check]:
    """Every server, each step: connect, (Start)TLS, service bind, user search, groups."""
    return [
        check for url in config.servers for check in _Server(checker, config, url).run(username)
    ]


def lookup_groups(checker: LdapChecker, config: LdapConfig, username: str) -> frozenset[str] | None:
    """The user's groups, read as the service account; None when no entry matches.
    Servers in order; raises UpstreamUnavailable when none answers."""
    if config.bind_dn is None:
        raise LookupUnsupported("without a service account (bind_dn) groups need a password")
    failures = []
    for url in config.servers:

        def read(conn: Any) -> frozenset[str] | None:
            entry = checker.find_entry(conn, username)
            if isinstance(entry, str):
                if entry in ("no_such_user", "ambiguous_user"):
                    return None
                raise UpstreamUnavailable(entry)
            return frozenset(checker.entry_groups(conn, entry))

        try:
            found: frozenset[str] | None = checker.service_pool(url).run(read)
        except (Unreachable, TlsFailure, ldap.LDAPError, UpstreamUnavailable) as exc:
            failures.append(f"{url}: {type(exc).__name__}")
            continue
        return found
    raise UpstreamUnavailable("no LDAP server answered (" + "; ".join(failures) + ")")
