"""End to end: the real daemon with the LDAP backend (a real slapd) and the RADIUS
backend (a real FreeRADIUS upstream), radclient as the NAS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.freeradius import FreeRadiusServer, UserSpec
from tests.support.radclient import radclient
from tests.support.slapd import (
    ALICE,
    BASE_DN,
    BOB,
    CAROL,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SlapdServer,
    run_slapd,
)

pytestmark = pytest.mark.e2e

SECRET = "directories-secret"
MA = {"Message-Authenticator": "0x00"}
NO_MFA = {"mfa": {"default_action": "mfa_skipped"}}


def clients() -> list[dict[str, Any]]:
    return [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}]


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    yield from run_slapd()


@pytest.fixture(scope="module")
def ldap_daemon(slapd: SlapdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("ldap")
    (tmp / "bind.password").write_text(SERVICE_PASSWORD + "\n")
    config = {
        "clients": clients(),
        "directory": {
            "backend": "ldap",
            "ldap": {
                # the first server is down: failover is part of the path
                "servers": ["ldap://127.0.0.1:9", slapd.ldap_url],
                "base_dn": BASE_DN,
                "bind_dn": SERVICE_DN,
                "bind_password_file": str(tmp / "bind.password"),
                "user_filter": "(uid={username})",
                "group_base_dn": "ou=groups,dc=example,dc=org",
                "start_tls": True,
                "ca_file": str(slapd.ca_file),
                "connect_timeout": 2,
            },
        },
        "replies": {
            "groups": [
                {
                    "group": "mfa-admins",
                    "attributes": {"Class": "admins", "Fortinet-Group-Name": "admins"},
                },
                {"group": "vpn-users", "attributes": {"Filter-Id": "vpn-users"}},
            ]
        },
        "access_policies": {
            "login": {
                "policies": [
                    {
                        "name": "vpn-users-only",
                        "rules": [{"type": "user_groups", "groups": ["vpn-users"]}],
                        "action_when_matched": "continue",
                        "action_when_not_matched": "access_denied",
                    }
                ]
            },
            **NO_MFA,
        },
    }
    with Daemon(tmp, config) as running:
        yield running


def test_ldap_accept_with_group_mapped_attributes(ldap_daemon: Daemon) -> None:
    result = radclient(
        ldap_daemon.port, SECRET, {"User-Name": ALICE.uid, "User-Password": ALICE.password, **MA}
    )
    assert result.code == "Access-Accept", result.output
    assert result.values("Filter-Id") == ["vpn-users"]
    assert result.values("Fortinet-Group-Name") == ["admins"]
    assert result.values("Class") == ["0x61646d696e73"]
    ldap_daemon.wait_audit(login_name=ALICE.uid, backend="ldap", outcome="accept")


def test_ldap_groups_differ_per_user(ldap_daemon: Daemon) -> None:
    result = radclient(
        ldap_daemon.port, SECRET, {"User-Name": BOB.uid, "User-Password": BOB.password, **MA}
    )
    assert result.code == "Access-Accept", result.output
    assert result.values("Filter-Id") == ["vpn-users"]
    assert result.values("Class") == []


def test_ldap_wrong_password_and_group_policy(ldap_daemon: Daemon) -> None:
    wrong = radclient(
        ldap_daemon.port, SECRET, {"User-Name": ALICE.uid, "User-Password": "nope", **MA}
    )
    assert wrong.code == "Access-Reject"
    # carol's password is right, but she is in no group: the login policy denies her
    carol = radclient(
        ldap_daemon.port, SECRET, {"User-Name": CAROL.uid, "User-Password": CAROL.password, **MA}
    )
    assert carol.code == "Access-Reject"
    ldap_daemon.wait_audit(
        login_name=CAROL.uid, reason="login_policy_denied", login_policy="vpn-users-only"
    )


def test_ldap_outage_rejects_as_unavailable(tmp_path: Path) -> None:
    config = {
        "clients": clients(),
        "directory": {
            "backend": "ldap",
            "ldap": {
                "servers": ["ldap://127.0.0.1:9"],
                "base_dn": BASE_DN,
                "bind_dn": SERVICE_DN,
                "bind_password": SERVICE_PASSWORD,
                "connect_timeout": 1,
            },
        },
        "access_policies": NO_MFA,
    }
    with Daemon(tmp_path, config) as daemon:
        result = radclient(
            daemon.port, SECRET, {"User-Name": ALICE.uid, "User-Password": ALICE.password, **MA}
        )
        assert result.code == "Access-Reject"
        daemon.wait_audit(login_name=ALICE.uid, reason="directory_unavailable")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FreeRadiusServer]:
    users = {
        "dora": UserSpec(
            "dora-pw",
            reply={
                "Class": "upstream-class",
                "Filter-Id": "upstream-filter",
                "Session-Timeout": 3600,
            },
        ),
    }
    with FreeRadiusServer(users, secret="upstream-secret") as server:
        yield server


def test_radius_backend_passes_through_configured_attributes(
    upstream: FreeRadiusServer, tmp_path: Path
) -> None:
    config = {
        "clients": clients(),
        "directory": {
            "backend": "radius",
            "radius": {
                "servers": [
                    {"host": upstream.host, "port": upstream.port, "secret": upstream.secret}
                ],
                "timeout": 2,
                "retries": 1,
                "pass_through_attributes": ["Class", "Filter-Id"],
            },
        },
        "access_policies": NO_MFA,
    }
    with Daemon(tmp_path, config) as daemon:
        ok = radclient(daemon.port, SECRET, {"User-Name": "dora", "User-Password": "dora-pw", **MA})
        assert ok.code == "Access-Accept", ok.output
        assert ok.values("Filter-Id") == ["upstream-filter"]
        assert ok.values("Class") == ["0x" + b"upstream-class".hex()]
        assert ok.values("Session-Timeout") == []  # not in the pass-through list
        wrong = radclient(daemon.port, SECRET, {"User-Name": "dora", "User-Password": "bad", **MA})
        assert wrong.code == "Access-Reject"
        daemon.wait_audit(login_name="dora", backend="radius", outcome="accept")
