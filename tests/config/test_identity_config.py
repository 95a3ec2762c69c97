"""The identity settings: realm rules, the LDAP identity_attribute, and the checks that
keep a `users` rule from naming something no identity can be."""

from __future__ import annotations

import json

import pytest

from mfaproxy.config.schema import parse_config
from mfaproxy.daemon import preflight
from mfaproxy.errors import ConfigError
from mfaproxy.radius.codec import load_dictionary

BASE = """
clients: [{name: vpn, address: 127.0.0.1, secret: s3cret}]
directory:
  backend: local
  local: {users_file: users.yaml}
  realms:
    - {format: prefix, realms: [EXAMPLE]}
    - {format: suffix, delimiter: "@", realms: [example.org], strip: false}
"""

LDAP = """
clients: [{name: vpn, address: 127.0.0.1, secret: s3cret}]
directory:
  backend: ldap
  ldap:
    servers: ["ldaps://dc1.example.org"]
    bind_dn: "cn=svc,dc=example,dc=org"
    bind_password: x
    user_filter: "%s"
"""


def with_rule(users: list[str]) -> str:
    policy = {"name": "p", "rules": [{"type": "users", "users": users}],
              "action_when_matched": "access_denied"}  # fmt: skip
    # JSON is YAML, with the escapes of a double-quoted string
    return BASE + f"access_policies: {{login: {{policies: [{json.dumps(policy)}]}}}}\n"


def test_realm_rules_are_read() -> None:
    config = parse_config(BASE)
    prefix, suffix = config.directory.realms
    assert (prefix.format, prefix.separator, prefix.strip) == ("prefix", "\\", True)
    assert (suffix.format, suffix.separator, suffix.strip) == ("suffix", "@", False)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{format: infix, realms: [X]}", "directory.realms.0.format"),
        ("{format: prefix, realms: []}", "directory.realms.0.realms"),
        ("{format: prefix, realms: [' X']}", "a realm is a name without surrounding spaces"),
        ("{format: suffix, delimiter: '@@', realms: [x]}", "directory.realms.0.delimiter"),
    ],
)
def test_bad_realm_rules_are_refused_with_their_path(rule: str, message: str) -> None:
    text = BASE.split("  realms:", maxsplit=1)[0] + f"  realms: [{rule}]\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(message in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("user_filter", "identity"),
    [
        ("(uid={username})", "uid"),
        ("(&(objectClass=user)(sAMAccountName={username}))", "sAMAccountName"),
        ("(&(uid={username})(!(mail={username}x)))", None),
        ("(|(sAMAccountName={username})(userPrincipalName={username}))", None),
    ],
)
def test_identity_attribute_defaults_to_the_one_filter_attribute(
    user_filter: str, identity: str | None
) -> None:
    if identity is not None:
        assert parse_config(LDAP % user_filter).directory.ldap.identity == identity  # type: ignore[union-attr]
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(LDAP % user_filter)
    assert any(
        p.startswith("directory.ldap") and "set identity_attribute" in p
        for p in caught.value.problems
    ), caught.value.problems
    explicit = LDAP % user_filter + "    identity_attribute: sAMAccountName\n"
    assert parse_config(explicit).directory.ldap.identity == "sAMAccountName"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("users", "found"),
    [
        (["sam", " SAM ", "Stra\u00dfe", "\uff53am"], []),  # normalised when compared
        (["EXAMPLE\\sam"], ["access_policies.login.policies.0.rules.0.users.0", "'sam'"]),
        (["Sam@example.org"], ["is a realm form", "'sam'"]),
        (["sa\u200bm"], ["users.0", "user_name_control_characters"]),
        (["ok", "OTHER\\sam"], []),  # not a configured realm: a name of its own
    ],
)
def test_users_rules_that_could_never_match_are_refused(users: list[str], found: list[str]) -> None:
    problems = [
        p
        for p in preflight.problems(parse_config(with_rule(users)), load_dictionary())
        if p.startswith("access_policies")
    ]
    if not found:
        assert problems == []
    else:
        assert len(problems) == 1 and all(part in problems[0] for part in found), problems


# --------------------------------------------------------------------------- groups

LDAP_GROUPS = (
    LDAP % "(uid={username})"
    + """
access_policies:
  login:
    policies:
      - name: vpn
        rules: [{type: user_groups, groups: [vpn-users, "cn=ops,ou=groups,dc=example,dc=org"]}]
        action_when_matched: continue
        action_when_not_matched: access_denied
multifactor: {administrators: {group: mfa-admins}}
replies: {groups: [{group: vpn-users, attributes: {Filter-Id: vpn}}]}
"""
)


def deep(text: str) -> list[str]:
    return preflight.problems(parse_config(text), load_dictionary())


def test_ldap_group_names_need_a_group_base() -> None:
    found = deep(LDAP_GROUPS)
    where = sorted(p.split(":")[0].split(" (line")[0] for p in found)
    assert where == [
        "access_policies.login.policies.0.rules.0.groups.0",
        "multifactor.administrators.group",
        "replies.groups.0.group",
    ]  # the DN is fine
    assert all("group_base_dn" in p for p in found)


@pytest.mark.parametrize(
    "fix",
    [
        '    group_base_dn: "ou=groups,dc=example,dc=org"\n',
        '    group_search: {base_dn: "ou=groups,dc=example,dc=org"}\n',
    ],
)
def test_a_group_base_or_a_group_search_names_groups(fix: str) -> None:
    head, tail = LDAP_GROUPS.split("access_policies:", 1)
    assert deep(head + fix + "access_policies:" + tail) == []


def test_an_unknown_group_attribute_is_refused() -> None:
    text = """
clients: [{name: vpn, address: 127.0.0.1, secret: s3cret}]
directory:
  backend: radius
  radius:
    servers: [{host: 10.0.0.5, secret: a-long-upstream-secret}]
    group_attribute: Not-An-Attribute
"""
    assert deep(text) == [
        "directory.radius.group_attribute: unknown RADIUS attribute 'Not-An-Attribute'"
    ]
