"""LDAP and Active Directory primary-password checker.

Two ways to find the user's entry:

- search then bind: a service account (`bind_dn`) searches `base_dn` with `user_filter`,
  then the found DN is bound with the user's password (RFC 4513 section 5.1.3);
- direct bind: the DN is built from `user_dn_template` and bound; no service account.

A login is two phases (directory/base.py): `locate` runs the service account's search
(or reads the templated DN) and names the identity before any password is tested, so
the password guard can count the attempt on it; `verify` binds the entry found, with
no second search. Without a service account nothing can be located before the bind.

Connections are persistent and pooled per server, like FreeRADIUS's rlm_ldap: one pool
bound as the service account for searches, one for user binds (directory/ldap_pool.py).
The groups come with the user's entry (`memberOf`) in the same search, so a login is
two round trips. The client is python-ldap (libldap): measured against ldap3 with the
same pooled connections in bench/ldap_clients.py, it costs a fraction of the CPU per
login (ldap3 encodes and decodes BER in pure Python), and it releases the GIL while it
waits, so the thread pool (`pool_size` threads, each holding at most one connection of
each kind per server) runs beside the event loop. Servers are tried in order; one that
fails is tried last for HOLD_DOWN_SECONDS so a dead replica does not cost every request
a connect timeout. An outage is never reported as a wrong password: when no server
answers, the outcome is UNAVAILABLE and policy decides. The password never reaches a
log line, metric label or exception message.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ldap
import ldap.dn
import ldap.filter
import structlog

from mfaproxy.admission.pool import BoundedPool
from mfaproxy.config.directory import LdapConfig
from mfaproxy.core.identity import normalise, normalise_dn
from mfaproxy.core.primary import (
    IdentityLookup,
    Located,
    LookupStatus,
    PrimaryOutcome,
    PrimaryResult,
)
from mfaproxy.directory.ldap_pool import ConnectionFactory, ConnectionPool, TlsFailure, Unreachable
from mfaproxy.directory.ldap_results import (
    INVALID_CREDENTIALS,
    RejectError,
    ServerError,
    bind_reject_reason,
    error_name,
    first_rdn_value,
    info,
    on_server,
    user_bind,
)
from mfaproxy.errors import ConfigError
from mfaproxy.observability.metrics import UPSTREAM_LATENCY, UPSTREAM_UP

log = structlog.get_logger(__name__)
T = TypeVar("T")

SERVICE = "ldap"
HOLD_DOWN_SECONDS = 30.0
# How long a readiness probe's answer is reused.
HEALTH_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class _Entry:
    dn: str
    # Attribute names folded to lower case (LDAP attribute names are case-insensitive).
    attributes: dict[str, list[bytes]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        found = self.attributes.get(name.lower(), [])
        return [item.decode("utf-8", "replace") for item in found if item]

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None


@dataclass
class _Found:
    """A located entry (core/primary.py Located.found), and what the search cost."""

    entry: _Entry
    seconds: float = 0.0


@dataclass
class _ServerPools:
    service: ConnectionPool
    bind: ConnectionPool

    def clear(self) -> None:
        self.service.clear()
        self.bind.clear()

    def close(self) -> None:
        self.service.close()
        self.bind.close()


class LdapChecker:
    """Checks primary passwords against LDAP / Active Directory servers."""

    name = "ldap"

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        _check_ca_file(config)
        # Bounded and fair (admission/pool.py): no backlog of binds nobody waits for.
        self._executor = BoundedPool("ldap", config.pool_size, config.queue)
        factory = ConnectionFactory(config)
        # Each thread holds at most one connection of each kind: pool_size bounds both.
        self._pools = {
            url: _ServerPools(
                ConnectionPool(url, config.pool_size, factory, self._service_bind),
                ConnectionPool(url, config.pool_size, factory),
            )
            for url in config.servers
        }
        self._failed_at: dict[str, float] = {}
        self._up: set[str] = set()
        self._closed = False
        self._health: str | None = None
        self._health_at = -HEALTH_CACHE_SECONDS
        if not config.verify_certificate:
            log.warning("ldap.certificate_not_verified")
        if not config.start_tls and any(url.startswith("ldap://") for url in config.servers):
            log.warning("ldap.cleartext_passwords", hint="use ldaps:// or start_tls")

    async def authenticate(self, username: str, password: str) -> PrimaryResult:
        return await self.verify(await self.locate(username), password)

    async def locate(self, username: str) -> Located:
        """The user's entry, found with the service account before the password is
        tested: the search every login makes anyway, its entry reused by `verify` (no
        second search). Without a service account (a direct bind) the entry can only be
        read once bound, so nothing is located."""
        if not username or any(ord(char) < 32 or ord(char) == 127 for char in username):
            return Located(username, answer=self._result(PrimaryOutcome.REJECT, "bad_username"))
        if self._closed:
            return Located(username, answer=self._result(PrimaryOutcome.UNAVAILABLE, "closed"))
        if self._config.bind_dn is None:
            return Located(username)
        started = time.perf_counter()
        located = await self._on_servers(
            lambda url: self._locate_on(url, username),
            lambda reason: Located(
                username, answer=self._result(PrimaryOutcome.UNAVAILABLE, reason)
            ),
        )
        seconds = time.perf_counter() - started
        if located.answer is not None:
            self._observe(located.answer, seconds)
        elif isinstance(located.found, _Found):
            located.found.seconds = seconds
        return located

    async def verify(self, located: Located, password: str) -> PrimaryResult:
        if located.answer is not None:
            return located.answer
        # RFC 4513 section 5.1.2: a simple bind with a DN and an empty password is an
        # "unauthenticated bind" that many servers (Active Directory among them) answer
        # with success. Refuse it here, before any server sees it.
        if not password:
            return self._result(PrimaryOutcome.REJECT, "empty_password")
        if self._closed:
            return self._result(PrimaryOutcome.UNAVAILABLE, "closed")
        found = located.found if isinstance(located.found, _Found) else None
        entry, username = (found.entry if found else None), located.username
        started = time.perf_counter()
        result = await self._on_servers(
            lambda url: self._attempt(url, username, password, entry),
            lambda reason: self._result(PrimaryOutcome.UNAVAILABLE, reason),
        )
        self._observe(result, time.perf_counter() - started + (found.seconds if found else 0.0))
        return result

    @staticmethod
    def _observe(result: PrimaryResult, seconds: float) -> None:
        UPSTREAM_LATENCY.labels(service=SERVICE, result=result.outcome.value).observe(seconds)

    async def close(self) -> None:
        self._closed = True
        # Running attempts end within their socket timeouts; queued ones are dropped.
        await self._executor.close(wait=True)
        for pools in self._pools.values():
            pools.close()

    async def find_identity(self, username: str) -> IdentityLookup:
        """The identity of the entry `user_filter` (or the DN template) names, read with
        the service account; UNKNOWN without one, or when no server answers."""
        if self._config.bind_dn is None:
            return IdentityLookup(LookupStatus.UNKNOWN, detail="direct bind: no account to search")
        for url in self._servers_in_order(time.monotonic()):
            try:
                return await self._executor.run(self._lookup, url, username)
            except (ServerError, Unreachable, TlsFailure, ldap.LDAPError):
                continue
        return IdentityLookup(LookupStatus.UNKNOWN, detail="no LDAP server answered")

    def _lookup(self, url: str, username: str) -> IdentityLookup:
        try:
            entry = self._locate_entry(self._pools[url], username)
        except RejectError as rejected:
            if rejected.reason == "no_such_user":
                return IdentityLookup(LookupStatus.NOT_FOUND)
            return IdentityLookup(LookupStatus.UNKNOWN, detail=rejected.reason)
        if entry is None:
            return IdentityLookup(LookupStatus.NOT_FOUND)
        return IdentityLookup(LookupStatus.FOUND, self._identity(entry))

    def _locate_entry(self, pools: _ServerPools, username: str) -> _Entry | None:
        """The entry the user filter (or the DN template) names, read as the service
        account; None when the template's DN has nothing readable. Raises RejectError
        (no_such_user, ambiguous_user)."""
        if self._config.user_dn_template is not None:
            dn = self._templated_dn(username)
            read: _Entry = pools.service.run(lambda conn: self._read_entry(conn, dn))
            return read if read.attributes else None
        found: _Entry = pools.service.run(lambda conn: self._find_user(conn, username))
        return found

    def _templated_dn(self, username: str) -> str:
        assert self._config.user_dn_template is not None
        return self._config.user_dn_template.replace(
            "{username}", ldap.dn.escape_dn_chars(username)
        )

    def idle_connections(self, url: str) -> tuple[int, int]:
        """(service, bind) connections kept open to `url` (for tests and operators)."""
        pools = self._pools[url]
        return pools.service.idle, pools.bind.idle

    async def _on_servers(self, call: Callable[[str], T], down: Callable[[str], T]) -> T:
        """`call(url)` on a pool thread, server after server until one answers; `down`
        of the last failure's reason when none does."""
        reason = "unreachable"
        for url in self._servers_in_order(time.monotonic()):
            try:
                result = await self._executor.run(call, url)
            except ServerError as failure:
                reason = failure.reason
                self._failed_at[url] = time.monotonic()
                self._up.discard(url)
                self._pools[url].clear()
                self._health_at = -HEALTH_CACHE_SECONDS  # /readyz must not lag a login
                UPSTREAM_UP.labels(service=SERVICE, server=url).set(0)
                log.warning("ldap.server_failed", server=url, reason=reason, error=failure.error)
                continue
            if self._failed_at.pop(url, None) is not None or url not in self._up:
                # Set once per recovery, not on every login.
                self._up.add(url)
                self._health_at = -HEALTH_CACHE_SECONDS
                UPSTREAM_UP.labels(service=SERVICE, server=url).set(1)
            return result
        log.error("ldap.unavailable", servers=len(self._config.servers), reason=reason)
        return down(reason)

    def _servers_in_order(self, now: float) -> list[str]:
        """Configured order, except that servers which failed lately go last."""
        servers = self._config.servers
        if not self._failed_at:
            return servers

        def held_down(url: str) -> bool:
            failed = self._failed_at.get(url)
            return failed is not None and now - failed < HOLD_DOWN_SECONDS

        return sorted(servers, key=held_down)

    def _result(self, outcome: PrimaryOutcome, reason: str) -> PrimaryResult:
        if outcome is PrimaryOutcome.REJECT:
            log.debug("ldap.rejected", reason=reason)
        return PrimaryResult(outcome=outcome, backend=self.name, reason=reason)

    # ------------------------------------------------------------------ worker thread

    def _locate_on(self, url: str, username: str) -> Located:
        """One server's search for the user. Raises ServerError when it cannot answer."""
        try:
            entry = on_server(lambda: self._locate_entry(self._pools[url], username))
        except RejectError as rejected:
            return Located(username, answer=self._result(PrimaryOutcome.REJECT, rejected.reason))
        if entry is None:
            return Located(username)  # the bind decides, then the entry is read
        return Located(username, identity=self._identity(entry), found=_Found(entry))

    def _attempt(
        self, url: str, username: str, password: str, entry: _Entry | None
    ) -> PrimaryResult:
        """One server's bind. Raises ServerError when it cannot answer."""
        try:
            return on_server(lambda: self._check(self._pools[url], username, password, entry))
        except RejectError as rejected:
            return self._result(PrimaryOutcome.REJECT, rejected.reason)

    def _check(
        self, pools: _ServerPools, username: str, password: str, entry: _Entry | None
    ) -> PrimaryResult:
        """Bind as the user: the DN of the located `entry`, else of the DN template,
        else of a search made now."""
        config = self._config
        if entry is not None:
            user_dn = entry.dn
        elif config.user_dn_template is not None:
            user_dn = self._templated_dn(username)
        else:
            entry = pools.service.run(lambda conn: self._find_user(conn, username))
            user_dn = entry.dn
        # Sent as the UTF-8 octets the user typed (RFC 4511 section 4.2): directories
        # compare those with what they stored.
        try:
            secret = password.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise RejectError("bad_password") from None
        # Without a service account the entry (and the groups) are read as the user, on
        # the connection that user has just bound, before it goes back to the pool.
        as_user = config.bind_dn is None

        def bind(conn: Any) -> tuple[_Entry | None, set[str]]:
            user_bind(conn, user_dn, secret)
            if not as_user:
                return None, set()
            own = self._read_entry(conn, user_dn)
            return own, self._search_groups(conn, own.dn) if config.group_search else set()

        try:
            own, groups = pools.bind.run(bind)
        except ldap.INVALID_CREDENTIALS as exc:
            raise RejectError(bind_reject_reason(INVALID_CREDENTIALS, info(exc))) from None
        if entry is None:
            # Read with the service account's rights when there is one: users often may
            # not read group entries, and the attributes must not depend on their ACLs.
            entry = own or pools.service.run(lambda conn: self._read_entry(conn, user_dn))
        found = entry
        groups |= self.member_of(found)
        if config.group_search is not None and not as_user:
            groups |= pools.service.run(lambda conn: self._search_groups(conn, found.dn))
        return self._accept(entry, groups)

    def member_of(self, entry: _Entry) -> set[str]:
        """The groups named in the entry's group attribute (`memberOf`): each DN, and its
        first RDN value as written (`CN=VPN Users,OU=...` is `VPN Users`) when the DN is
        under group_base_dn: a name means something only where groups are kept."""
        groups: set[str] = set()
        base = self._config.group_base_dn
        suffix = "," + normalise_dn(base) if base is not None else None
        for dn in entry.values(self._config.attributes.groups):
            groups.add(dn)
            if suffix is not None and normalise_dn(dn).endswith(suffix):
                groups.add(first_rdn_value(dn))
        return groups

    # ------------------------------------------------------------------ lookups (no password)
    # For directory/ldap_probe.py: `mfaproxy doctor` and `policy explain`.

    def service_pool(self, url: str) -> ConnectionPool:
        """Connections to `url` bound as the service account."""
        return self._pools[url].service

    def bind_service(self, conn: Any) -> str | None:
        """Bind `conn` as the service account: None, or why the server refused."""
        try:
            self._service_bind(conn)
        except ServerError as failure:
            return failure.error
        return None

    def find_entry(self, conn: Any, username: str) -> _Entry | str:
        """The user's entry, searched on a service-bound `conn`, or why there is none
        (no_such_user, ambiguous_user, or the search's error)."""
        try:
            return self._find_user(conn, username)
        except RejectError as refused:
            return refused.reason
        except ServerError as failure:
            return f"{failure.reason} ({failure.error})"

    async def health(self) -> str | None:
        """None when a server answers on a service connection (or, without a service
        account, on a new one); otherwise what each server said. Cached for a few
        seconds: /readyz may be asked often, and each answer costs the directory."""
        now = time.monotonic()
        if now - self._health_at < HEALTH_CACHE_SECONDS:
            return self._health
        self._health = await self._executor.run(self._probe)
        self._health_at = time.monotonic()
        return self._health

    def _probe(self) -> str | None:
        failures = []
        for url in self._config.servers:
            try:
                if self._config.bind_dn is not None:
                    self._pools[url].service.run(lambda conn: conn.whoami_s())
                else:
                    self._pools[url].bind.run(lambda conn: conn.whoami_s())
            except (Unreachable, TlsFailure, ServerError, ldap.LDAPError) as exc:
                reason = exc.reason if isinstance(exc, ServerError) else type(exc).__name__
                failures.append(f"{url} {reason}")
                continue
            return None
        return "LDAP unavailable: " + "; ".join(failures)

    def entry_groups(self, conn: Any, entry: _Entry) -> set[str]:
        """The user's groups as a login finds them: the group attribute, then
        `group_search` when configured, on a service-bound `conn`."""
        groups = self.member_of(entry)
        if self._config.group_search is not None:
            groups |= self._search_groups(conn, entry.dn)
        return groups

    def _accept(self, entry: _Entry, groups: set[str]) -> PrimaryResult:
        attributes = self._config.attributes
        return PrimaryResult(
            outcome=PrimaryOutcome.ACCEPT,
            backend=self.name,
            reason="ok",
            groups=frozenset(groups),
            email=entry.first(attributes.email),
            mobile=entry.first(attributes.mobile),
            identity=self._identity(entry),
        )

    def _identity(self, entry: _Entry) -> str:
        """The entry's identity_attribute, normalised: the same whichever attribute of the
        filter the user typed (uid or mail), and whatever spelling the server matched."""
        attribute = self._config.identity
        # Several values (uid may have more than one): the smallest, so the choice does
        # not depend on the order a server returns them in.
        values = sorted({normalise(value) for value in entry.values(attribute)} - {""})
        if values:
            return values[0]
        # Stable, but not the same key as the attribute would give: worth fixing.
        log.warning("ldap.identity_from_dn", attribute=attribute)
        return normalise_dn(entry.dn)

    def _service_bind(self, conn: Any) -> None:
        """Bind a new service connection; raises ServerError when it is refused."""
        config = self._config
        secret = config.bind_password.get_secret_value() if config.bind_password else ""
        if not config.bind_dn or not secret:
            # Same trap as RFC 4513 section 5.1.2: an empty password binds as nobody.
            raise ServerError("service_bind_failed", "no bind_dn or bind_password")
        try:
            conn.simple_bind_s(config.bind_dn, secret.encode())
        except (ldap.SERVER_DOWN, ldap.TIMEOUT):
            raise
        except ldap.LDAPError as exc:
            raise ServerError("service_bind_failed", error_name(exc)) from None

    def _find_user(self, conn: Any, username: str) -> _Entry:
        # RFC 4515 section 3: escape the value so `*`, `(` and `)` are data, not syntax.
        escaped = ldap.filter.escape_filter_chars(username)
        query = self._config.user_filter.replace("{username}", escaped)
        # Two entries are enough to know the filter is ambiguous.
        try:
            entries = self._search(conn, self._config.base_dn, query, size_limit=2)
        except ldap.SIZELIMIT_EXCEEDED:
            entries = [_Entry(""), _Entry("")]
        if not entries:
            raise RejectError("no_such_user")
        if len(entries) > 1:
            log.warning("ldap.ambiguous_user", username=username)
            raise RejectError("ambiguous_user")
        return entries[0]

    def _read_entry(self, conn: Any, user_dn: str) -> _Entry:
        entries = self._search(conn, user_dn, "(objectClass=*)", ldap.SCOPE_BASE, size_limit=1)
        # Bound but unreadable (ACLs): accept with no attributes rather than guess.
        return entries[0] if entries else _Entry(user_dn)

    def _search_groups(self, conn: Any, user_dn: str) -> set[str]:
        group_search = self._config.group_search
        assert group_search is not None
        escaped = ldap.filter.escape_filter_chars(user_dn)
        query = group_search.filter.replace("{user_dn}", escaped)
        name = group_search.name_attribute
        entries = self._search(conn, group_search.base_dn, query, attributes=[name])
        # Found under group_search.base_dn: their names are as good as their DNs.
        return {entry.first(name) or first_rdn_value(entry.dn) for entry in entries} | {
            entry.dn for entry in entries
        }

    @property
    def _attribute_names(self) -> list[str]:
        attributes = self._config.attributes
        return [attributes.email, attributes.mobile, attributes.groups, self._config.identity]

    def _search(
        self,
        conn: Any,
        base: str,
        query: str,
        scope: int = ldap.SCOPE_SUBTREE,
        *,
        attributes: list[str] | None = None,
        size_limit: int = 0,
    ) -> list[_Entry]:
        try:
            found = conn.search_ext_s(
                base,
                scope,
                query,
                self._attribute_names if attributes is None else attributes,
                timeout=self._config.timeout,
                sizelimit=size_limit,
            )
        except ldap.NO_SUCH_OBJECT:
            return []
        except (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.SIZELIMIT_EXCEEDED):
            raise
        except ldap.LDAPError as exc:
            raise ServerError("search_failed", error_name(exc)) from None
        # Continuation references (common on AD) come back with no DN: not entries.
        return [
            _Entry(dn, {name.lower(): values for name, values in attrs.items()})
            for dn, attrs in found
            if dn is not None and isinstance(attrs, dict)
        ]


# ---------------------------------------------------------------------- helpers


def _check_ca_file(config: LdapConfig) -> None:
    """A CA file that cannot be read as certificates is a configuration error, found at
    start rather than on the first login."""
    if config.ca_file is None:
        return
    try:
        ssl.create_default_context(cafile=str(config.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"directory.ldap.ca_file: cannot use {config.ca_file}"]) from exc
