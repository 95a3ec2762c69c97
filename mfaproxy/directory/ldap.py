"""LDAP and Active Directory primary-password checker.

Two ways to find the user's entry:

- search then bind: a service account (`bind_dn`) searches `base_dn` with `user_filter`,
  then the found DN is bound with the user's password (RFC 4513 section 5.1.3);
- direct bind: the DN is built from `user_dn_template` and bound; no service account.

ldap3 is synchronous, so each attempt runs in a bounded thread pool (`pool_size`) and the
event loop never blocks. Servers are tried in order; one that fails is tried last for
HOLD_DOWN_SECONDS so a dead replica does not cost every request a connect timeout. An
outage is never reported as a wrong password: when no server answers, the outcome is
UNAVAILABLE and policy decides. The password never reaches a log line, metric label or
exception message (ldap3's own Connection repr includes it, so connections are never
logged either).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from ldap3 import BASE, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPException,
    LDAPInvalidDnError,
    LDAPResponseTimeoutError,
    LDAPSocketOpenError,
    LDAPSSLConfigurationError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from mfaproxy.config.directory import LdapConfig
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.errors import ConfigError
from mfaproxy.observability.metrics import UPSTREAM_LATENCY, UPSTREAM_UP

log = structlog.get_logger(__name__)

SERVICE = "ldap"
HOLD_DOWN_SECONDS = 30.0

# Result codes, RFC 4511 appendix A.
SUCCESS = 0
SIZE_LIMIT_EXCEEDED = 4
NO_SUCH_OBJECT = 32
INVALID_CREDENTIALS = 49
# Codes that say the server, not the user, has a problem: try the next server.
# strongerAuthRequired (8) and confidentialityRequired (13) mean TLS is needed: a
# configuration fault, not a wrong password.
SERVER_TROUBLE = frozenset({1, 2, 3, 8, 11, 12, 13, 51, 52, 80})

# Active Directory explains invalidCredentials with "data <hex>" in the diagnostic
# message; the values are Win32 error codes (MS-ERREF section 2.2). An operator acts
# differently on a locked or expired account than on a typo.
AD_REASONS = {
    "525": "no_such_user",
    "52e": "bad_password",
    "530": "logon_hours",
    "531": "workstation_restricted",
    "532": "password_expired",
    "533": "account_disabled",
    "701": "account_expired",
    "773": "must_change_password",
    "775": "account_locked",
}
_AD_DATA = re.compile(r"\bdata ([0-9a-f]{3})\b", re.IGNORECASE)
# RFC 4514 section 2.4: `\` then a special character or two hex digits (a UTF-8 octet).
_DN_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


class _RejectError(Exception):
    """The directory answered, and the answer is no."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ServerError(Exception):
    """This server could not answer; the next one is tried."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # An exception class or result-code name: never a message, which may echo input.
        self.error = error


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: dict[str, Any] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        # ldap3 returns lists without a schema, single values with one; accept both.
        found = self.attributes.get(name)
        if found is None:
            return []
        items = found if isinstance(found, list) else [found]
        return [str(item) for item in items if item not in (None, "", b"")]

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None


class LdapChecker:
    """Checks primary passwords against LDAP / Active Directory servers."""

    name = "ldap"

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(
            max_workers=config.pool_size, thread_name_prefix="mfaproxy-ldap"
        )
        self._tls = _make_tls(config)
        # ldap3 packs the receive timeout into SO_RCVTIMEO as whole seconds.
        self._timeout = max(1, math.ceil(config.timeout))
        self._failed_at: dict[str, float] = {}
        self._closed = False
        if not config.verify_certificate:
            log.warning("ldap.certificate_not_verified")
        if not config.start_tls and any(url.startswith("ldap://") for url in config.servers):
            log.warning("ldap.cleartext_passwords", hint="use ldaps:// or start_tls")

    async def authenticate(self, username: str, password: str) -> PrimaryResult:
        # RFC 4513 section 5.1.2: a simple bind with a DN and an empty password is an
        # "unauthenticated bind" that many servers (Active Directory among them) answer
        # with success. Refuse it here, before any server sees it.
        if not password:
            return self._result(PrimaryOutcome.REJECT, "empty_password")
        if not username or any(ord(char) < 32 or ord(char) == 127 for char in username):
            return self._result(PrimaryOutcome.REJECT, "bad_username")
        if self._closed:
            return self._result(PrimaryOutcome.UNAVAILABLE, "closed")
        started = time.perf_counter()
        result = await self._try_servers(username, password)
        UPSTREAM_LATENCY.labels(service=SERVICE, result=result.outcome.value).observe(
            time.perf_counter() - started
        )
        return result

    async def close(self) -> None:
        self._closed = True
        # Running attempts end within their socket timeouts; queued ones are dropped.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _try_servers(self, username: str, password: str) -> PrimaryResult:
        loop = asyncio.get_running_loop()
        reason = "unreachable"
        for url in self._servers_in_order(time.monotonic()):
            try:
                result = await loop.run_in_executor(
                    self._executor, self._attempt, url, username, password
                )
            except _ServerError as failure:
                reason = failure.reason
                self._failed_at[url] = time.monotonic()
                UPSTREAM_UP.labels(service=SERVICE, server=url).set(0)
                log.warning("ldap.server_failed", server=url, reason=reason, error=failure.error)
                continue
            self._failed_at.pop(url, None)
            UPSTREAM_UP.labels(service=SERVICE, server=url).set(1)
            return result
        log.error("ldap.unavailable", servers=len(self._config.servers), reason=reason)
        return self._result(PrimaryOutcome.UNAVAILABLE, reason)

    def _servers_in_order(self, now: float) -> list[str]:
        """Configured order, except that servers which failed lately go last."""
        servers = self._config.servers

        def held_down(url: str) -> bool:
            failed = self._failed_at.get(url)
            return failed is not None and now - failed < HOLD_DOWN_SECONDS

        return sorted(servers, key=held_down)

    def _result(self, outcome: PrimaryOutcome, reason: str) -> PrimaryResult:
        if outcome is PrimaryOutcome.REJECT:
            log.debug("ldap.rejected", reason=reason)
        return PrimaryResult(outcome=outcome, backend=self.name, reason=reason)

    # ------------------------------------------------------------------ worker thread

    def _attempt(self, url: str, username: str, password: str) -> PrimaryResult:
        """One server, start to finish. Raises _ServerError when it cannot answer."""
        conn: Connection | None = None
        try:
            conn = self._connect(url)
            return self._check(conn, username, password)
        except _RejectError as rejected:
            return self._result(PrimaryOutcome.REJECT, rejected.reason)
        except LDAPException as exc:
            raise _ServerError(_classify(exc), _error_name(exc)) from None
        finally:
            if conn is not None:
                _close_quietly(conn)

    def _connect(self, url: str) -> Connection:
        config = self._config
        server = Server(url, connect_timeout=config.connect_timeout, tls=self._tls, get_info=NONE)
        conn = Connection(
            server,
            receive_timeout=self._timeout,
            raise_exceptions=False,
            read_only=True,
            # A referral would send the user's password to a server we did not choose.
            auto_referrals=False,
        )
        conn.open(read_server_info=False)
        if config.start_tls and not server.ssl:
            # RFC 4513 section 3: StartTLS before any bind, so no password goes in clear.
            conn.start_tls(read_server_info=False)
        return conn

    def _check(self, conn: Connection, username: str, password: str) -> PrimaryResult:
        config = self._config
        entry: _Entry | None = None
        if config.user_dn_template is not None:
            user_dn = config.user_dn_template.replace("{username}", escape_rdn(username))
        else:
            self._service_bind(conn)
            entry = self._find_user(conn, username)
            user_dn = entry.dn
        _user_bind(conn, user_dn, password)
        # Read with the service account's rights when there is one: users often may not
        # read group entries, and the attributes must not depend on their ACLs.
        if config.bind_dn is not None and (entry is None or config.group_search is not None):
            self._service_bind(conn)
        if entry is None:
            entry = self._read_entry(conn, user_dn)
        return self._accept(conn, entry)

    def _accept(self, conn: Connection, entry: _Entry) -> PrimaryResult:
        attributes = self._config.attributes
        groups = {first_rdn_value(dn) for dn in entry.values(attributes.groups)}
        if self._config.group_search is not None:
            groups |= self._search_groups(conn, entry.dn)
        return PrimaryResult(
            outcome=PrimaryOutcome.ACCEPT,
            backend=self.name,
            reason="ok",
            groups=frozenset(groups),
            email=entry.first(attributes.email),
            mobile=entry.first(attributes.mobile),
            user_id=entry.dn,
        )

    def _service_bind(self, conn: Connection) -> None:
        config = self._config
        secret = config.bind_password.get_secret_value() if config.bind_password else ""
        if not config.bind_dn or not secret:
            # Same trap as RFC 4513 section 5.1.2: an empty password binds as nobody.
            raise _ServerError("service_bind_failed", "no bind_dn or bind_password")
        if not _bind_as(conn, config.bind_dn, secret.encode()):
            raise _ServerError("service_bind_failed", _result_name(conn))

    def _find_user(self, conn: Connection, username: str) -> _Entry:
        # RFC 4515 section 3: escape the value so `*`, `(` and `)` are data, not syntax.
        query = self._config.user_filter.replace("{username}", escape_filter_chars(username))
        # Two entries are enough to know the filter is ambiguous.
        entries = self._search(conn, self._config.base_dn, query, SUBTREE, size_limit=2)
        if not entries:
            raise _RejectError("no_such_user")
        if len(entries) > 1:
            log.warning("ldap.ambiguous_user", username=username)
            raise _RejectError("ambiguous_user")
        return entries[0]

    def _read_entry(self, conn: Connection, user_dn: str) -> _Entry:
        entries = self._search(conn, user_dn, "(objectClass=*)", BASE, size_limit=1)
        # Bound but unreadable (ACLs): accept with no attributes rather than guess.
        return entries[0] if entries else _Entry(user_dn)

    def _search_groups(self, conn: Connection, user_dn: str) -> set[str]:
        group_search = self._config.group_search
        assert group_search is not None
        query = group_search.filter.replace("{user_dn}", escape_filter_chars(user_dn))
        name = group_search.name_attribute
        entries = self._search(conn, group_search.base_dn, query, SUBTREE, attributes=[name])
        return {entry.first(name) or first_rdn_value(entry.dn) for entry in entries}

    @property
    def _attribute_names(self) -> list[str]:
        attributes = self._config.attributes
        return [attributes.email, attributes.mobile, attributes.groups]

    def _search(
        self,
        conn: Connection,
        base: str,
        query: str,
        scope: str,
        *,
        attributes: list[str] | None = None,
        size_limit: int = 0,
    ) -> list[_Entry]:
        conn.search(
            base,
            query,
            search_scope=scope,
            attributes=self._attribute_names if attributes is None else attributes,
            size_limit=size_limit,
            time_limit=self._timeout,
        )
        code = (conn.result or {}).get("result")
        if code not in (SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT):
            raise _ServerError("search_failed", _result_name(conn))
        # searchResRef (continuation references, common on AD) are not entries.
        return [
            _Entry(item["dn"], dict(item.get("attributes") or {}))
            for item in conn.response or []
            if item.get("type") == "searchResEntry"
        ]


# ---------------------------------------------------------------------- helpers


def _make_tls(config: LdapConfig) -> Tls:
    validate = ssl.CERT_REQUIRED if config.verify_certificate else ssl.CERT_NONE
    ca_file = str(config.ca_file) if config.ca_file is not None else None
    try:
        return Tls(validate=validate, ca_certs_file=ca_file)
    except LDAPSSLConfigurationError as exc:
        raise ConfigError([f"directory.ldap.ca_file: cannot use {ca_file}"]) from exc


def _bind_as(conn: Connection, dn: str, secret: bytes) -> bool:
    # Not Connection.rebind: it turns a receive timeout into a bare LDAPBindError, and a
    # timeout must be told apart from other failures.
    conn.user, conn.password, conn.authentication = dn, secret, SIMPLE
    return bool(conn.bind(read_server_info=False))


def _user_bind(conn: Connection, user_dn: str, password: str) -> None:
    """Bind as the user; raise _RejectError or _ServerError unless the password is right."""
    # Sent as the UTF-8 octets the user typed (RFC 4511 section 4.2): directories compare
    # those with what they stored; ldap3's SASLprep of str passwords would refuse some.
    try:
        secret = password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _RejectError("bad_password") from None
    if _bind_as(conn, user_dn, secret):
        return
    result = conn.result or {}
    code = result.get("result")
    if code in SERVER_TROUBLE:
        raise _ServerError("bind_failed", _result_name(conn))
    raise _RejectError(bind_reject_reason(code, str(result.get("message") or "")))


def bind_reject_reason(code: object, message: str) -> str:
    """The reason for a refused user bind, with Active Directory's sub-codes."""
    if code != INVALID_CREDENTIALS:
        return "bind_refused"
    match = _AD_DATA.search(message)
    if match is None:
        return "bad_password"
    return AD_REASONS.get(match.group(1).lower(), "bad_password")


def first_rdn_value(dn: str) -> str:
    """`cn=VPN Users,ou=Groups,...` -> `VPN Users`, unescaped (RFC 4514 section 2.4)."""
    try:
        rdns = parse_dn(dn)
    except LDAPInvalidDnError:
        return dn
    if not rdns:
        return dn
    value: str = rdns[0][1]
    raw = bytearray()
    position = 0
    for match in _DN_ESCAPE.finditer(value):
        raw += value[position : match.start()].encode()
        token = match.group(1)
        raw += bytes.fromhex(token) if len(token) == 2 else token.encode()
        position = match.end()
    raw += value[position:].encode()
    return raw.decode("utf-8", errors="replace")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and, when ldap3 tried several addresses, what each one raised."""
    found = [exc]
    if isinstance(exc, LDAPSocketOpenError) and len(exc.args) > 1:
        history = exc.args[1] if isinstance(exc.args[1], list) else []
        found += [item[0] for item in history if isinstance(item, tuple) and item]
    return found


def _classify(exc: BaseException) -> str:
    causes = _causes(exc)
    tls_errors = (ssl.SSLError, LDAPCertificateError, LDAPStartTLSError)
    if any(isinstance(cause, tls_errors) for cause in causes):
        return "tls_error"
    if isinstance(exc, LDAPSocketOpenError):
        return "unreachable"
    if any(isinstance(cause, (TimeoutError, LDAPResponseTimeoutError)) for cause in causes):
        return "timeout"
    if isinstance(exc, LDAPCommunicationError):
        return "unreachable"
    return "server_error"


def _error_name(exc: BaseException) -> str:
    # ldap3 builds classes that inherit from its error and the socket/ssl error behind it.
    outer, *inner = (cls.__name__ for cls in (type(exc), *type(exc).__bases__[1:]))
    return f"{outer}({inner[0]})" if inner else outer


def _result_name(conn: Connection) -> str:
    result = conn.result or {}
    return f"{result.get('description', 'unknown')}({result.get('result', '?')})"


def _close_quietly(conn: Connection) -> None:
    # The answer is already known; a failing unbind only means the socket is gone.
    with contextlib.suppress(LDAPException):
        conn.unbind()
