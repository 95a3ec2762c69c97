"""Trusted reconnects (privacyIDEA `auth_cache`, MULTIFACTOR `authentication-cache-
lifetime`): the pure rules. No I/O, no clock.

An mfa policy with a `trusted_reconnect` rule (config/policies.py) skips the second
factor when the same user (their canonical identity), from the same NAS (client entry)
and the same Calling-Station-Id, passed a second factor within the rule's minutes. The
engine (auth/trust.py) looks the last pass up in the state store and hands it to the
policy as a `TrustFact`; the rule matches on it (core/policy.py).

The rules that keep it from weakening anything:
- No Calling-Station-Id, no trust: the fact is unknown, the rule UNKNOWN, and the walk
  takes the strictest outcome (the second factor).
- The window starts at a second factor the user proved (`PROVEN_RESULTS`: a code, a
  push approved, a backup code, an enrolment), never at an Accept that proves nothing
  (Duo's bypass or failmode, the store failmode) and never at a trusted reconnect:
  reconnecting does not extend it.
- It ends with the window, and earlier when the user store says so: a reset asked for
  or decided, the user's MFA cleared or its method changed, a lockout, `mfaproxy users
  forget-trust` (each sets the user's `trust_not_before`), the user deleted or created
  again since. A user under lockout is never trusted.
- The password is always checked: the mfa policies run after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE = "trusted_reconnect"
# Accept reasons (the audit `reason` of a second factor passed) that start a window.
# A positive list: an Accept reason added later starts none until it is listed here.
PROVEN_RESULTS: frozenset[str] = frozenset(
    {
        "mfa_code_ok",  # TOTP, YubiKey, email, SMS
        "mfa_enrolled",  # the first code of an inline enrolment
        "mfa_backup_code_ok",
        "mfa_otp_ok",  # an upstream OTP server
        "mfa_passcode_ok",  # Duo passcode
        "mfa_push_approved",  # Duo push (Verified Push too)
        "mfa_phone_approved",  # Duo call
    }
)
# The audit reason of a trusted reconnect's Accept.
TRUSTED_REASON = "mfa_trusted_reconnect"
# Reject reasons after which the user's trust ends at once (the engine revokes it).
LOCKED_OUT = "locked_out"
REVOKING_REASONS: frozenset[str] = frozenset({LOCKED_OUT, "reset_requested"})
# Nodes of a cluster stamp passes with their own clocks: a pass this far in the future
# is still one (a larger one is not trusted: it cannot be).
CLOCK_SKEW = 5.0


@dataclass(frozen=True)
class TrustFact:
    """What is known about the user's last second factor from this NAS and station."""

    known: bool  # False: input missing (no Calling-Station-Id): the rule is UNKNOWN
    passed_at: float | None  # the pass that started the window; None: none counts
    why: str  # for the policy trace and the audit log


NOT_KNOWN = TrustFact(False, None, "no Calling-Station-Id in the request")


def station(calling_station_id: str | None) -> str | None:
    """The Calling-Station-Id trust is keyed on (exactly as the NAS sends it), or None."""
    if calling_station_id is None:
        return None
    text = calling_station_id.strip()
    return text or None


def record_value(
    user: str, client: str, station_id: str, passed_at: float, method: str
) -> dict[str, Any]:
    """What the state store keeps of one pass (sealed: store/sealed.py)."""
    return {
        "user": user,
        "client": client,
        "station": station_id,
        "passed_at": passed_at,
        "method": method,
    }


@dataclass(frozen=True)
class UserLimits:
    """What the user store says that can end a user's trust (from their UserRecord)."""

    created_at: float
    trust_not_before: float | None  # set by a reset, an MFA clear, a lockout, forget-trust
    locked_until: float | None
    last_reset_at: float | None  # the latest request's asking or deciding time


def fact(
    value: Mapping[str, Any] | None,
    user: str,
    client: str,
    station_id: str,
    limits: UserLimits | None,
    now: float,
) -> TrustFact:
    """Judge a stored pass (already authenticated by the sealed store) against who
    asks now and what the user store says since."""
    if value is None:
        return TrustFact(True, None, "no second factor from this NAS and station on record")
    passed = value.get("passed_at")
    mine = (value.get("user"), value.get("client"), value.get("station"))
    if mine != (user, client, station_id) or not isinstance(passed, int | float):
        return TrustFact(True, None, "the record is not this user's, NAS's and station's")
    passed = float(passed)
    if passed > now + CLOCK_SKEW:
        return TrustFact(True, None, "the record's pass lies in the future")
    revoked = _revoked(limits, passed, now)
    if revoked is not None:
        return TrustFact(True, None, revoked)
    return TrustFact(True, passed, "passed a second factor from this NAS and station")


def _revoked(limits: UserLimits | None, passed: float, now: float) -> str | None:
    if limits is None:
        return "the user has no MFA record"
    if limits.created_at > passed:
        return "the user's record was created after the pass"
    if limits.trust_not_before is not None and passed < limits.trust_not_before:
        return "trust ended since (reset, MFA cleared, lockout or forget-trust)"
    if limits.locked_until is not None and limits.locked_until > now:
        return "the user is locked out"
    if limits.last_reset_at is not None and limits.last_reset_at >= passed:
        return "a reset was asked for or decided since"
    return None


def revoked_since_lockout(limits: UserLimits | None, lockout_seconds: float) -> bool:
    """Whether the lockout in force was already followed by a revocation (its start
    revoked trust): nothing to write again for each refused request."""
    if limits is None or limits.trust_not_before is None or limits.locked_until is None:
        return False
    return limits.trust_not_before >= limits.locked_until - lockout_seconds


def age_text(seconds: float) -> str:
    return f"{max(seconds, 0.0) / 60:.1f} min"
