"""LdapChecker against a real slapd (tests/support/slapd.py), plain, StartTLS and LDAPS.

TLS verification failures are UNAVAILABLE with reason `tls_error`: a certificate the
client cannot trust says nothing about the user's password (it is a misconfiguration or
an attack on the path), so it must not count as a failed login or lock anyone out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from mfaproxy.config.directory import LdapConfig
from mfaproxy.core.groups import in_group
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.directory.ldap import LdapChecker
from mfaproxy.directory.ldap_results import bind_reject_reason, first_rdn_value
from mfaproxy.observability.metrics import REGISTRY
from tests.support.ports import free_port
from tests.support.slapd import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    GROUPS_DN,
    PEOPLE_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    CertificateAuthority,
    LdapTestUser,
    SlapdServer,
    run_slapd,
)

Factory = Callable[[LdapConfig], LdapChecker]


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    yield from run_slapd()


def search_config(slapd: SlapdServer, **overrides: Any) -> LdapConfig:
    data: dict[str, Any] = {
        "servers": [slapd.ldap_url],
        "base_dn": slapd.base_dn,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_filter": "(&(objectClass=inetOrgPerson)(uid={username}))",
        "connect_timeout": 2,
        "timeout": 2,
        "pool_size": 4,
        "group_base_dn": GROUPS_DN,
    }
    data.update(overrides)
    return LdapConfig.model_validate(data)


def names(groups: frozenset[str] | None) -> frozenset[str]:
    """The group names among a user's groups (the DNs are there too: core/groups.py)."""
    return frozenset(g for g in groups or () if "=" not in g)


def direct_config(slapd: SlapdServer, **overrides: Any) -> LdapConfig:
    data: dict[str, Any] = {
        "servers": [slapd.ldap_url],
        "user_dn_template": f"uid={{username}},{PEOPLE_DN}",
    }
    data.update(overrides)
    return search_config(slapd, bind_dn=None, bind_password=None, **data)


@pytest.fixture
async def make_checker() -> AsyncIterator[Factory]:
    made: list[LdapChecker] = []

    def make(config: LdapConfig) -> LdapChecker:
        checker = LdapChecker(config)
        made.append(checker)
        return checker

    yield make
    for checker in made:
        await checker.close()


def closed_url(scheme: str = "ldap") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def assert_identity_of(result: PrimaryResult, user: LdapTestUser) -> None:
    # The entry's uid (the filter's attribute), normalised: never the DN or the typed name.
    assert result.identity == user.uid.casefold()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- search then bind


async def test_checker_satisfies_the_protocol(slapd: SlapdServer, make_checker: Factory) -> None:
    checker: PasswordChecker = make_checker(search_config(slapd))
    assert checker.name == "ldap"


async def test_search_then_bind_accepts_with_directory_data(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker(search_config(slapd))
    result = await checker.authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT
    assert result.backend == "ldap"
    assert names(result.groups) == frozenset({"vpn-users", "mfa-admins"})
    assert result.email == ALICE.mail
    assert result.mobile == ALICE.mobile
    assert result.identity == "alice"


@pytest.mark.parametrize(
    ("user", "groups"),
    [(BOB, {"vpn-users"}), (CAROL, set()), (DAVE, {"vpn-users"})],
    ids=["bob", "carol", "dave-needs-escaping"],
)
async def test_groups_and_missing_attributes(
    slapd: SlapdServer, make_checker: Factory, user: LdapTestUser, groups: set[str]
) -> None:
    result = await make_checker(search_config(slapd)).authenticate(user.uid, user.password)
    assert result.accepted
    assert names(result.groups) == frozenset(groups)
    assert result.email == user.mail
    assert result.mobile is None
    assert_identity_of(result, user)


async def test_wrong_password_is_rejected(slapd: SlapdServer, make_checker: Factory) -> None:
    result = await make_checker(search_config(slapd)).authenticate("alice", BOB.password)
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "bad_password"
    assert result.groups == frozenset()


async def test_unknown_user_is_rejected(slapd: SlapdServer, make_checker: Factory) -> None:
    result = await make_checker(search_config(slapd)).authenticate("mallory", ALICE.password)
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "no_such_user"


async def test_empty_password_is_rejected(slapd: SlapdServer, make_checker: Factory) -> None:
    # RFC 4513 section 5.1.2: DN + empty password is an unauthenticated bind that
    # servers may answer with success.
    for config in (search_config(slapd), direct_config(slapd)):
        result = await make_checker(config).authenticate("alice", "")
        assert result.outcome is PrimaryOutcome.REJECT
        assert result.reason == "empty_password"


async def test_empty_password_never_reaches_a_server(make_checker: Factory) -> None:
    # Only a closed port is configured: contacting it would give UNAVAILABLE.
    config = LdapConfig.model_validate(
        {"servers": [closed_url()], "user_dn_template": f"uid={{username}},{PEOPLE_DN}"}
    )
    result = await make_checker(config).authenticate("alice", "")
    assert result.outcome is PrimaryOutcome.REJECT


@pytest.mark.parametrize(
    "username", ["*", "ali*", "alice)(uid=*", "*)(uid=alice", "alice)(|(uid=*", "a*e"]
)
async def test_filter_injection_does_not_authenticate(
    slapd: SlapdServer, make_checker: Factory, username: str
) -> None:
    # Unescaped, `ali*` and `a*e` find alice and her password would bind (RFC 4515).
    result = await make_checker(search_config(slapd)).authenticate(username, ALICE.password)
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "no_such_user"


async def test_filter_matching_several_entries_is_rejected(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    # A filter that can match several people cannot say who is logging in: fail closed.
    config = search_config(slapd, user_filter="(|(uid={username})(mail=*@example.org))")
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "ambiguous_user"


async def test_wrong_service_password_is_unavailable(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    config = search_config(slapd, bind_password="not-the-service-password")
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.UNAVAILABLE
    assert result.reason == "service_bind_failed"


# --------------------------------------------------------------------------- direct bind


async def test_direct_bind_accepts_and_reads_own_entry(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    result = await make_checker(direct_config(slapd)).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT
    assert result.identity == "alice"
    assert names(result.groups) == frozenset({"vpn-users", "mfa-admins"})
    assert result.email == ALICE.mail


async def test_direct_bind_escapes_the_dn(slapd: SlapdServer, make_checker: Factory) -> None:
    # `,` and `+` are DN syntax (RFC 4514): unescaped, the DN names another entry.
    result = await make_checker(direct_config(slapd)).authenticate(DAVE.uid, DAVE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT
    assert_identity_of(result, DAVE)
    assert names(result.groups) == frozenset({"vpn-users"})


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", BOB.password),
        ("mallory", ALICE.password),
        ("*", ALICE.password),
        (f"alice,{PEOPLE_DN}", ALICE.password),
    ],
)
async def test_direct_bind_rejects(
    slapd: SlapdServer, make_checker: Factory, username: str, password: str
) -> None:
    # slapd answers invalidCredentials for a missing DN too, so no_such_user cannot be
    # told apart from bad_password in this mode.
    result = await make_checker(direct_config(slapd)).authenticate(username, password)
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "bad_password"


# --------------------------------------------------------------------------- groups by search


async def test_group_search(slapd: SlapdServer, make_checker: Factory) -> None:
    config = search_config(
        slapd,
        # An attribute nobody has, so every group below comes from the search.
        attributes={"groups": "departmentNumber"},
        group_search={"base_dn": GROUPS_DN},
    )
    checker = make_checker(config)
    alice = await checker.authenticate("alice", ALICE.password)
    carol = await checker.authenticate("carol", CAROL.password)
    # Dave's DN holds `(` and `)`: found only if the DN is escaped in the group filter.
    dave = await checker.authenticate(DAVE.uid, DAVE.password)
    assert names(alice.groups) == frozenset({"vpn-users", "mfa-admins"})
    assert names(dave.groups) == frozenset({"vpn-users"})
    assert carol.accepted
    assert carol.groups == frozenset()


async def test_group_search_with_direct_bind(slapd: SlapdServer, make_checker: Factory) -> None:
    config = direct_config(
        slapd, attributes={"groups": "departmentNumber"}, group_search={"base_dn": GROUPS_DN}
    )
    result = await make_checker(config).authenticate("bob", BOB.password)
    assert names(result.groups) == frozenset({"vpn-users"})


# --------------------------------------------------------------------------- TLS


async def test_start_tls_with_ca_file(slapd: SlapdServer, make_checker: Factory) -> None:
    config = search_config(slapd, start_tls=True, ca_file=str(slapd.ca_file))
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT


async def test_ldaps_with_ca_file(slapd: SlapdServer, make_checker: Factory) -> None:
    config = search_config(slapd, servers=[slapd.ldaps_url], ca_file=str(slapd.ca_file))
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT
    assert names(result.groups) == frozenset({"vpn-users", "mfa-admins"})


@pytest.fixture
def rogue_ca(tmp_path: Path) -> Path:
    return CertificateAuthority.create("rogue CA").write(tmp_path / "rogue.pem")


@pytest.mark.parametrize("mode", ["ldaps", "start_tls"])
async def test_untrusted_certificate_is_unavailable(
    slapd: SlapdServer, make_checker: Factory, rogue_ca: Path, mode: str
) -> None:
    tls: dict[str, Any] = {"servers": [slapd.ldaps_url]} if mode == "ldaps" else {"start_tls": True}
    config = search_config(slapd, ca_file=str(rogue_ca), **tls)
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.UNAVAILABLE
    assert result.reason == "tls_error"


async def test_verification_can_be_turned_off(
    slapd: SlapdServer, make_checker: Factory, rogue_ca: Path
) -> None:
    config = search_config(
        slapd, servers=[slapd.ldaps_url], ca_file=str(rogue_ca), verify_certificate=False
    )
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT


# --------------------------------------------------------------------------- failover


async def test_failover_to_the_next_server(slapd: SlapdServer, make_checker: Factory) -> None:
    dead = closed_url()
    config = search_config(slapd, servers=[dead, slapd.ldap_url])
    checker = make_checker(config)
    with structlog.testing.capture_logs() as logs:
        first = await checker.authenticate("alice", ALICE.password)
        # The dead server is now held down and tried last: no second failure.
        second = await checker.authenticate("bob", BOB.password)
    assert first.outcome is PrimaryOutcome.ACCEPT
    assert second.outcome is PrimaryOutcome.ACCEPT
    failures = [entry for entry in logs if entry["event"] == "ldap.server_failed"]
    assert [(entry["server"], entry["reason"]) for entry in failures] == [(dead, "unreachable")]
    assert sample("mfaproxy_upstream_up", service="ldap", server=dead) == 0
    assert sample("mfaproxy_upstream_up", service="ldap", server=slapd.ldap_url) == 1


async def test_all_servers_down_is_unavailable(make_checker: Factory) -> None:
    config = LdapConfig.model_validate(
        {
            "servers": [closed_url(), closed_url("ldaps")],
            "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PASSWORD,
            "connect_timeout": 2,
        }
    )
    count = "mfaproxy_upstream_duration_seconds_count"
    before = sample(count, service="ldap", result="unavailable")
    result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.UNAVAILABLE
    assert result.reason == "unreachable"
    assert sample(count, service="ldap", result="unavailable") == before + 1


async def test_silent_server_is_a_timeout_not_a_reject(make_checker: Factory) -> None:
    # Accepts TCP connections (the kernel completes the handshake) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
        config = LdapConfig.model_validate(
            {"servers": [url], "user_dn_template": f"uid={{username}},{PEOPLE_DN}", "timeout": 1}
        )
        result = await make_checker(config).authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.UNAVAILABLE
    assert result.reason == "timeout"


# --------------------------------------------------------------------------- cross-cutting


async def test_password_never_logged(slapd: SlapdServer, make_checker: Factory) -> None:
    config = search_config(slapd, servers=[closed_url(), slapd.ldap_url])
    checker = make_checker(config)
    with structlog.testing.capture_logs() as logs:
        await checker.authenticate("alice", ALICE.password)
        await checker.authenticate("alice", BOB.password)
        await checker.authenticate("mallory", CAROL.password)
    assert logs, "expected at least the failover warning"
    text = repr(logs)
    for secret in (ALICE.password, BOB.password, CAROL.password, SERVICE_PASSWORD):
        assert secret not in text


async def test_concurrent_requests_share_the_bounded_pool(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    checker = make_checker(search_config(slapd, pool_size=2))
    attempts: list[Awaitable[PrimaryResult]] = []
    for _ in range(10):
        attempts += [
            checker.authenticate("alice", ALICE.password),
            checker.authenticate("bob", CAROL.password),
        ]
    results = await asyncio.gather(*attempts)
    assert [r.outcome for r in results] == [PrimaryOutcome.ACCEPT, PrimaryOutcome.REJECT] * 10


async def test_closed_checker_is_unavailable(slapd: SlapdServer) -> None:
    checker = LdapChecker(search_config(slapd))
    await checker.close()
    result = await checker.authenticate("alice", ALICE.password)
    assert result.outcome is PrimaryOutcome.UNAVAILABLE
    assert result.reason == "closed"


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        (
            49,
            "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, "
            "data 52e, v4563",
            "bad_password",
        ),
        (
            49,
            "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, "
            "data 775, v4563",
            "account_locked",
        ),
        (49, "... data 533, v2580", "account_disabled"),
        (49, "... data 773, v2580", "must_change_password"),
        (49, "", "bad_password"),
        (53, "unauthenticated bind (DN with no password) disallowed", "bind_refused"),
    ],
)
def test_bind_reject_reason(code: int, message: str, reason: str) -> None:
    assert bind_reject_reason(code, message) == reason


@pytest.mark.parametrize(
    ("dn", "name"),
    [
        ("cn=vpn-users,ou=groups,dc=example,dc=org", "vpn-users"),
        ("CN=VPN Users,OU=Groups,DC=corp,DC=example", "VPN Users"),
        (r"cn=Smith\, John,ou=groups,dc=example,dc=org", "Smith, John"),
        (r"cn=caf\C3\A9+ou=x,dc=example,dc=org", "café"),
    ],
)
def test_group_name_is_the_first_rdn_value(dn: str, name: str) -> None:
    assert first_rdn_value(dn) == name


# --------------------------------------------------------------------------- identity

TWO_ATTRIBUTES = "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))"


@pytest.mark.parametrize(
    "typed", ["alice", "ALICE", "Alice", "alice@example.org", "ALICE@Example.ORG"]
)
async def test_a_filter_naming_two_attributes_gives_one_identity(
    slapd: SlapdServer, make_checker: Factory, typed: str
) -> None:
    config = search_config(slapd, user_filter=TWO_ATTRIBUTES, identity_attribute="uid")
    result = await make_checker(config).authenticate(typed, ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT, result.reason
    assert result.identity == "alice"  # the entry's uid: never the mail address typed


@pytest.mark.parametrize("typed", ["\uff41lice", "alice ", " alice", "ALICE"])
async def test_whatever_spelling_slapd_matches_the_identity_is_the_entrys(
    slapd: SlapdServer, make_checker: Factory, typed: str
) -> None:
    """OpenLDAP's caseIgnoreMatch prepares values (RFC 4518: compatibility forms,
    insignificant spaces): these spellings bind as alice, so the identity must be the
    entry's, not the name typed (the engine refuses them before asking, too)."""
    result = await make_checker(search_config(slapd)).authenticate(typed, ALICE.password)
    assert (result.outcome, result.identity) == (PrimaryOutcome.ACCEPT, "alice")


async def test_several_values_give_the_smallest_whichever_was_typed(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    slapd.add(
        f"dn: uid=erin,{PEOPLE_DN}\nobjectClass: inetOrgPerson\nuid: erin\nuid: Ein\n"
        f"cn: Erin\nsn: Erin\nuserPassword: erin-Pa55word!\n"
    )
    checker = make_checker(search_config(slapd))
    for typed in ("erin", "ein", "EIN"):
        result = await checker.authenticate(typed, "erin-Pa55word!")
        assert (result.outcome, result.identity) == (PrimaryOutcome.ACCEPT, "ein")


async def test_an_entry_without_the_attribute_is_known_by_its_dn(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    config = search_config(slapd, identity_attribute="employeeNumber")
    result = await make_checker(config).authenticate("ALICE", ALICE.password)
    assert result.outcome is PrimaryOutcome.ACCEPT
    assert result.identity == f"uid=alice,{PEOPLE_DN}".lower()


async def test_direct_bind_identity_is_the_templates_attribute(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    config = direct_config(slapd)
    assert config.identity == "uid"
    result = await make_checker(config).authenticate("Bob", BOB.password)
    assert (result.outcome, result.identity) == (PrimaryOutcome.ACCEPT, "bob")


def test_a_filter_naming_two_attributes_needs_identity_attribute(slapd: SlapdServer) -> None:
    with pytest.raises(ValueError, match="set identity_attribute") as caught:
        search_config(slapd, user_filter=TWO_ATTRIBUTES)
    assert "uid, mail" in str(caught.value)
    assert search_config(slapd).identity == "uid"
    ad = "(|(sAMAccountName={username})(userPrincipalName={username}))"
    assert search_config(slapd, user_filter=ad, identity_attribute="sAMAccountName").identity == (
        "sAMAccountName"
    )


# --------------------------------------------------------------------------- groups

ROGUE = f"cn=mfa-admins,{PEOPLE_DN}"


@pytest.fixture(scope="module")
def rogue_group(slapd: SlapdServer) -> str:
    """A group named like the administrators group, made outside ou=groups (where,
    say, users may create groups), with carol in it."""
    slapd.add(f"dn: {ROGUE}\nobjectClass: groupOfNames\ncn: mfa-admins\nmember: {CAROL.dn}\n")
    return ROGUE


async def test_a_group_of_the_same_name_elsewhere_is_not_the_group(
    slapd: SlapdServer, make_checker: Factory, rogue_group: str
) -> None:
    checker = make_checker(search_config(slapd))
    carol = await checker.authenticate("carol", CAROL.password)
    alice = await checker.authenticate("alice", ALICE.password)
    assert carol.groups is not None and alice.groups is not None
    assert {g.lower() for g in carol.groups} == {ROGUE}  # by DN only: not under the base
    assert not in_group(carol.groups, "mfa-admins")
    assert not in_group(carol.groups, f"cn=mfa-admins,{GROUPS_DN}")
    assert in_group(alice.groups, "MFA-Admins")
    assert in_group(alice.groups, f"CN=MFA-Admins,{GROUPS_DN.upper()}")


async def test_without_a_group_base_groups_match_by_dn_only(
    slapd: SlapdServer, make_checker: Factory, rogue_group: str
) -> None:
    checker = make_checker(search_config(slapd, group_base_dn=None))
    alice = await checker.authenticate("alice", ALICE.password)
    assert names(alice.groups) == frozenset()
    assert not in_group(alice.groups, "mfa-admins")
    assert in_group(alice.groups, f"cn=mfa-admins,{GROUPS_DN}")


async def test_group_search_names_groups_under_its_own_base(
    slapd: SlapdServer, make_checker: Factory, rogue_group: str
) -> None:
    search = {"base_dn": GROUPS_DN}
    config = search_config(slapd, group_base_dn=None, group_search=search)
    carol = await make_checker(config).authenticate("carol", CAROL.password)
    # memberOf names the rogue group by DN; the search under ou=groups finds nothing
    assert not in_group(carol.groups, "mfa-admins")
    alice = await make_checker(config).authenticate("alice", ALICE.password)
    assert in_group(alice.groups, "mfa-admins")


# --------------------------------------------------------------------------- locate, then verify
# The password guard counts an attempt on the identity between the two (auth/password_guard.py).


def user_binds(slapd: SlapdServer, user: LdapTestUser) -> int:
    """Binds as `user` slapd received (its `stats` log: `BIND dn=... method=128`)."""
    return slapd.log_text().lower().count(f'bind dn="{user.dn.lower()}" method=')


@pytest.mark.parametrize("typed", ["alice", "ALICE@example.org", "alice@EXAMPLE.ORG"])
async def test_locate_names_the_identity_without_the_password(
    slapd: SlapdServer, make_checker: Factory, typed: str
) -> None:
    config = search_config(slapd, user_filter=TWO_ATTRIBUTES, identity_attribute="uid")
    checker = make_checker(config)
    before = user_binds(slapd, ALICE)
    located = await checker.locate(typed)
    assert (located.identity, located.answer) == ("alice", None)
    assert user_binds(slapd, ALICE) == before  # no password tested yet
    result = await checker.verify(located, ALICE.password)
    assert (result.outcome, result.identity) == (PrimaryOutcome.ACCEPT, "alice")
    assert user_binds(slapd, ALICE) == before + 1


async def test_locate_answers_for_nobody_and_for_two_entries(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    nobody = await make_checker(search_config(slapd)).locate("mallory")
    assert nobody.identity is None and nobody.answer is not None
    assert (nobody.answer.outcome, nobody.answer.reason) == (PrimaryOutcome.REJECT, "no_such_user")
    wide = search_config(slapd, user_filter="(|(uid={username})(objectClass=inetOrgPerson))")
    two = await make_checker(wide).locate("alice")
    assert two.answer is not None and two.answer.reason == "ambiguous_user"
    down = await make_checker(search_config(slapd, servers=[closed_url()])).locate("alice")
    assert down.answer is not None and down.answer.outcome is PrimaryOutcome.UNAVAILABLE


async def test_a_direct_bind_without_a_service_account_locates_nobody(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    """The entry can only be read once bound as the user: nothing before the password
    (the guard counts on the typed name, README "Security")."""
    checker = make_checker(direct_config(slapd))
    located = await checker.locate("bob")
    assert (located.identity, located.answer) == (None, None)
    result = await checker.verify(located, BOB.password)
    assert (result.outcome, result.identity) == (PrimaryOutcome.ACCEPT, "bob")


async def test_a_dn_template_with_a_service_account_locates_the_entry(
    slapd: SlapdServer, make_checker: Factory
) -> None:
    config = search_config(slapd, user_dn_template=f"uid={{username}},{PEOPLE_DN}")
    checker = make_checker(config)
    located = await checker.locate("Bob")
    assert located.identity == "bob"
    assert (await checker.verify(located, "wrong")).reason == "bad_password"
    assert (await checker.verify(located, BOB.password)).identity == "bob"
    nobody = await checker.locate("mallory")
    assert (nobody.identity, nobody.answer) == (None, None)  # the bind decides, as before
    assert (await checker.verify(nobody, "x")).reason == "bad_password"
