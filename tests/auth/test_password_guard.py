"""The password guard's identity counter (auth/password_guard.py): aliases of one
directory entry (`sam`, `sam@example.org` under a two-attribute LDAP filter) cannot
each spend their own budget once the directory has named the identity. Real stores
(memory counters, the sealed memory state store); the directory's answers are given as
the engine would pass them (the normalised identity, or None)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest

from mfaproxy.auth.password_guard import Attempt, PasswordGuard, Throttled, pair, source_of
from mfaproxy.config.stores import RedisSettings
from mfaproxy.config.throttle import PasswordThrottleConfig
from mfaproxy.errors import UpstreamError
from mfaproxy.observability import metrics
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.redis_throttle import RedisThrottle
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.state import MemoryStateStore
from mfaproxy.store.throttle import MemoryThrottle
from tests.support.redis_server import RedisServer

NOW = 1_800_000_000.0
DN = "uid=sam,ou=people,dc=example,dc=org"
SOMEWHERE = source_of("vpn", "198.51.100.7")


def guard() -> PasswordGuard:
    state = SealedStateStore(MemoryStateStore(), bytes(32))
    return PasswordGuard(PasswordThrottleConfig(), MemoryThrottle(), state)


async def fail(g: PasswordGuard, name: str, identity: str | None, source: str | None) -> None:
    attempt = await g.begin(name, source, NOW)
    assert isinstance(attempt, Attempt), attempt
    await g.failed(attempt, identity, NOW)


async def test_failures_under_aliases_add_up_on_the_identity() -> None:
    g = guard()
    for i in range(3):
        await fail(g, "sam", DN, source_of("vpn", f"198.51.100.{i}"))
    for i in range(2):
        await fail(g, "sam@example.org", DN, source_of("vpn", f"203.0.113.{i}"))
    # A third alias, never seen, with the right password: the identity waits.
    attempt = await g.begin("example\\sam", SOMEWHERE, NOW)
    assert isinstance(attempt, Attempt)
    refused = await g.succeeded(attempt, DN, NOW)
    assert refused == Throttled("identity", 1.0)


async def test_a_learnt_identity_is_checked_before_the_password() -> None:
    g = guard()
    first = await g.begin("sam@example.org", SOMEWHERE, NOW)
    assert isinstance(first, Attempt)
    assert await g.succeeded(first, DN, NOW) is None  # learns sam@example.org -> DN
    for i in range(5):
        await fail(g, "sam", DN, source_of("vpn", f"192.0.2.{i}"))
    # No directory call needed: the alias is mapped, so its identity counter refuses.
    again = await g.begin("sam@example.org", source_of("vpn", "192.0.2.200"), NOW)
    assert again == Throttled("identity", 1.0)


async def test_the_identity_counter_is_not_doubled_when_it_is_the_typed_name() -> None:
    """The users file names a user by the typed key itself: one counter, not two."""
    g = guard()
    for _ in range(5):
        await fail(g, "alice", "alice", None)
    assert await g.begin("alice", None, NOW) == Throttled("user", 1.0)
    assert g.throttle._counters.keys() == {"user:alice"}  # type: ignore[attr-defined]


async def test_known_sources_are_kept_apart_per_user() -> None:
    """A `|` in a name cannot make another user's (user, source) key."""
    g = guard()
    home = source_of("b", "vpn|x")
    ok = await g.begin("a|b", source_of("vpn", "x"), NOW)
    assert isinstance(ok, Attempt)
    await g.succeeded(ok, None, NOW)
    other = await g.begin("a", home, NOW)
    assert isinstance(other, Attempt) and not other.known


async def test_the_identity_is_the_counter_of_its_own_name() -> None:
    """Guesses typed as the identity itself (`sam`) count for every alias mapped to it."""
    g = guard()
    learnt = await g.begin("sam.alias", SOMEWHERE, NOW)
    assert isinstance(learnt, Attempt)
    assert await g.succeeded(learnt, "sam", NOW) is None  # sam.alias -> sam
    for i in range(5):
        await fail(g, "sam", None, source_of("vpn", f"192.0.2.{i}"))
    refused = await g.begin("sam.alias", source_of("vpn", "192.0.2.99"), NOW)
    assert refused == Throttled("identity", 1.0)


# --------------------------------------------------------------------------- located identities


def events(g: PasswordGuard) -> dict[str, int]:
    counters = g.throttle._counters  # type: ignore[attr-defined]
    return {name: len(found.times) for name, found in counters.items() if found.times}


async def test_a_located_identity_that_waits_gives_the_whole_attempt_back() -> None:
    """A refused attempt is never recorded: not on the typed name, not on the source."""
    g = guard()
    for _ in range(5):
        await fail(g, "sam", None, None)
    attempt = await g.begin("sam@example.org", SOMEWHERE, NOW)
    assert isinstance(attempt, Attempt)  # a name never seen: its own counter is fresh
    assert await g.located(attempt, "sam", NOW) == Throttled("identity", 1.0)
    assert events(g) == {"user:sam": 5}
    assert attempt.reserved == []


async def test_a_located_identity_is_reserved_before_the_password() -> None:
    g = guard()
    attempt = await g.begin("sam@example.org", SOMEWHERE, NOW)
    assert isinstance(attempt, Attempt)
    assert await g.located(attempt, "sam", NOW) is None
    assert events(g) == {"user:sam@example.org": 1, "user:sam": 1, f"source:{SOMEWHERE}": 1}
    await g.abandoned(attempt)  # the directory went down: no guess after all
    assert events(g) == {}


async def test_the_located_identity_is_not_counted_twice() -> None:
    g = guard()
    attempt = await g.begin("sam@example.org", None, NOW)
    assert isinstance(attempt, Attempt)
    assert await g.located(attempt, "sam", NOW) is None
    await g.failed(attempt, "sam", NOW)  # the identity named again after the bind
    assert events(g) == {"user:sam@example.org": 1, "user:sam": 1}
    same = await g.begin("sam", None, NOW)
    assert isinstance(same, Attempt)
    assert await g.located(same, "sam", NOW) is None
    assert same.reserved == [("user", "sam")]


async def test_a_disabled_guard_reserves_nothing_on_location() -> None:
    state = SealedStateStore(MemoryStateStore(), bytes(32))
    g = PasswordGuard(PasswordThrottleConfig(enabled=False), MemoryThrottle(), state)
    attempt = await g.begin("sam@example.org", SOMEWHERE, NOW)
    assert isinstance(attempt, Attempt)
    assert await g.located(attempt, "sam", NOW) is None
    assert events(g) == {}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.parametrize("failmode", ["secure", "safe"])
async def test_the_store_down_between_locate_and_verify(
    redis_server: RedisServer, failmode: Literal["secure", "safe"]
) -> None:
    """secure: the store error goes through (the engine rejects, store_unavailable);
    safe: the password is checked unthrottled, and that is counted."""
    redis_server.flush()
    store = RedisStateStore(RedisSettings.model_validate({"url": redis_server.url}))
    g = PasswordGuard(
        PasswordThrottleConfig(), RedisThrottle(store), SealedStateStore(store, bytes(32)), failmode
    )
    try:
        attempt = await g.begin("sam@example.org", SOMEWHERE, NOW)
        assert isinstance(attempt, Attempt)
        redis_server.stop()
        labels = {"action": "unthrottled"}
        before = metrics.REGISTRY.get_sample_value("mfaproxy_store_failmode_total", labels) or 0
        if failmode == "secure":
            with pytest.raises(UpstreamError):
                await g.located(attempt, "sam", NOW)
        else:
            assert await g.located(attempt, "sam", NOW) is None
            after = metrics.REGISTRY.get_sample_value("mfaproxy_store_failmode_total", labels)
            assert after == before + 1
    finally:
        redis_server.start()
        await store.close()


async def test_a_name_new_at_a_source_the_located_identity_knows() -> None:
    """sam logged in at home as `sam`; his identity is locked by guesses elsewhere. At
    home, a name never seen (nothing learnt for it) located as sam is judged as at his
    known source: the user counters are given back, his known-source counter applies."""
    g = guard()
    home = source_of("vpn", "192.0.2.10")
    assert home is not None
    first = await g.begin("sam", home, NOW)
    assert isinstance(first, Attempt)
    assert await g.succeeded(first, "sam", NOW) is None
    for _ in range(5):
        await fail(g, "sam", None, None)
    attempt = await g.begin("sam@example.org", home, NOW)
    assert isinstance(attempt, Attempt) and not attempt.known
    assert await g.located(attempt, "sam", NOW) is None
    assert attempt.known
    assert attempt.reserved == [("known_source", pair("sam", home)), ("source", home)]
    assert "user:sam@example.org" not in events(g)
    assert events(g)["user:sam"] == 5
    assert await g.succeeded(attempt, "sam", NOW) is None
    # Now known for that name too: the next attempt is known before the directory answers.
    again = await g.begin("sam@example.org", home, NOW)
    assert isinstance(again, Attempt) and again.known
