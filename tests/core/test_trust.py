"""Trusted reconnects, the pure rules (core/trust.py) and the policy rule
(config/policies.py, core/policy.py): what starts a window, what ends one, and how a
missing input resolves."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import pytest
from pydantic import ValidationError

from mfaproxy.config.policies import AccessPoliciesConfig, MfaPoliciesConfig
from mfaproxy.core import trust as rules
from mfaproxy.core.policy import PolicyContext, evaluate, is_trusted_reconnect
from mfaproxy.core.trust import NOT_KNOWN, TrustFact, UserLimits

NOW = 1_800_000_000.0
AT = datetime.fromtimestamp(NOW, UTC)
LIMITS = UserLimits(
    created_at=NOW - 86400, trust_not_before=None, locked_until=None, last_reset_at=None
)
VALUE = rules.record_value("alice", "vpn", "198.51.100.7", NOW - 600, "totp")


def trust_policy(minutes: int = 60, **extra: Any) -> dict[str, Any]:
    return {
        "name": "reconnects",
        "rules": [{"type": "trusted_reconnect", "minutes": minutes}],
        "action_when_matched": "mfa_skipped",
        **extra,
    }


def mfa(*policies: dict[str, Any], default: str = "mfa_required") -> MfaPoliciesConfig:
    return MfaPoliciesConfig.model_validate({"default_action": default, "policies": list(policies)})


def context(trust: TrustFact | None) -> PolicyContext:
    return PolicyContext(
        user="alice", client="vpn", client_address=ip_address("127.0.0.1"), trust=trust
    )


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "policy",
    [
        trust_policy(action_when_not_matched="mfa_skipped"),  # untrusted would skip too
        trust_policy(action_when_matched="mfa_optional_per_user"),
        trust_policy(action_when_matched="mfa_required"),  # monotone the wrong way
        trust_policy(minutes=0),
        trust_policy(minutes=43201),
    ],
)
def test_a_trust_policy_that_could_weaken_an_untrusted_login_is_refused(
    policy: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError):
        mfa(policy)


def test_trusted_reconnect_is_no_login_rule() -> None:
    with pytest.raises(ValidationError, match=r"belongs to access_policies\.mfa"):
        AccessPoliciesConfig.model_validate(
            {"login": {"policies": [{**trust_policy(), "action_when_matched": "access_allowed"}]}}
        )


def test_the_window_is_the_longest_active_rule_and_off_without_one() -> None:
    assert AccessPoliciesConfig().trust_window_seconds() == 0
    config = AccessPoliciesConfig.model_validate(
        {
            "mfa": {
                "policies": [
                    trust_policy(30),
                    {**trust_policy(600), "name": "off", "active": False},
                    {**trust_policy(90), "name": "wifi"},
                ]
            }
        }
    )
    assert config.trust_window_seconds() == 90 * 60


# --------------------------------------------------------------------------- the rule


def test_a_recent_pass_matches_and_skips() -> None:
    decision = evaluate(mfa(trust_policy()), context(TrustFact(True, NOW - 600, "passed")), AT)
    assert decision.action == "mfa_skipped" and is_trusted_reconnect(decision)


@pytest.mark.parametrize(
    "fact",
    [
        None,  # not looked up (policy explain, before the password)
        NOT_KNOWN,  # no Calling-Station-Id
        TrustFact(True, None, "no pass"),
        TrustFact(True, NOW - 3600, "passed"),  # exactly the window: over
        TrustFact(True, NOW + 60, "passed"),  # beyond any clock skew
    ],
)
def test_anything_but_a_recent_pass_requires_the_second_factor(fact: TrustFact | None) -> None:
    decision = evaluate(mfa(trust_policy()), context(fact), AT)
    assert decision.action == "mfa_required" and not is_trusted_reconnect(decision)


def test_a_skip_by_another_rule_is_no_trusted_reconnect() -> None:
    wifi = {
        "name": "wifi",
        "validation": "any",
        "rules": [
            {"type": "trusted_reconnect", "minutes": 60},
            {"type": "clients", "clients": ["vpn"]},
        ],
        "action_when_matched": "mfa_skipped",
    }
    decision = evaluate(mfa(wifi), context(TrustFact(True, None, "no pass")), AT)
    assert decision.action == "mfa_skipped" and not is_trusted_reconnect(decision)


# --------------------------------------------------------------------------- facts


def test_a_stored_pass_counts_only_for_its_own_user_nas_and_station() -> None:
    assert rules.fact(VALUE, "alice", "vpn", "198.51.100.7", LIMITS, NOW).passed_at == NOW - 600
    for user, client, station in (
        ("bob", "vpn", "198.51.100.7"),
        ("alice", "wifi", "198.51.100.7"),
        ("alice", "vpn", "x"),
    ):
        assert rules.fact(VALUE, user, client, station, LIMITS, NOW).passed_at is None
    assert rules.fact(None, "alice", "vpn", "198.51.100.7", LIMITS, NOW).passed_at is None


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        (None, "no MFA record"),
        (UserLimits(NOW - 10, None, None, None), "created after"),
        (UserLimits(NOW - 86400, NOW - 60, None, None), "trust ended"),
        (UserLimits(NOW - 86400, None, NOW + 60, None), "locked out"),
        (UserLimits(NOW - 86400, None, None, NOW - 600), "reset"),
    ],
)
def test_what_the_user_store_says_since_ends_trust(limits: UserLimits | None, why: str) -> None:
    fact = rules.fact(VALUE, "alice", "vpn", "198.51.100.7", limits, NOW)
    assert fact.passed_at is None and why in fact.why


def test_only_a_proven_second_factor_starts_a_window() -> None:
    for unproven in (
        "mfa_failmode_safe",
        "mfa_duo_bypass",
        "mfa_sms_allowed",
        rules.TRUSTED_REASON,
        "mfa_skipped",
        "store_failmode_safe",
    ):
        assert unproven not in rules.PROVEN_RESULTS
    assert {"mfa_code_ok", "mfa_push_approved", "mfa_backup_code_ok"} <= rules.PROVEN_RESULTS


def test_a_lockout_is_revoked_once() -> None:
    locked = UserLimits(NOW - 86400, None, NOW + 900, None)
    assert not rules.revoked_since_lockout(locked, 900)
    revoked = UserLimits(NOW - 86400, NOW, NOW + 900, None)
    assert rules.revoked_since_lockout(revoked, 900)
    earlier = UserLimits(NOW - 86400, NOW - 3600, NOW + 900, None)
    assert not rules.revoked_since_lockout(earlier, 900)


@pytest.mark.parametrize(
    ("raw", "kept"),
    [(None, None), ("", None), ("  ", None), (" 02:00:5e:10:00:01 ", "02:00:5e:10:00:01")],
)
def test_the_station_is_the_attribute_as_sent(raw: str | None, kept: str | None) -> None:
    assert rules.station(raw) == kept
