"""Red team, in process (tests/auth/harness.py): attacks on the second-factor flow by
someone who knows a victim's password, or who reads a State on the wire.

Each test states the attack; one that once succeeded names the fix that stopped it. An
attack that still succeeds is marked `xfail(strict=True)` with the reason, so the test
fails loudly once it is fixed and the marker must go.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml

from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.store.state import StateStore
from tests.auth.harness import Harness, password
from tests.auth.test_enrolment import totp_key
from tests.support.daemon import REPO

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE
HOUR, DAY = 3600.0, 86400.0
OPTIONAL = {"access_policies": {"mfa": {"default_action": "mfa_optional_per_user"}}}


def wrong_code(h: Harness, user: str) -> str:
    """A six-digit code the user's authenticator does not show now (nor a step away)."""
    shown = {h.code(user, offset) for offset in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in shown)


# --------------------------------------------------------------------------- policy


async def test_optional_mfa_still_asks_a_user_whose_method_was_disabled(tmp_path: Path) -> None:
    """Attack: under `mfa_optional_per_user`, once the operator takes the user's method
    out of `enabled` (yubikey here), the password alone used to log them in
    (`mfa_optional_not_configured`), although they are enrolled in the default method.
    Fixed: a disabled method still counts as one, so the default is asked for."""
    async with Harness(tmp_path, OPTIONAL) as h:
        h.enrol_totp("alice")
        await h.write(lambda s: s.set_method("alice", "yubikey", h.clock.now))
        first = await h.send("alice", password("alice"))
        assert (first.outcome, first.reason) == (CHALLENGE, "totp_challenge")
        assert (await h.send("alice", h.code("alice"), first.state)).outcome is ACCEPT
        # a user with a disabled method and no enrolment in the default: refused, not
        # accepted on the password
        await h.write(lambda s: s.set_method("carol", "yubikey", h.clock.now))
        refused = await h.send("carol", password("carol"))
        assert (refused.outcome, refused.reason) == (REJECT, "not_enrolled")
        # users without any method are still skipped, as the policy says
        skipped = await h.send("dave", password("dave"))
        assert (skipped.outcome, skipped.reason) == (ACCEPT, "mfa_optional_not_configured")


# --------------------------------------------------------------------------- State


async def test_a_state_sent_by_someone_else_leaves_the_users_login_intact(
    tmp_path: Path,
) -> None:
    """Attack: RADIUS carries the State in clear. Whoever reads it (or a hostile NAS
    with its own secret) sends it under their own name or through their own NAS entry:
    refused `state_mismatch`, as before, but the session used to be taken first, so the
    victim's answer then failed with `unknown_state`. Fixed: a mismatched State is read,
    not taken."""
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        h.enrol_totp("bob")
        first = await h.send("alice", password("alice"))
        assert first.outcome is CHALLENGE and first.state is not None
        for user, client in (("bob", "vpn"), ("alice", "legacy"), ("EXAMPLE\\alice", "vpn")):
            stolen = await h.send(user, h.code("alice"), first.state, client=client)
            assert (stolen.outcome, stolen.reason) == (REJECT, "state_mismatch"), user
        final = await h.send("alice", h.code("alice"), first.state)
        assert (final.outcome, final.reason) == (ACCEPT, "mfa_code_ok")
        # and it was taken by that answer: single use
        again = await h.send("alice", h.code("alice", 1), first.state)
        assert (again.outcome, again.reason) == (REJECT, "unknown_state")


async def test_a_state_used_after_its_timeout_is_unknown(tmp_path: Path) -> None:
    """Attack: keep a State (or capture one) and answer it after it expired."""
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        h.clock.advance(h.config.multifactor.challenge.timeout_seconds + 1)
        late = await h.send("alice", h.code("alice"), first.state)
        assert (late.outcome, late.reason) == (REJECT, "unknown_state")


# --------------------------------------------------------------------------- enrolment


class Paused:
    """The state store with one `count` call (the lockout check before any code is
    looked at) held until `go` is set: the request that makes it stops between reading
    the user's record and taking the user's lease, as a slow thread or another node
    would."""

    def __init__(self, state: StateStore) -> None:
        self.armed, self.entered, self.go = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._count = state.count
        state.count = self.count  # type: ignore[method-assign]

    async def count(self, *args: Any, **kwargs: Any) -> int:
        if self.armed.is_set():
            self.armed.clear()
            self.entered.set()
            await asyncio.wait_for(self.go.wait(), 30)
        return await self._count(*args, **kwargs)


async def test_two_enrolments_racing_in_one_window_bind_only_the_first(tmp_path: Path) -> None:
    """Attack: an operator opens an enrolment window for carol; an attacker with her
    password starts an enrolment too (two keys shown: max_open_per_user allows it) and
    answers just as carol finishes hers. The window was checked on the record read
    before the user's lease, so the attacker's answer, read before carol's enrolment
    closed the window and checked after, enrolled too and replaced carol's key with
    the attacker's. Fixed: the window is read again under the lease."""
    async with Harness(tmp_path) as h:
        paused = Paused(h.services.state)
        now = h.clock.now
        await h.write(lambda s: s.open_enrolment("carol", now + HOUR, now))
        victim = await h.send("carol", password("carol"))
        attacker = await h.send("carol", password("carol"))
        victim_key, attacker_key = totp_key(victim.reply_message), totp_key(attacker.reply_message)
        paused.armed.set()
        late = asyncio.create_task(
            h.send("carol", pyotp.TOTP(attacker_key).at(h.clock.now), attacker.state)
        )
        await asyncio.wait_for(paused.entered.wait(), 30)
        done = await h.send("carol", pyotp.TOTP(victim_key).at(h.clock.now), victim.state)
        assert (done.outcome, done.reason) == (ACCEPT, "mfa_enrolled")
        paused.go.set()
        refused = await late
        assert (refused.outcome, refused.reason) == (REJECT, "enrolment_window_closed")
        assert h.store.get_totp_secret("carol") == victim_key
        record = h.store.get_user("carol")
        assert record is not None and record.failures == 0  # the refusal cost nothing


# --------------------------------------------------------------------------- guessing


async def guess_for(h: Harness, user: str, seconds: float) -> Counter[str]:
    """A password holder guessing codes for `seconds` of virtual time: one wrong code
    per login, waiting out each lockout; the reasons of the answers (first rounds that
    got no challenge as `first:REASON`)."""
    reasons: Counter[str] = Counter()
    lockout = h.config.multifactor.lockout.lockout_seconds
    end = h.clock.now + seconds
    while h.clock.now < end:
        first: Answer = await h.send(user, password(user))
        if first.outcome is not CHALLENGE:
            reasons[f"first:{first.reason}"] += 1
            h.clock.advance(lockout + 1)
            continue
        answer = await h.send(user, wrong_code(h, user), first.state)
        reasons[answer.reason] += 1
        h.clock.advance(lockout + 1 if answer.reason == "locked_out" else 1)
    return reasons


async def test_a_password_holder_gets_at_most_100_code_guesses_a_day(tmp_path: Path) -> None:
    """Attack: guess codes with a victim's password, waiting out each lockout. The
    lockout ended and its count started again, so 5 guesses every 15 minutes went on
    forever: 480 a day, a 6-digit TOTP (3 codes valid at window 1) found in months.
    Fixed: `lockout.max_failures_per_day` (100, NIST SP 800-63B section 5.2.2) bounds
    the failures of any 24 hours; past it nothing is checked, and the user is refused
    before a challenge is even sent."""
    async with Harness(tmp_path, {"password_throttle": {"enabled": False}}) as h:
        h.enrol_totp("alice")
        reasons = await guess_for(h, "alice", DAY)
        checked = reasons["retry"] + reasons["totp_bad_code"]  # a wrong code judged
        locking = reasons["locked_out"]  # the fifth of a lockout, judged too
        assert checked + locking <= 100, reasons
        assert reasons["first:locked_out"] > 0  # past the ceiling: no challenge at all
        # the ceiling is a sliding day: a day later, codes are checked again
        h.clock.advance(DAY)
        first = await h.send("alice", password("alice"))
        assert first.outcome is CHALLENGE
        assert (await h.send("alice", h.code("alice"), first.state)).outcome is ACCEPT


# --------------------------------------------------------------------------- shipped


def shipped(name: str) -> dict[str, Any]:
    """The policy and second-factor sections of a shipped example config."""
    data = yaml.safe_load((REPO / "config" / name).read_text())
    return {key: data[key] for key in ("access_policies", "multifactor", "replies")}


@pytest.mark.parametrize("name", ["production.yaml", "mfaproxy.yaml"])
async def test_the_shipped_configs_let_no_password_holder_enrol(tmp_path: Path, name: str) -> None:
    """Attack: a password holder logs in as a user who has no second factor yet (a new
    hire, an administrator), hoping to be shown an enrolment key to bind their own
    authenticator app, with every response a user could type at a prompt."""
    groups = ["VPN Users", "vpn-users"]
    users = {
        "newhire": {"groups": groups},
        "admin": {"groups": [*groups, "MFA Admins", "mfa-admins"]},
    }
    async with Harness(tmp_path, shipped(name), users=users) as h:
        for user in users:
            first = await h.send(user, password(user))
            # a refusal, or no second factor at all (optional MFA for a user without
            # one): never a challenge that shows a key
            assert first.outcome is not CHALLENGE, (user, first.reason, first.reply_message)
            if user == "admin":
                assert (first.outcome, first.reason) == (REJECT, "not_enrolled")
            record = h.store.get_user(user)
            assert record is None or not record.enrolled
