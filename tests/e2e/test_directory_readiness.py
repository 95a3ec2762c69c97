"""/readyz reflects the directory (real slapd), and `policy explain` reads a user's real
groups from it with the service account."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, access_request
from tests.support.ports import free_port
from tests.support.slapd import ALICE, CAROL, SlapdServer

pytestmark = pytest.mark.e2e
SECRET = "readiness-test-secret"


def ldap_config(slapd: SlapdServer, **ldap: Any) -> dict[str, Any]:
    return {
        "clients": [{"name": "vpn", "address": "127.0.0.1", "secret": SECRET}],
        "directory": {
            "backend": "ldap",
            "ldap": {
                "servers": [slapd.ldap_url],
                "base_dn": slapd.base_dn,
                "bind_dn": slapd.service_dn,
                "bind_password": slapd.service_password,
                "user_filter": "(uid={username})",
                "group_base_dn": "ou=groups,dc=example,dc=org",
                "connect_timeout": 1,
                "timeout": 2,
                **ldap,
            },
        },
        "access_policies": {
            "mfa": {"default_action": "mfa_skipped"},
            "login": {
                "policies": [
                    {
                        "name": "admins-only",
                        "rules": [{"type": "user_groups", "groups": ["mfa-admins"]}],
                        "action_when_matched": "continue",
                        "action_when_not_matched": "access_denied",
                    }
                ]
            },
        },
    }


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def login(nas: UdpNas, user: str, password: str) -> int:
    nas.send(access_request(SECRET, user, password).RequestPacket())
    return nas.receive()[0]  # the reply's code


@pytest.fixture
def slapd() -> Iterator[SlapdServer]:
    with SlapdServer() as server:
        yield server


def test_readyz_is_503_with_the_reason_while_ldap_is_down(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    metrics_port = free_port()
    config = ldap_config(slapd)
    config["server"] = {"metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    with Daemon(tmp_path, config) as daemon:
        nas = UdpNas(daemon.port)
        try:
            assert readyz(metrics_port) == (200, "ok\n")
            slapd.kill()
            assert login(nas, ALICE.uid, ALICE.password) == 3  # directory_unavailable
            status, reason = readyz(metrics_port)
            assert status == 503
            assert reason.startswith(f"directory: LDAP unavailable: {slapd.ldap_url}"), reason
            slapd.resume()
            assert login(nas, ALICE.uid, ALICE.password) == 2
            assert readyz(metrics_port) == (200, "ok\n")
        finally:
            nas.close()


def explain(config: Path, user: str) -> subprocess.CompletedProcess[str]:
    argv = ["policy", "explain", "--config", str(config), "--user", user, "--client", "vpn"]
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=60,
    )


def test_policy_explain_reads_the_groups_from_ldap(slapd: SlapdServer, tmp_path: Path) -> None:
    path = tmp_path / "mfaproxy.yaml"
    path.write_text(yaml.safe_dump(ldap_config(slapd)))
    admin = explain(path, ALICE.uid)
    assert admin.returncode == 0, admin.stderr
    # by DN, and by name since they are under group_base_dn
    groups = "cn=mfa-admins,ou=groups,dc=example,dc=org, cn=vpn-users,ou=groups,dc=example,dc=org"
    assert f"groups from LDAP: {groups}, mfa-admins, vpn-users" in admin.stderr
    assert "login: access_allowed (by the default action)" in admin.stdout
    assert "match     rules[0] user_groups: member of mfa-admins" in admin.stdout
    outsider = explain(path, CAROL.uid)  # no groups: the admins-only policy denies
    assert "groups from LDAP: none" in outsider.stderr
    assert 'login: access_denied (by policy "admins-only")' in outsider.stdout
    nobody = explain(path, "not-in-the-directory")
    assert "not-in-the-directory is not in the directory" in nobody.stderr
