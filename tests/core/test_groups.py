"""Group membership compared one way (core/groups.py), and what a backend without group
data does to group and administrator rules: unknown, and the stricter outcome wins."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import pytest
from pydantic import TypeAdapter

from mfaproxy.config.policies import LoginPoliciesConfig, MfaPoliciesConfig, Rule
from mfaproxy.config.schema import RepliesConfig
from mfaproxy.core.groups import group_key, in_group, matching
from mfaproxy.core.policy import PolicyContext, Tri, evaluate, match_rule
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.core.replies import accept_attributes

NOW = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
ADMINS_DN = "cn=mfa-admins,ou=groups,dc=example,dc=org"
ROGUE_DN = "cn=mfa-admins,ou=people,dc=example,dc=org"
CTX = PolicyContext(user="sam", client="vpn", client_address=ip_address("10.0.0.1"))
RULE = TypeAdapter[Rule](Rule)


def rule(**data: Any) -> Rule:
    return RULE.validate_python(data)


@pytest.mark.parametrize(
    "spelling",
    [
        ADMINS_DN,
        "CN=MFA-Admins,OU=Groups,DC=example,DC=org",
        "cn=mfa-admins, ou=groups, dc=example, dc=org",
        "cn=mfa\\2dadmins,ou=groups,dc=example,dc=org",
    ],
)
def test_a_dn_matches_in_any_spelling(spelling: str) -> None:
    assert group_key(spelling) == group_key(ADMINS_DN)
    assert matching([ADMINS_DN], [spelling]) == [ADMINS_DN]


def test_a_name_is_not_a_dn_and_a_dn_elsewhere_is_another_group() -> None:
    assert matching([ROGUE_DN], [ADMINS_DN]) == []
    assert matching([ROGUE_DN, ADMINS_DN], ["mfa-admins"]) == []  # no name was given
    assert matching(["MFA-Admins", ADMINS_DN], ["mfa-admins"]) == ["MFA-Admins"]
    assert matching(["\uff2dFA-admins"], ["mfa-admins"]) == ["\uff2dFA-admins"]  # like names


def test_no_group_data_is_unknown_not_no() -> None:
    assert in_group(None, "mfa-admins") is None
    assert in_group(frozenset(), "mfa-admins") is False
    assert in_group(frozenset({ADMINS_DN}), "CN=MFA-ADMINS,OU=groups,DC=example,DC=org")


@pytest.mark.parametrize(
    ("groups", "expected"),
    [(None, Tri.UNKNOWN), (frozenset(), Tri.NO_MATCH), (frozenset({ADMINS_DN}), Tri.MATCH)],
)
def test_user_groups_rule_by_dn(groups: frozenset[str] | None, expected: Tri) -> None:
    verdict = match_rule(
        rule(type="user_groups", groups=[ADMINS_DN.upper()]), replace(CTX, groups=groups), NOW
    )
    assert verdict.result is expected


def test_administrators_always_need_mfa_when_the_backend_has_no_groups() -> None:
    """The finding: with no group data the administrator rule was a definite "no", so
    "administrators always need MFA" stopped applying. Unknown takes the stricter."""
    mfa = MfaPoliciesConfig.model_validate(
        {
            "default_action": "mfa_skipped",
            "policies": [
                {"name": "admins", "rules": [{"type": "administrator"}],
                 "action_when_matched": "mfa_required"},
            ],
        }
    )  # fmt: skip
    unknown = replace(CTX, groups=None, backend="radius", is_administrator=None)
    assert evaluate(mfa, unknown, NOW).action == "mfa_required"
    known = replace(unknown, groups=frozenset(), is_administrator=False)
    assert evaluate(mfa, known, NOW).action == "mfa_skipped"


def test_group_allow_lists_deny_when_the_backend_has_no_groups() -> None:
    login = LoginPoliciesConfig.model_validate(
        {
            "policies": [
                {"name": "vpn-only", "rules": [{"type": "user_groups", "groups": ["vpn"]}],
                 "action_when_matched": "continue", "action_when_not_matched": "access_denied"},
            ]
        }
    )  # fmt: skip
    decision = evaluate(login, replace(CTX, groups=None, backend="radius"), NOW)
    assert (decision.action, decision.definite) == ("access_denied", False)


def test_reply_mappings_match_by_name_or_dn_and_need_group_data() -> None:
    replies = RepliesConfig.model_validate(
        {
            "groups": [
                {"group": ADMINS_DN.upper(), "attributes": {"Class": "admins"}},
                {"group": "VPN-Users", "attributes": {"Filter-Id": "vpn"}},
            ]
        }
    )  # fmt: skip

    def mapped(groups: frozenset[str] | None) -> list[tuple[str, Any]]:
        primary = PrimaryResult(PrimaryOutcome.ACCEPT, "ldap", groups=groups, identity="sam")
        return accept_attributes(replies, primary)

    assert mapped(frozenset({ADMINS_DN, "vpn-users"})) == [
        ("Class", "admins"),
        ("Filter-Id", "vpn"),
    ]
    assert mapped(frozenset({ROGUE_DN})) == []
    assert mapped(None) == []
