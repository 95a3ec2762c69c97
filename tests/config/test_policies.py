"""The access_policies schema: defaults, every rule type, and errors by dotted path."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mfaproxy.config import base as config_base
from mfaproxy.config import policies as policy_config
from mfaproxy.config.policies import (
    AccessPoliciesConfig,
    AdministratorRule,
    ClientsRule,
    GeoIpRule,
    IpAddressesRule,
    TimeRule,
)

EXAMPLE = """
login:
  default_action: access_allowed
  policies:
    - name: block-outside
      rules:
        - {type: ip_addresses, source: calling_station_id, ranges: ["10.0.0.0/8", "2001:db8::/32"]}
      validation: any
      action_when_matched: continue
      action_when_not_matched: access_denied
    - name: admins
      active: false
      rules: [{type: administrator}]
      action_when_matched: access_allowed
mfa:
  default_action: mfa_required
  policies:
    - name: office
      validation: all
      rules:
        - {type: time, days: [mon, tue, wed, thu, fri], start: "08:00", end: "18:00",
           timezone: Europe/Paris}
        - {type: clients, clients: [vpn]}
        - {type: users, users: [alice]}
        - {type: user_groups, groups: [staff]}
        - {type: authentication_type, backends: [ldap, local]}
        - {type: geo_ip, countries: [ca, "NO"], database: geo/country.mmdb}
      action_when_matched: mfa_skipped
"""


def load(data: Any, base_dir: Path | None = None) -> AccessPoliciesConfig:
    context = {"base_dir": base_dir} if base_dir is not None else None
    return AccessPoliciesConfig.model_validate(data, context=context)


def errors(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as info:
        load(data)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def login_policy(**fields: Any) -> dict[str, Any]:
    return {"login": {"policies": [{"name": "p", "action_when_matched": "continue", **fields}]}}


def one_rule(rule: dict[str, Any]) -> dict[str, Any]:
    return login_policy(rules=[rule])


def test_defaults_when_omitted() -> None:
    config = load({})
    assert config.login.default_action == "access_allowed"
    assert config.mfa.default_action == "mfa_required"
    assert config.login.policies == [] and config.mfa.policies == []
    assert AccessPoliciesConfig() == config


def test_example_parses_every_rule_type(tmp_path: Path) -> None:
    config = load(yaml.safe_load(EXAMPLE), base_dir=tmp_path)
    first = config.login.policies[0]
    assert first.action_when_not_matched == "access_denied"
    assert first.validation == "any"
    rule = first.rules[0]
    assert isinstance(rule, IpAddressesRule)
    assert rule.ranges[1] == ipaddress.ip_network("2001:db8::/32")
    assert config.login.policies[1].active is False
    assert isinstance(config.login.policies[1].rules[0], AdministratorRule)
    office = config.mfa.policies[0]
    assert office.action_when_not_matched == "continue"
    assert [r.type for r in office.rules] == [
        "time",
        "clients",
        "users",
        "user_groups",
        "authentication_type",
        "geo_ip",
    ]
    geo = office.rules[5]
    assert isinstance(geo, GeoIpRule)
    assert geo.countries == ["CA", "NO"]
    assert geo.database == tmp_path / "geo" / "country.mmdb"


def test_absolute_database_path_is_kept(tmp_path: Path) -> None:
    rule = {"type": "geo_ip", "countries": ["CA"], "database": "/srv/geo.mmdb"}
    config = load(one_rule(rule), base_dir=tmp_path)
    assert config.login.policies[0].rules[0] == GeoIpRule(
        countries=["CA"], database=Path("/srv/geo.mmdb")
    )


def test_single_ip_is_a_host_range() -> None:
    config = load(
        one_rule({"type": "ip_addresses", "source": "nas_ip_address", "ranges": ["192.0.2.7"]})
    )
    rule = config.login.policies[0].rules[0]
    assert isinstance(rule, IpAddressesRule)
    assert rule.ranges == [ipaddress.ip_network("192.0.2.7/32")]


def test_time_rule_defaults_to_the_whole_day_every_day() -> None:
    rule = TimeRule(timezone="UTC")
    assert (rule.start_minute, rule.end_minute) == (0, 24 * 60)
    assert rule.day_numbers == frozenset(range(7))
    assert TimeRule(timezone="UTC", days=["sat", "sun"]).day_numbers == {5, 6}


def test_helpers_list_clients_and_databases(tmp_path: Path) -> None:
    config = load(yaml.safe_load(EXAMPLE), base_dir=tmp_path)
    assert config.referenced_clients() == {"vpn"}
    assert config.geoip_databases() == {
        tmp_path / "geo" / "country.mmdb": "mfa.policies.0.rules.5.database"
    }
    paths = [where for where, _ in config.iter_rules()]
    assert paths[0] == "login.policies.0.rules.0"
    assert paths[-1] == "mfa.policies.0.rules.5"
    assert isinstance(dict(config.iter_rules())["mfa.policies.0.rules.1"], ClientsRule)


# --------------------------------------------------------------------------- errors


def test_login_action_in_mfa_target_is_refused() -> None:
    data = {"mfa": {"policies": [{"name": "p", "action_when_matched": "access_denied"}]}}
    [(loc, msg)] = errors(data)
    assert loc == ("mfa", "policies", 0, "action_when_matched")
    assert "belongs to access_policies.login" in msg


def test_mfa_action_in_login_target_is_refused() -> None:
    [(loc, msg)] = errors(login_policy(action_when_not_matched="mfa_skipped"))
    assert loc == ("login", "policies", 0, "action_when_not_matched")
    assert "mfa_skipped belongs to access_policies.mfa" in msg


def test_unknown_action_is_refused() -> None:
    [(loc, _)] = errors(login_policy(action_when_matched="allow"))
    assert loc == ("login", "policies", 0, "action_when_matched")


@pytest.mark.parametrize("target", ["login", "mfa"])
def test_default_cannot_be_continue(target: str) -> None:
    [(loc, msg)] = errors({target: {"default_action": "continue"}})
    assert loc == (target, "default_action")
    assert "cannot be continue" in msg


def test_login_default_cannot_be_an_mfa_action() -> None:
    [(loc, _)] = errors({"login": {"default_action": "mfa_required"}})
    assert loc == ("login", "default_action")


def test_action_when_matched_is_required() -> None:
    [(loc, msg)] = errors({"mfa": {"policies": [{"name": "p"}]}})
    assert loc == ("mfa", "policies", 0, "action_when_matched")
    assert msg == "Field required"


def test_unknown_rule_type() -> None:
    [(loc, msg)] = errors(one_rule({"type": "weather"}))
    assert loc == ("login", "policies", 0, "rules", 0)
    assert "'weather'" in msg and "ip_addresses" in msg


def test_unknown_key_in_rule() -> None:
    [(loc, _)] = errors(one_rule({"type": "administrator", "group": "x"}))
    assert loc == ("login", "policies", 0, "rules", 0, "administrator", "group")


def test_bad_timezone() -> None:
    [(loc, msg)] = errors(one_rule({"type": "time", "timezone": "Mars/Olympus"}))
    assert loc == ("login", "policies", 0, "rules", 0, "time", "timezone")
    assert "IANA" in msg


def test_timezone_is_required() -> None:
    [(loc, _)] = errors(one_rule({"type": "time", "start": "08:00", "end": "17:00"}))
    assert loc == ("login", "policies", 0, "rules", 0, "time", "timezone")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("start", "8:00"),
        ("start", "24:00"),
        ("end", "24:01"),
        ("end", "noon"),
        ("days", ["monday"]),
    ],
)
def test_bad_time_fields(field: str, value: Any) -> None:
    rule = {"type": "time", "timezone": "UTC", field: value}
    locs = [loc for loc, _ in errors(one_rule(rule))]
    assert locs[0][:7] == ("login", "policies", 0, "rules", 0, "time", field)


def test_unquoted_yaml_time_gets_a_hint() -> None:
    rule = yaml.safe_load("{type: time, start: 08:00, end: 18:00, timezone: UTC}")
    assert rule["end"] == 1080  # YAML 1.1 base-60 integer
    [(loc, msg)] = errors(one_rule(rule))
    assert loc[-1] == "end"
    assert '"18:00"' in msg


def test_start_equal_to_end_is_ambiguous() -> None:
    [(loc, msg)] = errors(
        one_rule({"type": "time", "timezone": "UTC", "start": "09:00", "end": "09:00"})
    )
    assert loc == ("login", "policies", 0, "rules", 0, "time")
    assert "00:00 to 24:00" in msg


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("10.0.0.0/33", "not an IP address"),
        ("vpn.example.com", "not an IP address"),
        ("10.1.2.0/16", "did you mean 10.1.0.0/16"),
    ],
)
def test_bad_cidr(value: str, hint: str) -> None:
    rule = {"type": "ip_addresses", "source": "client_address", "ranges": ["10.0.0.0/8", value]}
    [(loc, msg)] = errors(one_rule(rule))
    assert loc == ("login", "policies", 0, "rules", 0, "ip_addresses", "ranges", 1)
    assert hint in msg


def test_ip_rule_needs_a_known_source_and_ranges() -> None:
    found = dict(errors(one_rule({"type": "ip_addresses", "source": "framed_ip", "ranges": []})))
    base = ("login", "policies", 0, "rules", 0, "ip_addresses")
    assert set(found) == {(*base, "source"), (*base, "ranges")}


@pytest.mark.parametrize(
    ("value", "hint"),
    [(False, 'write "NO"'), ("UK", "GB"), ("CAN", "alpha-2"), ("1A", "alpha-2")],
)
def test_bad_country(value: Any, hint: str) -> None:
    rule = {"type": "geo_ip", "countries": [value], "database": "x.mmdb"}
    [(loc, msg)] = errors(one_rule(rule))
    assert loc == ("login", "policies", 0, "rules", 0, "geo_ip", "countries", 0)
    assert hint in msg


def test_unknown_backend() -> None:
    [(loc, _)] = errors(one_rule({"type": "authentication_type", "backends": ["kerberos"]}))
    assert loc == ("login", "policies", 0, "rules", 0, "authentication_type", "backends", 0)


@pytest.mark.parametrize(
    ("rule_type", "field"), [("users", "users"), ("user_groups", "groups"), ("clients", "clients")]
)
def test_name_lists_must_not_be_empty(rule_type: str, field: str) -> None:
    [(loc, _)] = errors(one_rule({"type": rule_type, field: []}))
    assert loc == ("login", "policies", 0, "rules", 0, rule_type, field)


def test_policy_names_unique_per_target() -> None:
    policy = {"name": "same", "action_when_matched": "continue"}
    [(loc, msg)] = errors({"login": {"policies": [policy, policy]}})
    assert loc == ("login",)
    assert "duplicate policy names same" in msg
    # The same name in both targets is fine.
    mfa_policy = {"name": "same", "action_when_matched": "mfa_required"}
    load({"login": {"policies": [policy]}, "mfa": {"policies": [mfa_policy]}})


def test_any_without_rules_is_refused() -> None:
    [(loc, msg)] = errors(login_policy(validation="any"))
    assert loc == ("login", "policies", 0)
    assert "never matches" in msg


def test_unknown_keys_are_refused() -> None:
    found = [loc for loc, _ in errors({"login": {"policy": []}, "web": {}})]
    assert ("login", "policy") in found and ("web",) in found


def test_models_are_frozen() -> None:
    config = load({})
    with pytest.raises(ValidationError):
        config.login.default_action = "access_denied"  # type: ignore[misc]


def test_same_strictness_as_the_root_config() -> None:
    assert issubclass(policy_config.LoginPolicy, config_base.Strict)


def test_loads_without_the_root_config() -> None:
    # config.py imports this module; importing config back at load time would be a cycle.
    code = "import sys, mfaproxy.config.policies; sys.exit('mfaproxy.config.schema' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
