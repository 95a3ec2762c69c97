"""`mfaproxy policy explain`: a CIDR skip, group policies from the users file, geo-IP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import netaddr
import pytest
from mmdb_writer import MMDBWriter

from mfaproxy.cli.main import main
from mfaproxy.directory.local import hash_password

CONFIG = """
clients:
  - {name: vpn, address: ["10.1.0.0/16"], secret: s3cret}
  - {name: wifi, address: ["192.0.2.10"], secret: s3cret}
directory: {backend: local, local: {users_file: users.yaml}}
multifactor: {administrators: {group: mfa-admins}}
access_policies:
  login:
    policies:
      - name: only vpn-users
        rules: [{type: user_groups, groups: [vpn-users]}]
        action_when_matched: access_allowed
        action_when_not_matched: access_denied
  mfa:
    policies:
      - name: admins always
        rules: [{type: administrator}]
        action_when_matched: mfa_required
      - name: office network
        rules: [{type: ip_addresses, source: calling_station_id, ranges: ["10.0.0.0/8"]}]
        action_when_matched: mfa_skipped
"""

GEO_POLICY = """
      - name: from Canada
        rules: [{type: geo_ip, countries: [CA], database: geo.mmdb}]
        action_when_matched: mfa_skipped
"""

Explain = Callable[..., tuple[int, str, str]]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    digest = hash_password("pw")
    users = {"alice": "[vpn-users]", "root": "[vpn-users, mfa-admins]", "bob": "[]"}
    lines = [
        f'  {name}: {{password_hash: "{digest}", groups: {groups}}}'
        for name, groups in users.items()
    ]
    (tmp_path / "users.yaml").write_text("users:\n" + "\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "mfaproxy.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def explain(config_path: Path, capsys: pytest.CaptureFixture[str]) -> Explain:
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["policy", "explain", "--config", str(config_path), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cidr_policy_skips_mfa_inside_the_range(explain: Explain) -> None:
    code, out, _ = explain("--user", "alice", "--client", "vpn", "--calling-station-id", "10.2.3.4")
    assert code == 0
    assert 'mfa: mfa_skipped (by policy "office network")' in out
    assert "calling_station_id 10.2.3.4 is in 10.0.0.0/8" in out
    # The default source address is the first host of the client's first range.
    assert "vpn (source address 10.1.0.1)" in out


def test_outside_the_range_the_default_requires_mfa(explain: Explain) -> None:
    _, out, _ = explain("--user", "alice", "--client", "vpn", "--calling-station-id", "203.0.113.9")
    assert "mfa: mfa_required (by the default action)" in out
    assert "is in none of the ranges" in out


def test_groups_come_from_the_users_file(explain: Explain) -> None:
    _, allowed, _ = explain("--user", "Alice", "--client", "vpn")
    assert 'login: access_allowed (by policy "only vpn-users")' in allowed
    assert "member of vpn-users" in allowed
    _, denied, _ = explain("--user", "bob", "--client", "vpn")
    assert 'login: access_denied (by policy "only vpn-users")' in denied
    assert "in no listed group" in denied
    # --groups replaces what the file says.
    _, given, _ = explain("--user", "bob", "--client", "vpn", "--groups", "vpn-users,staff")
    assert "login: access_allowed" in given and "staff, vpn-users" in given


def test_administrators_are_marked_from_their_groups(explain: Explain) -> None:
    args = ("--client", "vpn", "--calling-station-id", "10.2.3.4")
    _, admin, _ = explain("--user", "root", *args)
    assert "administrator       yes" in admin
    assert 'mfa: mfa_required (by policy "admins always")' in admin
    _, forced, _ = explain("--user", "root", *args, "--no-admin")
    assert 'mfa: mfa_skipped (by policy "office network")' in forced


def test_unknown_directory_data_gives_the_strictest_outcome(explain: Explain) -> None:
    code, out, err = explain("--user", "alice", "--client", "vpn", "--backend", "ldap")
    assert code == 0 and "pass --groups" in err
    assert "groups              unknown" in out
    assert "login: access_denied" in out and "the strictest applies" in out


def test_source_nas_ip_and_time_are_shown(explain: Explain) -> None:
    _, out, _ = explain(
        "--user",
        "alice",
        "--client",
        "wifi",
        "--source",
        "192.0.2.99",
        "--nas-ip-address",
        "192.0.2.1",
        "--at",
        "2024-05-03T12:00:00",
    )
    assert "wifi (source address 192.0.2.99)" in out
    assert "NAS-IP-Address      192.0.2.1" in out
    assert "2024-05-03 12:00:00 UTC (Fri)" in out  # naive --at is UTC


def test_unknown_client_lists_the_configured_ones(explain: Explain) -> None:
    code, out, err = explain("--user", "alice", "--client", "nope")
    assert code == 1 and out == ""
    assert "configured clients: vpn, wifi" in err


def test_geo_ip_rule_reads_the_database(explain: Explain, config_path: Path) -> None:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country")
    writer.insert_network(netaddr.IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "CA"}})
    writer.to_db_file(str(config_path.parent / "geo.mmdb"))
    config_path.write_text(CONFIG + GEO_POLICY, encoding="utf-8")
    _, out, _ = explain(
        "--user", "alice", "--client", "vpn", "--calling-station-id", "198.51.100.7"
    )
    assert "geo-IP              database loaded" in out
    assert 'mfa: mfa_skipped (by policy "from Canada")' in out
    assert "198.51.100.7 is in CA" in out


def test_missing_geo_database_is_a_configuration_error(explain: Explain, config_path: Path) -> None:
    config_path.write_text(CONFIG + GEO_POLICY, encoding="utf-8")
    code, _, err = explain("--user", "alice", "--client", "vpn")
    assert code == 1 and "cannot open MaxMind database" in err
