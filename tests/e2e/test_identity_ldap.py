"""End to end with LDAP (a real slapd) and a filter naming two attributes, as AD
deployments do with sAMAccountName and userPrincipalName: uid or mail, any case, reach
one MFA identity (the entry's uid) through the real daemon, for the second factor, the
lockout counter and `users` rules alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from mfaproxy.config.schema import load_config
from mfaproxy.otp.totp import TotpSettings, new_secret
from mfaproxy.store.factory import open_user_store
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, exchange, login
from tests.support.slapd import (
    ALICE,
    BASE_DN,
    BOB,
    CAROL,
    GROUPS_DN,
    PEOPLE_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SlapdServer,
    run_slapd,
    ssha,
)

pytestmark = pytest.mark.e2e

SECRET = "identity-ldap-secret"
ALICE_SPELLINGS = ["alice", "ALICE", "Alice", "alice@example.org", "Alice@Example.ORG"]


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    yield from run_slapd()


@pytest.fixture(scope="module")
def daemon(slapd: SlapdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("identity-ldap")
    config = {
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {
            "backend": "ldap",
            "ldap": {
                "servers": [slapd.ldap_url],
                "base_dn": BASE_DN,
                "bind_dn": SERVICE_DN,
                "bind_password": SERVICE_PASSWORD,
                "user_filter": "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))",
                "identity_attribute": "uid",
            },
        },
        "access_policies": {
            "login": {
                "policies": [
                    {
                        "name": "no-bob",
                        "rules": [{"type": "users", "users": ["BOB"]}],
                        "action_when_matched": "access_denied",
                    }
                ]
            },
            "mfa": {"default_action": "mfa_optional_per_user"},
        },
        "multifactor": {
            "enabled": ["totp"],
            "default": "totp",
            "lockout": {"max_failures": 4, "lockout_seconds": 900},
        },
    }
    with Daemon(tmp, config) as running:
        yield running


@pytest.fixture(scope="module")
def alice_totp(daemon: Daemon) -> pyotp.TOTP:
    secret = new_secret(TotpSettings())
    store = open_user_store(load_config(daemon.config_path))
    try:
        store.set_totp_secret("alice", secret, 0.0)
        store.set_method("alice", "totp", 0.0)
    finally:
        store.close()
    return pyotp.TOTP(secret)


@pytest.fixture
def nas(daemon: Daemon) -> Iterator[UdpNas]:
    client = UdpNas(daemon.port)
    yield client
    client.close()


@pytest.mark.parametrize("typed", ALICE_SPELLINGS)
def test_uid_or_mail_in_any_case_is_asked_for_alices_code(
    daemon: Daemon, nas: UdpNas, alice_totp: pyotp.TOTP, typed: str
) -> None:
    reply = login(nas, SECRET, typed, ALICE.password)
    assert reply.challenged, f"{typed!r} skipped the second factor: {reply.message}"
    event = daemon.wait_audit(login_name=typed, outcome="challenge")
    assert event["user"] == "alice"


def test_wrong_codes_under_every_alias_lock_the_one_user(
    daemon: Daemon, nas: UdpNas, alice_totp: pyotp.TOTP
) -> None:
    for typed in ALICE_SPELLINGS[1:]:  # four aliases, one wrong code each: max_failures
        reply = login(nas, SECRET, typed, ALICE.password, "000000")
        assert reply.rejected or reply.challenged
    locked = login(nas, SECRET, "alice", ALICE.password)
    assert locked.rejected and "Too many failed attempts" in locked.message
    store = open_user_store(load_config(daemon.config_path))
    try:
        assert store.list_users() == ["alice"]  # no alias has a record of its own
        record = store.get_user("alice")
        assert record is not None and record.locked_until is not None
    finally:
        store.close()


@pytest.mark.parametrize("typed", ["bob", "BOB", "bob@example.org", "Bob@EXAMPLE.org"])
def test_a_users_rule_denies_every_spelling(daemon: Daemon, nas: UdpNas, typed: str) -> None:
    reply = login(nas, SECRET, typed, BOB.password)
    assert reply.rejected
    event = daemon.wait_audit(login_name=typed, reason="login_policy_denied")
    assert (event["user"], event["login_policy"]) == ("bob", "no-bob")


# --------------------------------------------------------------------------- password guessing

ERIN_DN = f"uid=erin,{PEOPLE_DN}"
ERIN_PASSWORD = "erin-Pa55word!"
ERIN_ALIASES = ["erin", "erin@example.org", "ERIN@Example.org", "EXAMPLE-not-a-realm", "Erin"]


def erin_binds(slapd: SlapdServer) -> int:
    """erin's user binds slapd received (its `stats` log), each a password tested."""
    return slapd.log_text().lower().count(f'bind dn="{ERIN_DN}" method=')


def test_a_burst_of_guesses_under_aliases_reaches_slapd_five_times(
    daemon: Daemon, slapd: SlapdServer
) -> None:
    """erin never logged in. Twenty wrong passwords at once, alternating her uid and
    her mail in several cases (and a name nobody has), each from its own
    Calling-Station-Id: slapd tests five of them (the user counter's free failures,
    counted on her identity before each bind), and the right password after is refused
    untested."""
    slapd.add(
        f"dn: {ERIN_DN}\nobjectClass: inetOrgPerson\nuid: erin\nmail: erin@example.org\n"
        f"cn: Erin\nsn: Erin\nuserPassword: {ssha(ERIN_PASSWORD)}\n"
    )
    nas = UdpNas(daemon.port)
    try:
        burst = []
        for i in range(20):
            typed = ERIN_ALIASES[i % len(ERIN_ALIASES)]
            station = f"198.51.100.{i}"
            request = access_request(SECRET, typed, f"guess-{i}", False, Calling_Station_Id=station)
            request.id = i
            request.add_message_authenticator()
            burst.append(request.RequestPacket())
        for datagram in burst:
            nas.send(datagram)
        codes: dict[int, int] = {}
        while len(codes) < len(burst):
            raw = nas.receive()
            codes[raw[1]] = raw[0]
        right = access_request(
            SECRET, "Erin@example.org", ERIN_PASSWORD, Calling_Station_Id="203.0.113.9"
        )
        refused = exchange(nas, SECRET, right)
    finally:
        nas.close()
    assert set(codes.values()) == {3}  # every one an Access-Reject
    assert erin_binds(slapd) == 5
    assert refused.rejected and "Try again later" in refused.message
    event = daemon.wait_audit(login_name="Erin@example.org", reason="password_throttled")
    assert event["password_throttle"] in ("user", "identity")
    assert erin_binds(slapd) == 5


# --------------------------------------------------------------------------- groups


@pytest.fixture(scope="module")
def groups_daemon(slapd: SlapdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Groups by name only under ou=groups; carol is in a group called mfa-admins that
    someone made under ou=people."""
    slapd.add(
        f"dn: cn=mfa-admins,{PEOPLE_DN}\nobjectClass: groupOfNames\ncn: mfa-admins\n"
        f"member: {CAROL.dn}\n"
    )
    tmp: Path = tmp_path_factory.mktemp("groups-ldap")
    config = {
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {
            "backend": "ldap",
            "ldap": {
                "servers": [slapd.ldap_url],
                "base_dn": BASE_DN,
                "bind_dn": SERVICE_DN,
                "bind_password": SERVICE_PASSWORD,
                "group_base_dn": GROUPS_DN,
            },
        },
        "replies": {"groups": [{"group": "MFA-Admins", "attributes": {"Class": "admins"}}]},
        "access_policies": {
            "mfa": {
                "default_action": "mfa_skipped",
                "policies": [
                    {
                        "name": "administrators-always",
                        "rules": [{"type": "administrator"}],
                        "action_when_matched": "mfa_required",
                    }
                ],
            }
        },
        "multifactor": {
            "enabled": ["totp"],
            "default": "totp",
            "administrators": {"group": "mfa-admins"},
        },
    }
    with Daemon(tmp, config) as running:
        yield running


def test_a_same_named_group_elsewhere_gives_neither_mfa_rule_nor_attributes(
    groups_daemon: Daemon,
) -> None:
    nas = UdpNas(groups_daemon.port)
    try:
        carol = login(nas, SECRET, "carol", CAROL.password)
        assert carol.accepted, carol.message
        assert carol.values("Class") == []
        event = groups_daemon.wait_audit(login_name="carol", outcome="accept")
        assert (event["reason"], event["mfa_policy"]) == ("mfa_skipped", "(default)")
        # alice is in the real one, under ou=groups: the administrators' rule applies
        alice = login(nas, SECRET, "alice", ALICE.password)
        assert alice.rejected and "not set up" in alice.message
        event = groups_daemon.wait_audit(login_name="alice", outcome="reject")
        assert event["mfa_policy"] == "administrators-always"
    finally:
        nas.close()
