"""Trusted reconnects through a real engine, in process (tests/auth/harness.py), and
attacks on them: another station, another NAS, another spelling of the user, another
user, missing Calling-Station-Id, expiry on the virtual clock, a window that reconnects
cannot stretch, every way trust ends (reset, clear, lockout, forget-trust), tampered and
moved state-store values, and bursts of first logins against memory and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfaproxy.config.stores import RedisSettings
from mfaproxy.core import trust as rules
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.otp.backup_codes import generate_codes
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from tests.auth.harness import SECRET, Harness, password
from tests.support.redis_server import RedisServer

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE
TRUSTED = "mfa_trusted_reconnect"
HOME, CAFE = "198.51.100.7", "203.0.113.9"
MINUTES = 60


def policies(minutes: int = MINUTES, **extra: Any) -> dict[str, Any]:
    reconnects = {
        "name": "reconnects",
        "rules": [{"type": "trusted_reconnect", "minutes": minutes}],
        "action_when_matched": "mfa_skipped",
        **extra,
    }
    return {
        "clients": [
            {"name": "vpn", "address": ["127.0.0.1/32"], "secret": SECRET},
            {"name": "wifi", "address": ["127.0.0.2/32"], "secret": SECRET},
        ],
        "access_policies": {"mfa": {"default_action": "mfa_required", "policies": [reconnects]}},
        # Bursts of one user's logins below; password throttling has its own tests.
        "password_throttle": {"enabled": False},
    }


async def passed(
    h: Harness, user: str = "alice", station: str | None = HOME, **options: Any
) -> Answer:
    """A full login with a TOTP code (a window starts)."""
    attrs: dict[str, Any] = {"Calling_Station_Id": station} if station is not None else {}
    first = await h.send(user, password(user.lower()), **attrs, **options)
    assert first.outcome is CHALLENGE, first.reason
    answer = await h.send(user, h.code(user.lower()), first.state, **attrs, **options)
    assert answer.outcome is ACCEPT and answer.reason == "mfa_code_ok", answer.reason
    h.clock.advance(31)  # the next TOTP step, so a later code is not a replay
    return answer


async def reconnect(
    h: Harness,
    user: str = "alice",
    station: str | None = HOME,
    typed: str | None = None,
    **options: Any,
) -> Answer:
    attrs: dict[str, Any] = {"Calling_Station_Id": station} if station is not None else {}
    secret = typed if typed is not None else password(user.lower())
    return await h.send(user, secret, **attrs, **options)


async def test_off_by_default_nothing_is_kept_and_every_login_is_challenged(tmp_path: Path) -> None:
    inner = MemoryStateStore()
    async with Harness(tmp_path, state=inner) as h:
        h.enrol_totp("alice")
        await passed(h)
        assert (await reconnect(h)).outcome is CHALLENGE
        assert await inner.size(rules.NAMESPACE, h.clock.now) == 0


async def test_a_reconnect_from_the_same_nas_and_station_skips_the_second_factor(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        await passed(h)
        again = await reconnect(h)
        assert (again.outcome, again.reason) == (ACCEPT, TRUSTED)
        assert h.last_audit["mfa_policy"] == "reconnects"
        # Reply attributes are those of any Accept (the primary check's groups, ...).
        wrong = await reconnect(h, typed="not-the-password")
        assert wrong.outcome is REJECT  # the password is always checked


@pytest.mark.parametrize(
    ("user", "station", "client"),
    [
        ("alice", CAFE, "vpn"),  # another Calling-Station-Id
        ("alice", HOME, "wifi"),  # another NAS
        ("alice", None, "vpn"),  # none at all: unknown is not trusted
        ("alice", "", "vpn"),  # an empty one neither
        ("carol", HOME, "vpn"),  # another user behind the same address
    ],
)
async def test_anything_else_is_challenged(
    tmp_path: Path, user: str, station: str | None, client: str
) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        h.enrol_totp("carol")
        await passed(h)
        other = await reconnect(h, user, station, client=client)
        assert other.outcome is CHALLENGE, other.reason


async def test_trust_is_the_identitys_whatever_spelling_is_typed(tmp_path: Path) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        await passed(h, "ALICE")  # the directory says this is alice
        again = await reconnect(h, "alice")
        assert (again.outcome, again.reason) == (ACCEPT, TRUSTED)
        assert h.last_audit.get("mfa_policy") == "reconnects"


async def test_without_a_station_at_the_pass_no_window_starts(tmp_path: Path) -> None:
    inner = MemoryStateStore()
    async with Harness(tmp_path, policies(), state=inner) as h:
        h.enrol_totp("alice")
        await passed(h, station=None)
        assert await inner.size(rules.NAMESPACE, h.clock.now) == 0
        assert (await reconnect(h)).outcome is CHALLENGE


async def test_the_window_expires_on_time_and_reconnects_do_not_stretch_it(tmp_path: Path) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        await passed(h)  # the window starts 31 s before now (the harness steps the clock)
        start = h.clock.now - 31
        for _ in range(5):  # reconnect every 11 minutes: trusted, but not renewed
            h.clock.advance(11 * 60)
            assert (await reconnect(h)).reason == TRUSTED
        h.clock.now = start + MINUTES * 60 - 1
        assert (await reconnect(h)).reason == TRUSTED
        h.clock.now = start + MINUTES * 60
        assert (await reconnect(h)).outcome is CHALLENGE


async def test_a_backup_code_starts_a_window_too(tmp_path: Path) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        codes = generate_codes(2)
        h.store.replace_backup_codes("alice", codes, h.clock.now)
        first = await h.send("alice", password("alice"), Calling_Station_Id=HOME)
        done = await h.send("alice", codes[0], first.state, Calling_Station_Id=HOME)
        assert done.reason == "mfa_backup_code_ok"
        assert (await reconnect(h)).reason == TRUSTED


async def test_a_reset_asked_at_the_prompt_ends_trust(tmp_path: Path) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        await passed(h)
        elsewhere = await reconnect(h, station=CAFE)
        reset = await h.send("alice", "reset", elsewhere.state, Calling_Station_Id=CAFE)
        assert reset.reason == "reset_requested"
        assert (await reconnect(h)).outcome is CHALLENGE


@pytest.mark.parametrize(
    "operator",
    [
        lambda store, now: store.revoke_trust("alice", now),  # users forget-trust
        lambda store, now: store.clear_mfa("alice", now),  # users clear / reset approve
        lambda store, now: (
            store.request_reset("alice", "cli", now - 1) and store.clear_reset("alice", now)
        ),  # asked, then dismissed
        lambda store, now: store.set_method("alice", "totp", now),
        lambda store, now: store.request_reset("alice", "cli", now),
    ],
)
async def test_what_an_operator_does_to_the_users_mfa_ends_trust(
    tmp_path: Path, operator: Any
) -> None:
    async with Harness(tmp_path, policies()) as h:
        h.enrol_totp("alice")
        await passed(h)
        now = h.clock.now
        await h.services.users.run(lambda store: operator(store, now))
        h.clock.advance(1)
        answer = await reconnect(h)
        assert answer.reason != TRUSTED


async def test_a_lockout_ends_trust_and_it_does_not_come_back_after(tmp_path: Path) -> None:
    overrides = {
        **policies(),
        "multifactor": {"lockout": {"max_failures": 3, "lockout_seconds": 600}},
    }
    async with Harness(tmp_path, overrides) as h:
        h.enrol_totp("alice")
        await passed(h)  # trust from HOME
        first = await reconnect(h, station=CAFE)  # someone with the password elsewhere
        answer = await h.login(
            "alice", password("alice"), "000000", "000001", "000002", Calling_Station_Id=CAFE
        )
        assert answer.reason == "locked_out"
        assert (await reconnect(h)).reason == "locked_out"  # trust is no way past a lockout
        h.clock.advance(601)
        await passed(h, station=CAFE)  # the user again, elsewhere: the count is reset
        assert (await reconnect(h)).outcome is CHALLENGE  # HOME's window ended with the lockout
        del first


async def test_a_tampered_or_moved_value_is_no_pass(tmp_path: Path) -> None:
    inner = MemoryStateStore()
    async with Harness(tmp_path, policies(), state=inner) as h:
        h.enrol_totp("alice")
        h.enrol_totp("carol")
        await passed(h)
        trust = h.engine.mfa.trust
        home = trust._slot("alice", "vpn", HOME)
        sealed = await inner.get(rules.NAMESPACE, home, h.clock.now)
        assert sealed is not None and set(sealed) == {"sealed"}  # nothing readable in the store
        # Moved under another station's, NAS's or user's key: does not open.
        for user, client, station in (
            ("alice", "vpn", CAFE),
            ("alice", "wifi", HOME),
            ("carol", "vpn", HOME),
        ):
            await inner.put(
                rules.NAMESPACE, trust._slot(user, client, station), sealed, 3600, h.clock.now
            )
            answer = await reconnect(h, user, station, client=client)
            assert answer.outcome is CHALLENGE, (user, client, station)
        # Edited in place: does not open either.
        blob = sealed["sealed"]
        edited = {"sealed": blob[:-4] + ("AAAA" if not blob.endswith("AAAA") else "BBBB")}
        await inner.put(rules.NAMESPACE, home, edited, 3600, h.clock.now)
        assert (await reconnect(h)).outcome is CHALLENGE


async def test_bursts_of_first_logins_trust_nobody_until_a_pass(
    tmp_path: Path, state_store: StateStore
) -> None:
    async with Harness(tmp_path, policies(), state=state_store) as h:
        h.enrol_totp("alice")
        firsts = await asyncio.gather(*(reconnect(h) for _ in range(12)))
        assert {a.outcome for a in firsts} == {CHALLENGE}
        # All of them answered at once with one code: one pass (the oldest challenges
        # were retired, a second use of the code is a replay, checks wait their turn).
        code = h.code("alice")
        answers = await asyncio.gather(
            *(h.send("alice", code, a.state, Calling_Station_Id=HOME) for a in firsts)
        )
        assert [a.outcome for a in answers].count(ACCEPT) == 1
        h.clock.advance(1)
        again = await asyncio.gather(*(reconnect(h) for _ in range(12)))
        assert {a.reason for a in again} == {TRUSTED}
        # A revocation: every reconnect after it is challenged.
        now = h.clock.now
        await h.services.users.run(lambda s: s.revoke_trust("alice", now))
        h.clock.advance(1)
        after = await asyncio.gather(*(reconnect(h) for _ in range(12)))
        assert {a.outcome for a in after} == {CHALLENGE}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def state_store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore()
    server: RedisServer = request.getfixturevalue("redis")
    server.flush()
    return RedisStateStore(RedisSettings.model_validate({"url": server.url}))
