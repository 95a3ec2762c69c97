"""Password guessing (finding 4: 40 guesses in 4.3 s, nothing recorded) against the real
engine in process (tests/auth/harness.py, virtual clock), the local users file with
real argon2 hashes, and the counters in memory or in a real redis-server shared by two
engines (two nodes). `Checks` wraps the real checker to count the passwords that
reached it: a throttled attempt must check none."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfaproxy.config.stores import RedisSettings
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.primary import IdentityLookup, Located, PrimaryResult
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.observability import metrics
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.redis_throttle import RedisThrottle
from tests.auth.harness import Harness, password
from tests.support.freeradius import FreeRadiusServer, UserSpec
from tests.support.redis_server import RedisServer

ACCEPT, REJECT = Outcome.ACCEPT, Outcome.REJECT
SKIP_MFA: dict[str, Any] = {"access_policies": {"mfa": {"default_action": "mfa_skipped"}}}


class Checks:
    """The real checker, counting the passwords it is asked about (`verify`: a user
    located without a password costs none)."""

    def __init__(self, inner: PasswordChecker) -> None:
        self.inner = inner
        self.name = inner.name
        self.count = 0

    async def authenticate(self, username: str, secret: str) -> PrimaryResult:
        return await self.verify(await self.locate(username), secret)

    async def locate(self, username: str) -> Located:
        return await self.inner.locate(username)

    async def verify(self, located: Located, secret: str) -> PrimaryResult:
        self.count += 1
        return await self.inner.verify(located, secret)

    async def health(self) -> str | None:
        return await self.inner.health()

    async def find_identity(self, username: str) -> IdentityLookup:
        return await self.inner.find_identity(username)

    async def close(self) -> None:
        await self.inner.close()


def counting(h: Harness) -> Checks:
    checks = Checks(h.engine.checker)
    h.engine.checker = checks
    return checks


def refused(scope: str) -> float:
    labels = {"scope": scope, "event": "refused"}
    return metrics.REGISTRY.get_sample_value("mfaproxy_password_throttle_total", labels) or 0.0


async def guess(h: Harness, user: str, typed: str, station: str | None = "203.0.113.7") -> Answer:
    options: dict[str, Any] = {"Calling_Station_Id": station} if station else {}
    return await h.send(user, typed, **options)


async def test_forty_guesses_reach_the_directory_five_times(tmp_path: Path) -> None:
    async with Harness(tmp_path, SKIP_MFA) as h:
        checks = counting(h)
        before = refused("user")
        answers = [await guess(h, "alice", f"guess-{i}") for i in range(40)]
        assert [a.reason for a in answers[:5]] == ["bad_password"] * 5
        assert {a.reason for a in answers[5:]} == {"password_throttled"}
        assert (
            answers[5].reply_message is not None and "Try again later" in answers[5].reply_message
        )
        assert checks.count == 5
        assert refused("user") == before + 35
        assert h.last_audit["password_throttle"] == "user"
        assert h.last_audit["retry_after_seconds"] == 1
        # Even the right password is not checked while the wait lasts.
        right = await guess(h, "alice", password("alice"))
        assert (right.outcome, right.reason) == (REJECT, "password_throttled")
        assert checks.count == 5
        h.clock.advance(1)
        assert (await guess(h, "alice", password("alice"))).outcome is ACCEPT
        assert checks.count == 6


async def test_each_further_failure_doubles_the_wait(tmp_path: Path) -> None:
    async with Harness(tmp_path, SKIP_MFA) as h:
        checks = counting(h)
        for i in range(5):
            await guess(h, "bob", f"g{i}")
        for wait in (1, 2, 4, 8, 16):
            h.clock.advance(wait - 0.5)
            assert (await guess(h, "bob", "early")).reason == "password_throttled"
            h.clock.advance(0.5)
            assert (await guess(h, "bob", "on-time")).reason == "bad_password"
        assert checks.count == 10


async def test_a_concurrent_burst_gets_the_free_attempts_only(tmp_path: Path) -> None:
    async with Harness(tmp_path, SKIP_MFA) as h:
        checks = counting(h)
        answers = await asyncio.gather(*(guess(h, "carol", f"g{i}") for i in range(40)))
        assert sum(1 for a in answers if a.reason == "bad_password") == 5
        assert checks.count == 5


async def test_the_ceiling_of_one_hundred_in_a_day(tmp_path: Path) -> None:
    """NIST SP 800-63B 5.2.2. Here with a short soft lock, so 100 come quickly."""
    fast = {**SKIP_MFA, "password_throttle": {"user": {"lock_seconds": 2}}}
    async with Harness(tmp_path, fast) as h:
        checks = counting(h)
        start = h.clock.now
        while checks.count < 100:
            answer = await guess(h, "dave", "wrong", None)
            if answer.reason == "password_throttled":
                h.clock.advance(h.last_audit["retry_after_seconds"])
        assert h.clock.now - start < 3600  # the soft lock alone would allow more
        for _ in range(50):
            h.clock.advance(600)
            if h.clock.now >= start + 86400:
                break
            answer = await guess(h, "dave", password("dave"), None)
            assert answer.reason == "password_throttled"
        assert checks.count == 100
        h.clock.now = start + 86400 + 1  # the first failure has left the window
        assert (await guess(h, "dave", password("dave"), None)).outcome is ACCEPT


async def test_a_locked_source_locks_nobody_elsewhere(tmp_path: Path) -> None:
    """Spraying from one device: the source is stopped, its refused guesses cost the
    named users nothing, and they log in from their own devices."""
    config = {**SKIP_MFA, "password_throttle": {"source": {"free_failures": 3}}}
    async with Harness(tmp_path, config) as h:
        checks = counting(h)
        sprayer = "198.51.100.66"
        for user in ("alice", "bob", "carol"):
            assert (await guess(h, user, "Summer2024!", sprayer)).reason == "bad_password"
        for _ in range(20):
            for user in ("alice", "bob", "carol", "dave"):
                answer = await guess(h, user, "Summer2024!", sprayer)
                assert answer.reason == "password_throttled"
                assert h.last_audit["password_throttle"] == "source"
        assert checks.count == 3
        # dave was never counted: his five free failures are all there elsewhere
        for i in range(5):
            answer = await guess(h, "dave", f"typo{i}", f"192.0.2.{40 + i}")
            assert answer.reason == "bad_password"
        for user in ("alice", "bob", "carol"):
            answer = await guess(h, user, password(user), f"192.0.2.{len(user)}")
            assert answer.outcome is ACCEPT


async def test_a_guesser_cannot_lock_a_user_out_of_a_known_source(tmp_path: Path) -> None:
    async with Harness(tmp_path, SKIP_MFA) as h:
        home = "192.0.2.10"
        assert (await guess(h, "alice", password("alice"), home)).outcome is ACCEPT
        # The guesser rotates Calling-Station-Ids (no source counter catches it) and
        # keeps alice's user counter locked.
        for i in range(40):
            await guess(h, "alice", f"g{i}", f"198.51.100.{i}")
        new = await guess(h, "alice", password("alice"), "203.0.113.99")
        assert new.reason == "password_throttled"  # a new device waits: the rule
        ok = await guess(h, "alice", password("alice"), home)
        assert ok.outcome is ACCEPT
        # alice's own typos at home have their own counter, forgotten on success
        for i in range(4):
            assert (await guess(h, "alice", f"typo{i}", home)).reason == "bad_password"
        assert (await guess(h, "alice", password("alice"), home)).outcome is ACCEPT
        for i in range(5):
            assert (await guess(h, "alice", f"typo{i}", home)).reason == "bad_password"


async def test_a_guesser_at_a_known_source_is_still_throttled(tmp_path: Path) -> None:
    """Spoofing the victim's Calling-Station-Id gets the same rule, not a pass."""
    async with Harness(tmp_path, SKIP_MFA) as h:
        checks = counting(h)
        home = "192.0.2.10"
        assert (await guess(h, "bob", password("bob"), home)).outcome is ACCEPT
        answers = [await guess(h, "bob", f"g{i}", home) for i in range(30)]
        assert sum(1 for a in answers if a.reason == "bad_password") == 5
        assert h.last_audit["password_throttle"] in ("known_source", "source")
        assert checks.count == 6


async def test_no_calling_station_id_means_no_source_counter(tmp_path: Path) -> None:
    """Without a Calling-Station-Id the NAS alone is no source: one guesser must not
    lock every user of the NAS out. The user counters still apply."""
    async with Harness(tmp_path, SKIP_MFA) as h:
        for user in ("alice", "bob", "carol", "dave"):
            for i in range(5):
                assert (await guess(h, user, f"g{i}", None)).reason == "bad_password"
            assert (await guess(h, user, "again", None)).reason == "password_throttled"
            assert h.last_audit["password_throttle"] == "user"


async def test_spelling_variants_share_one_counter(tmp_path: Path) -> None:
    async with Harness(tmp_path, SKIP_MFA) as h:
        checks = counting(h)
        for name in ("alice", "ALICE", "Alice", "aLiCe", "ALIce"):
            await guess(h, name, "wrong")
        assert (await guess(h, "ALICE", "wrong")).reason == "password_throttled"
        assert checks.count == 5


async def test_disabled(tmp_path: Path) -> None:
    async with Harness(tmp_path, {**SKIP_MFA, "password_throttle": {"enabled": False}}) as h:
        checks = counting(h)
        for i in range(12):
            assert (await guess(h, "alice", f"g{i}")).reason == "bad_password"
        assert checks.count == 12


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def node(tmp: Path, redis: RedisServer, **overrides: Any) -> Harness:
    """One node of a cluster: its own Redis client, the shared counters. Nodes made on
    one `tmp` share the master key file and the user store, as a cluster does."""
    tmp.mkdir(exist_ok=True)
    settings = RedisSettings.model_validate({"url": redis.url, "socket_timeout": 0.5})
    store = RedisStateStore(settings)
    return Harness(tmp, {**SKIP_MFA, **overrides}, state=store, throttle=RedisThrottle(store))


async def test_two_nodes_share_the_counters(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flush()
    async with node(tmp_path, redis_server) as a, node(tmp_path, redis_server) as b:
        b.clock = a.clock
        b.engine.clock = a.clock
        checks = [counting(a), counting(b)]
        answers = await asyncio.gather(
            *(guess(a if i % 2 else b, "alice", f"g{i}") for i in range(40))
        )
        assert sum(1 for x in answers if x.reason == "bad_password") == 5
        assert sum(c.count for c in checks) == 5


async def test_the_counter_store_down(tmp_path: Path, redis_server: RedisServer) -> None:
    """secure: no password is checked, the answer is store_unavailable; safe: checked
    without throttling, and counted as such."""
    redis_server.flush()
    async with (
        node(tmp_path / "secure", redis_server) as secure,
        node(tmp_path / "safe", redis_server, server={"store_failmode": "safe"}) as safe,
    ):
        checks = [counting(secure), counting(safe)]
        redis_server.stop()
        try:
            answer = await guess(secure, "alice", password("alice"))
            assert (answer.outcome, answer.reason) == (REJECT, "store_unavailable")
            assert checks[0].count == 0
            labels = {"action": "unthrottled"}
            before = metrics.REGISTRY.get_sample_value("mfaproxy_store_failmode_total", labels)
            wrong = await guess(safe, "alice", "wrong")
            assert (wrong.outcome, wrong.reason) == (REJECT, "bad_password")
            assert checks[1].count == 1
            after = metrics.REGISTRY.get_sample_value("mfaproxy_store_failmode_total", labels)
            assert after == (before or 0.0) + 1
        finally:
            redis_server.start()


# --------------------------------------------------------------------------- aliases


@pytest.fixture(scope="module")
def upstream() -> Iterator[FreeRadiusServer]:
    """A real FreeRADIUS that knows sam under several names (an upstream with aliases):
    `sam.alias` answers with User-Name `Sam`, so its identity is `sam`."""
    users = {
        "sam": UserSpec("sam-pw"),
        "SAM": UserSpec("sam-pw"),
        "sam.alias": UserSpec("sam-pw", reply={"User-Name": "Sam"}),
    }
    with FreeRadiusServer(users, secret="alias-secret") as server:
        yield server


async def test_aliases_of_one_user_share_the_budget(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    server = {"host": upstream.host, "port": upstream.port, "secret": "alias-secret"}
    directory = {"backend": "radius", "radius": {"servers": [server], "timeout": 2, "retries": 1}}
    async with Harness(tmp_path, {**SKIP_MFA, "directory": directory}) as h:
        checks = counting(h)
        home = "192.0.2.10"
        assert (await guess(h, "sam.alias", "sam-pw", home)).outcome is ACCEPT  # learnt
        for i in range(5):
            assert (await guess(h, "sam", f"g{i}", f"198.51.100.{i}")).reason == "bad_password"
        # Every other spelling now waits, without the upstream being asked.
        asked = checks.count
        for typed in ("sam.alias", "SAM", "Sam"):
            answer = await guess(h, typed, "sam-pw", "203.0.113.50")
            assert answer.reason == "password_throttled", typed
        assert h.last_audit["password_throttle"] == "user"
        assert checks.count == asked
        # ...except where sam logged in before.
        assert (await guess(h, "sam.alias", "sam-pw", home)).outcome is ACCEPT
