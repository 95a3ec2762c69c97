"""geo_ip lookups against a small MaxMind database built for the test."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import netaddr
import pytest
from mmdb_writer import MMDBWriter

from mfaproxy.adapters.geoip import GeoIpDatabase, GeoIpDatabases
from mfaproxy.config.policies import AccessPoliciesConfig
from mfaproxy.core.policy import PolicyContext, Tri, evaluate
from mfaproxy.errors import ConfigError, CountryLookupError, GeoIpDatabaseError

NOW = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)


def build(path: Path, networks: dict[str, dict[str, Any]], ip_version: int = 6) -> Path:
    writer = MMDBWriter(
        ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="GeoIP2-Country"
    )
    for network, record in networks.items():
        writer.insert_network(netaddr.IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    return build(
        tmp_path / "country.mmdb",
        {
            "192.0.2.0/24": {"country": {"iso_code": "CA"}},
            "198.51.100.0/24": {"country": {"iso_code": "FR"}},
            # Only the registration country is known for this block.
            "203.0.113.0/24": {"registered_country": {"iso_code": "DE"}},
            "2001:db8::/32": {"country": {"iso_code": "CA"}},
            "100.64.0.0/10": {"continent": {"code": "NA"}},
        },
    )


@pytest.fixture
def ipv4_db(tmp_path: Path) -> Path:
    return build(tmp_path / "v4.mmdb", {"192.0.2.0/24": {"country": {"iso_code": "CA"}}}, 4)


@pytest.mark.parametrize(
    ("address", "country"),
    [
        ("192.0.2.10", "CA"),
        ("198.51.100.200", "FR"),
        ("203.0.113.5", "DE"),
        ("2001:db8::1", "CA"),
        ("100.64.1.1", None),  # a record without any country
        ("10.0.0.1", None),  # not in the database
    ],
)
def test_country(country_db: Path, address: str, country: str | None) -> None:
    database = GeoIpDatabase(country_db)
    try:
        assert database.country(address) == country
        assert database.country(ip_address(address)) == country
    finally:
        database.close()


def test_ipv6_in_an_ipv4_database_is_a_lookup_error(ipv4_db: Path) -> None:
    database = GeoIpDatabase(ipv4_db)
    assert database.country("192.0.2.1") == "CA"
    with pytest.raises(CountryLookupError, match="IPv6"):
        database.country("2001:db8::1")
    database.close()


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(GeoIpDatabaseError, match="No such file"):
        GeoIpDatabase(tmp_path / "absent.mmdb")
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(GeoIpDatabaseError, match=r"junk\.mmdb"):
        GeoIpDatabase(junk)


def policies(database: str, tmp_path: Path) -> AccessPoliciesConfig:
    rule = {"type": "geo_ip", "countries": ["CA"], "database": database}
    return AccessPoliciesConfig.model_validate(
        {
            "login": {
                "policies": [
                    {
                        "name": "canada-only",
                        "rules": [rule],
                        "action_when_matched": "continue",
                        "action_when_not_matched": "access_denied",
                    }
                ]
            }
        },
        context={"base_dir": tmp_path},
    )


@pytest.mark.parametrize(
    ("station", "action", "rule_result"),
    [
        ("192.0.2.7", "access_allowed", Tri.MATCH),
        ("2001:db8::7", "access_allowed", Tri.MATCH),
        ("198.51.100.7", "access_denied", Tri.NO_MATCH),
        ("10.0.0.7", "access_denied", Tri.NO_MATCH),
        ("AA-BB-CC-DD-EE-FF", "access_denied", Tri.UNKNOWN),
        (None, "access_denied", Tri.UNKNOWN),
    ],
)
def test_policy_with_a_real_database(
    country_db: Path, tmp_path: Path, station: str | None, action: str, rule_result: Tri
) -> None:
    config = policies(country_db.name, tmp_path)  # relative: resolved against tmp_path
    with GeoIpDatabases.open_for(config) as lookup:
        ctx = PolicyContext(
            user="alice",
            client="vpn",
            client_address=ip_address("127.0.0.1"),
            calling_station_id=station,
            country_lookup=lookup,
        )
        decision = evaluate(config.login, ctx, NOW)
    assert decision.action == action
    assert decision.trace[0].rules[0].result is rule_result


def test_lookup_failure_is_unknown_and_denies(ipv4_db: Path, tmp_path: Path) -> None:
    config = policies(str(ipv4_db), tmp_path)
    with GeoIpDatabases.open_for(config) as lookup:
        ctx = PolicyContext(
            user="alice",
            client="vpn",
            client_address=ip_address("127.0.0.1"),
            calling_station_id="2001:db8::7",
            country_lookup=lookup,
        )
        decision = evaluate(config.login, ctx, NOW)
    assert decision.action == "access_denied"
    assert decision.trace[0].rules[0].result is Tri.UNKNOWN
    assert "lookup" in decision.trace[0].rules[0].reason


def test_unopened_database_is_a_lookup_error(country_db: Path, tmp_path: Path) -> None:
    with GeoIpDatabases.open_for(policies(str(country_db), tmp_path)) as lookup:
        with pytest.raises(CountryLookupError, match="not an opened"):
            lookup(tmp_path / "other.mmdb", ip_address("192.0.2.1"))
        assert lookup(country_db, ip_address("198.51.100.1")) == "FR"


def test_open_for_names_the_rule_of_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        GeoIpDatabases.open_for(policies("geo/missing.mmdb", tmp_path))
    [problem] = info.value.problems
    assert problem.startswith("access_policies.login.policies.0.rules.0.database: ")
    assert str(tmp_path / "geo" / "missing.mmdb") in problem


def test_open_for_without_geo_rules_opens_nothing() -> None:
    with (
        GeoIpDatabases.open_for(AccessPoliciesConfig()) as lookup,
        pytest.raises(CountryLookupError),
    ):
        lookup(Path("/nowhere.mmdb"), ip_address("192.0.2.1"))
