"""Pooled LDAP connections against real slapd processes: reuse, a restart under a live
pool, a server that goes away, failover, StartTLS on every pooled connection, and the
identity of a pooled connection after a wrong password.

What the pool did is read from slapd's own `stats` log (one line per connection and
operation), not from the client: `ACCEPT` opens a connection, `BIND dn=...` binds it,
`TLS established` says StartTLS completed on it.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog

from mfaproxy.config.directory import LdapConfig
from mfaproxy.core.primary import PrimaryOutcome
from mfaproxy.directory.ldap import LdapChecker
from tests.directory.test_ldap import names
from tests.support.slapd import (
    ADMIN_DN,
    ALICE,
    BOB,
    CAROL,
    PEOPLE_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SlapdServer,
)

Factory = Callable[..., LdapChecker]
_BIND = re.compile(r'conn=(\d+) op=\d+ BIND dn="([^"]*)"')
_ACCEPT = re.compile(r"conn=(\d+) fd=\d+ ACCEPT")
_TLS = re.compile(r"conn=(\d+) fd=\d+ TLS established")


@pytest.fixture
def own_slapd() -> Iterator[SlapdServer]:
    """A slapd for this test alone: it will be restarted or killed."""
    with SlapdServer() as server:
        yield server


@pytest.fixture(scope="module")
def shared_slapd() -> Iterator[SlapdServer]:
    with SlapdServer() as server:
        yield server


@pytest.fixture
async def make_checker() -> AsyncIterator[Factory]:
    made: list[LdapChecker] = []

    def make(servers: list[str], **overrides: Any) -> LdapChecker:
        data: dict[str, Any] = {
            "servers": servers,
            "base_dn": "dc=example,dc=org",
            "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PASSWORD,
            "connect_timeout": 2,
            "timeout": 2,
            "pool_size": 2,
            "group_base_dn": "ou=groups,dc=example,dc=org",
        }
        data.update(overrides)
        checker = LdapChecker(LdapConfig.model_validate(data))
        made.append(checker)
        return checker

    yield make
    for checker in made:
        await checker.close()


Conn = tuple[int, str]  # (which slapd process since the start, connection number)


def _events(slapd: SlapdServer, pattern: re.Pattern[str]) -> list[tuple[Conn, tuple[str, ...]]]:
    """Matches of `pattern` in slapd's log, keyed by process and connection: a
    restarted slapd numbers its connections from 1000 again."""
    found, process = [], 0
    for line in slapd.log_text().splitlines():
        if "slapd starting" in line:
            process += 1
        match = pattern.search(line)
        if match is not None:
            found.append(((process, match.group(1)), match.groups()[1:]))
    return found


def connections(slapd: SlapdServer) -> set[Conn]:
    return {conn for conn, _ in _events(slapd, _ACCEPT)}


def binds_by_connection(slapd: SlapdServer) -> dict[Conn, list[str]]:
    """Binds made by the checker (the fixture's own admin binds left out)."""
    found: dict[Conn, list[str]] = defaultdict(list)
    for conn, (dn,) in _events(slapd, _BIND):
        if dn.lower() != ADMIN_DN.lower():
            found[conn].append(dn.lower())
    return found


async def test_logins_reuse_a_few_connections(
    own_slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker([own_slapd.ldap_url])
    before = connections(own_slapd)
    for _ in range(10):
        assert (await checker.authenticate("alice", ALICE.password)).accepted
        assert not (await checker.authenticate("bob", "wrong")).accepted
    opened = connections(own_slapd) - before
    # Sequential logins: one service and one bind connection, kept open.
    assert len(opened) == 2
    assert checker.idle_connections(own_slapd.ldap_url) == (1, 1)


async def test_service_connections_never_take_a_user_identity(
    own_slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker([own_slapd.ldap_url], pool_size=3)
    attempts = [
        checker.authenticate(user, password)
        for user, password in [
            ("alice", ALICE.password),
            ("bob", "wrong"),
            ("carol", CAROL.password),
        ]
        * 6
    ]
    results = await asyncio.gather(*attempts)
    assert [r.accepted for r in results] == [True, False, True] * 6
    service = SERVICE_DN.lower()
    for conn, dns in binds_by_connection(own_slapd).items():
        if service in dns:
            assert set(dns) == {service}, f"connection {conn} bound as {dns}"


@pytest.mark.parametrize("mode", ["search", "direct"])
async def test_a_wrong_password_never_lends_an_identity(
    shared_slapd: SlapdServer, make_checker: Factory, mode: str
) -> None:
    # One bind connection: it is bound as alice, then refused for bob (RFC 4511 section
    # 4.2.1 leaves it anonymous), then used again. Nothing of alice's may reach bob,
    # and carol's login afterwards reads carol's entry, not alice's.
    direct: dict[str, Any] = (
        {
            "bind_dn": None,
            "bind_password": None,
            "user_dn_template": f"uid={{username}},{PEOPLE_DN}",
        }
        if mode == "direct"
        else {}
    )
    checker = make_checker([shared_slapd.ldap_url], pool_size=1, **direct)
    alice = await checker.authenticate("alice", ALICE.password)
    bob = await checker.authenticate("bob", ALICE.password)
    carol = await checker.authenticate("carol", CAROL.password)
    bob_again = await checker.authenticate("bob", "")
    alice_again = await checker.authenticate("alice", ALICE.password)
    assert alice.accepted and names(alice.groups) == frozenset({"vpn-users", "mfa-admins"})
    assert bob.outcome is PrimaryOutcome.REJECT
    assert bob.reason == "bad_password"
    assert bob.groups == frozenset() and bob.email is None and bob.identity is None
    assert carol.accepted
    assert carol.identity == CAROL.uid and carol.groups == frozenset() and carol.email is None
    assert bob_again.outcome is PrimaryOutcome.REJECT
    assert alice_again.accepted and alice_again.email == ALICE.mail


async def test_a_restart_under_a_live_pool_costs_no_login(
    own_slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker([own_slapd.ldap_url])
    assert (await checker.authenticate("alice", ALICE.password)).accepted
    assert checker.idle_connections(own_slapd.ldap_url) == (1, 1)
    own_slapd.restart()  # every pooled connection is now dead
    with structlog.testing.capture_logs() as logs:
        after = [await checker.authenticate("bob", BOB.password) for _ in range(3)]
    assert all(result.accepted for result in after)
    assert not [entry for entry in logs if entry["event"] == "ldap.server_failed"]


async def test_a_server_that_goes_away_is_unavailable_then_recovers(
    own_slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker([own_slapd.ldap_url])
    assert (await checker.authenticate("alice", ALICE.password)).accepted
    own_slapd.kill()
    gone = await checker.authenticate("alice", ALICE.password)
    # An outage, never a wrong password (no lockout, policy decides).
    assert gone.outcome is PrimaryOutcome.UNAVAILABLE
    assert gone.reason == "unreachable"
    assert checker.idle_connections(own_slapd.ldap_url) == (0, 0)
    own_slapd.resume()
    back = await checker.authenticate("alice", ALICE.password)
    assert back.accepted


async def test_failover_from_a_pooled_server_that_dies(
    own_slapd: SlapdServer, shared_slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker([own_slapd.ldap_url, shared_slapd.ldap_url])
    first = await checker.authenticate("alice", ALICE.password)
    assert first.accepted
    # The first server answered: nothing was opened to the second one yet.
    assert checker.idle_connections(shared_slapd.ldap_url) == (0, 0)
    own_slapd.kill()
    with structlog.testing.capture_logs() as logs:
        moved = await checker.authenticate("alice", ALICE.password)
        # The dead server is held down now: the next login goes straight to the other.
        second = await checker.authenticate("bob", BOB.password)
    assert moved.accepted and second.accepted
    failures = [entry for entry in logs if entry["event"] == "ldap.server_failed"]
    assert [(entry["server"], entry["reason"]) for entry in failures] == [
        (own_slapd.ldap_url, "unreachable")
    ]
    assert checker.idle_connections(shared_slapd.ldap_url) == (1, 1)


async def test_start_tls_on_every_pooled_connection(
    own_slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker(
        [own_slapd.ldap_url], start_tls=True, ca_file=str(own_slapd.ca_file), pool_size=3
    )
    before = connections(own_slapd)
    results = await asyncio.gather(
        *[checker.authenticate("alice", ALICE.password) for _ in range(12)]
    )
    assert all(result.accepted for result in results)
    own_slapd.restart()  # the new connections after a restart negotiate TLS again
    assert (await checker.authenticate("bob", BOB.password)).accepted
    opened = connections(own_slapd) - before
    encrypted = {conn for conn, _ in _events(own_slapd, _TLS)}
    bound = set(binds_by_connection(own_slapd)) & opened
    assert bound, "expected binds on the pooled connections"
    # A bind (service or user) on a connection without TLS would be a password in clear.
    assert bound <= encrypted
    assert len(bound) <= 2 * 3 + 2  # bounded by the pools, not one per login
