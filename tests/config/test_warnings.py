"""Dangerous settings: each row of the warnings table is found where it is set, and is
gone once the setting is fixed the way the warning says."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mfaproxy.config.schema import Config
from mfaproxy.config.warnings import DEMO_SECRET, RULES, Facts, config_warnings

LONG = "a-random-secret-of-24-oct"
SAFE: dict[str, Any] = {
    "clients": [{"name": "vpn", "address": "127.0.0.1", "secret": LONG}],
    "directory": {"backend": "local", "local": {"users_file": "users.yaml"}},
}
LDAP = {
    "servers": ["ldaps://10.0.0.2"],
    "bind_dn": "cn=svc,dc=example,dc=org",
    "bind_password": "service-password",
}
TRUST: dict[str, Any] = {
    "name": "reconnects",
    "rules": [{"type": "trusted_reconnect", "minutes": 480}],
    "action_when_matched": "mfa_skipped",
}
DUO = {"integration_key": "DIXXXX", "secret_key": "s" * 40, "api_hostname": "api-x.duosecurity.com"}


def config(changes: dict[str, Any]) -> Config:
    data = copy.deepcopy(SAFE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return Config.model_validate(data, context={"base_dir": Path("/etc/mfaproxy")})


def findings(changes: dict[str, Any], **facts: Any) -> list[tuple[str, str]]:
    return [(f.rule, f.dotted) for f in config_warnings(Facts(config(changes), **facts))]


# Facts a rule reads beyond the configuration (measured by daemon/preflight.py).
MEASURED: dict[str, dict[str, Any]] = {
    "hash_cost_below_peak_rate": {"hash_checks_per_second": 40.0, "hash_cost": "m=65536,t=3,p=4"},
}


# rule -> (settings that trip it, where it is reported, the same settings fixed as the
# warning's `fix` says)
CASES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "inline_enrolment": (
        {
            "multifactor.enrol_unconfigured_users": True,
            "multifactor.inline_enrolment": {"allow": ["email_code"]},
            "smtp": {"host": "127.0.0.1"},
        },
        "multifactor.enrol_unconfigured_users",
        {
            "multifactor.enrol_unconfigured_users": True,
            "multifactor.inline_enrolment": {"allow": ["operator_window"]},
            "smtp": {"host": "127.0.0.1"},
        },
    ),
    "inline_enrolment_administrators": (
        {"multifactor.inline_enrolment": {"administrators": True}},
        "multifactor.inline_enrolment.administrators",
        {"multifactor.inline_enrolment": {"administrators": False}},
    ),
    "ldap_certificate_not_verified": (
        {"directory.backend": "ldap", "directory.ldap": {**LDAP, "verify_certificate": False}},
        "directory.ldap.verify_certificate",
        {"directory.backend": "ldap", "directory.ldap": {**LDAP, "verify_certificate": True}},
    ),
    "ldap_cleartext": (
        {"directory.backend": "ldap", "directory.ldap": {**LDAP, "servers": ["ldap://10.0.0.2"]}},
        "directory.ldap.servers.0",
        {
            "directory.backend": "ldap",
            "directory.ldap": {**LDAP, "servers": ["ldap://10.0.0.2"], "start_tls": True},
        },
    ),
    "duo_failmode_safe": (
        {"multifactor.enabled": ["totp", "duo"], "multifactor.duo": {**DUO, "failmode": "safe"}},
        "multifactor.duo.failmode",
        {"multifactor.enabled": ["totp", "duo"], "multifactor.duo": {**DUO, "failmode": "secure"}},
    ),
    "store_failmode_safe": (
        {"server.store_failmode": "safe"},
        "server.store_failmode",
        {"server.store_failmode": "secure"},
    ),
    "client_without_message_authenticator": (
        {"clients.0.require_message_authenticator": False},
        "clients.0.require_message_authenticator",
        {"clients.0.require_message_authenticator": True},
    ),
    "limit_proxy_state_off": (
        {
            "clients.0.require_message_authenticator": False,
            "clients.0.limit_proxy_state": False,
        },
        "clients.0.limit_proxy_state",
        {"clients.0.require_message_authenticator": False},
    ),
    "upstream_without_message_authenticator": (
        {
            "directory.backend": "radius",
            "directory.radius": {
                "servers": [{"host": "10.0.0.5", "secret": LONG}],
                "require_message_authenticator": False,
            },
        },
        "directory.radius.require_message_authenticator",
        {
            "directory.backend": "radius",
            "directory.radius": {"servers": [{"host": "10.0.0.5", "secret": LONG}]},
        },
    ),
    "redis_without_password": (
        {"server.state_store": {"backend": "redis", "url": "rediss://10.0.0.9:6379/0"}},
        "server.state_store",
        {
            "server.state_store": {
                "backend": "redis",
                "url": "rediss://10.0.0.9:6379/0",
                "password": "redis-password",
            }
        },
    ),
    "redis_without_tls": (
        {"server.state_store": {"backend": "redis", "url": "redis://:pw@10.0.0.9:6379/0"}},
        "server.state_store",
        {"server.state_store": {"backend": "redis", "url": "rediss://:pw@10.0.0.9:6379/0"}},
    ),
    "short_shared_secret": (
        {"clients.0.secret": "x" * 12},
        "clients.0.secret",
        {"clients.0.secret": "x" * 13},
    ),
    "demo_shared_secret": (
        {"clients.0.secret": "testing123"},
        "clients.0.secret",
        {"clients.0.secret": LONG},
    ),
    "email_without_smtp": (
        {"multifactor.enabled": ["totp", "email"]},
        "multifactor.enabled",
        {"multifactor.enabled": ["totp", "email"], "smtp": {"host": "127.0.0.1"}},
    ),
    "no_group_data": (
        {
            "directory.backend": "radius",
            "directory.radius": {"servers": [{"host": "10.0.0.5", "secret": LONG}]},
            "multifactor.administrators": {"group": "mfa-admins"},
        },
        "multifactor.administrators.group",
        {
            "directory.backend": "radius",
            "directory.radius": {
                "servers": [{"host": "10.0.0.5", "secret": LONG}],
                "group_attribute": "Filter-Id",
            },
            "multifactor.administrators": {"group": "mfa-admins"},
        },
    ),
    "hash_cost_below_peak_rate": (
        {"directory.local.peak_logins_per_second": 100},
        "directory.local.peak_logins_per_second",
        {"directory.local.peak_logins_per_second": 30},
    ),
    "trusted_reconnect_unscoped": (
        {"access_policies.mfa.policies": [TRUST]},
        "access_policies.mfa.policies.0",
        {
            "access_policies.mfa.policies": [
                {**TRUST, "rules": [*TRUST["rules"], {"type": "clients", "clients": ["vpn"]}]}
            ]
        },
    ),
    "wait_beyond_nas_timeout": (
        {
            "multifactor.enabled": ["totp", "duo"],
            "multifactor.duo": {**DUO, "timeout": 60},
            "clients.0.nas_timeout_seconds": 30,
        },
        "clients.0.nas_timeout_seconds",
        {
            "multifactor.enabled": ["totp", "duo"],
            "multifactor.duo": {**DUO, "timeout": 60},
            "clients.0.nas_timeout_seconds": 90,
        },
    ),
}


def test_the_safe_base_has_no_warning() -> None:
    assert findings({}) == []


def test_every_rule_has_a_case() -> None:
    # A new row in the table needs a case here: the table stays tested.
    assert sorted(CASES) == sorted(rule.name for rule in RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_dangerous_setting_is_found_where_it_is(rule: str) -> None:
    tripped, where, _fixed = CASES[rule]
    assert (rule, where) in findings(tripped, **MEASURED.get(rule, {}))


@pytest.mark.parametrize("rule", sorted(CASES))
def test_following_the_fix_removes_the_warning(rule: str) -> None:
    _tripped, _where, fixed = CASES[rule]
    assert [name for name, _ in findings(fixed, **MEASURED.get(rule, {})) if name == rule] == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_warning_says_what_it_risks_and_how_to_fix_it(rule: Any) -> None:
    assert len(rule.risk) > 20 and len(rule.fix) > 10


def test_every_short_secret_is_found_upstreams_included() -> None:
    found = findings(
        {
            "clients.0.secret": "short",
            "directory.backend": "radius",
            "directory.radius": {"servers": [{"host": "10.0.0.5", "secret": "tiny"}]},
            "multifactor.enabled": ["totp", "radius"],
            "multifactor.radius": {
                "server": {"host": "10.0.0.7", "secret": "otp"},
                "failover": {"host": "10.0.0.8", "secret": "otp"},
            },
            "server.accounting": {
                "upstream": {"servers": [{"host": "10.0.0.9", "secret": "acct"}]}
            },
        }
    )
    assert [where for rule, where in found if rule == "short_shared_secret"] == [
        "clients.0.secret",
        "directory.radius.servers.0.secret",
        "multifactor.radius.server.secret",
        "multifactor.radius.failover.secret",
        "server.accounting.upstream.servers.0.secret",
    ]


def test_limit_proxy_state_on_a_client_that_must_sign_is_no_warning() -> None:
    assert findings({"clients.0.limit_proxy_state": False}) == []


def test_the_short_secret_limit_counts_octets() -> None:
    # Six two-octet characters are 12 octets: short, though only 6 characters.
    assert ("short_shared_secret", "clients.0.secret") in findings({"clients.0.secret": "é" * 6})
    assert findings({"clients.0.secret": "é" * 7}) == []


def test_secrets_up_to_128_octets_are_accepted_without_warning() -> None:
    assert findings({"clients.0.secret": "s" * 128}) == []


def test_an_otp_server_wait_counts_retries_and_failover() -> None:
    otp = {
        "server": {"host": "10.0.0.7", "secret": LONG},
        "failover": {"host": "10.0.0.8", "secret": LONG},
        "timeout": 5,
        "retries": 2,
    }
    base = {"multifactor.enabled": ["totp", "radius"], "multifactor.radius": otp}
    # 5 s x 3 tries x 2 servers = 30 s
    assert findings({**base, "clients.0.nas_timeout_seconds": 30}) == []
    tripped = findings({**base, "clients.0.nas_timeout_seconds": 29})
    assert tripped == [("wait_beyond_nas_timeout", "clients.0.nas_timeout_seconds")]


def _findings_with_secret(secret: str) -> list[tuple[str, str, str]]:
    found = config_warnings(
        Facts(
            config(
                {
                    "clients.0.secret": secret,
                    "clients.0.require_message_authenticator": False,
                    "server.state_store": {"backend": "redis", "url": "redis://10.0.0.9"},
                }
            )
        )
    )
    return [(f.rule, f.dotted, f.detail) for f in found]


@settings(max_examples=50)
@given(
    secret=st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1),
    other=st.sampled_from("xé€"),
)
def test_no_finding_depends_on_what_a_secret_is(secret: str, other: str) -> None:
    # Two secrets of the same length in octets give the same findings, word for word:
    # nothing of a secret but its length can reach a log line.
    assume(DEMO_SECRET not in (secret,))  # the one secret whose content is the finding
    octets = len(secret.encode())
    stand_in = other * (octets // len(other.encode())) + "x" * (octets % len(other.encode()))
    assert _findings_with_secret(secret) == _findings_with_secret(stand_in)


def test_a_secret_never_appears_in_a_finding() -> None:
    secret = "Zq9!unmistakable"
    for finding in _findings_with_secret(secret[:10]) + _findings_with_secret(secret):
        assert secret[:10] not in " ".join(finding)


def test_no_stated_peak_or_no_measurement_means_no_hash_warning() -> None:
    measured = MEASURED["hash_cost_below_peak_rate"]
    assert findings({}, **measured) == []
    assert findings({"directory.local.peak_logins_per_second": 100}) == []
