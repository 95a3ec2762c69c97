"""Atomic attempts through a real engine (issue 10, finding 3): bursts of answers for one
user, one NAS, several nodes; the per-user lease; the cap on open challenges.

The codes checked are counted by a spy around the real TOTP factor's `check` (the
factor still does the work), so each test can say how many guesses were looked at.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mfaproxy.auth.attempts import LEASES
from mfaproxy.config.stores import RedisSettings
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.factor_result import FactorResult
from mfaproxy.factors.base import FactorRequest
from mfaproxy.observability import metrics
from mfaproxy.store.postgres_users import PostgresUserStore
from mfaproxy.store.records import UserRepository
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.state import StateStore
from tests.auth.harness import Harness, password
from tests.support.ports import free_port
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE
LIMIT = 5  # multifactor.lockout.max_failures
BURST = {"multifactor": {"challenge": {"max_open_per_user": 100}}}


class CheckSpy:
    """Counts (and can hold) the checks of the real TOTP factor of a harness."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.hold: asyncio.Event | None = None
        factor = h.factors["totp"]
        real = factor.check

        async def check(
            request: FactorRequest, response: str, pending: Mapping[str, Any]
        ) -> FactorResult:
            self.calls += 1
            self.entered.set()
            if self.hold is not None:
                await self.hold.wait()
            return await real(request, response, pending)

        monkeypatch.setattr(factor, "check", check)


async def open_sessions(h: Harness, user: str, count: int) -> list[bytes]:
    states = []
    for _ in range(count):
        reply = await h.send(user, password(user))
        assert reply.outcome is CHALLENGE and reply.state is not None
        states.append(reply.state)
    return states


def wrong(i: int) -> str:
    return f"{(i * 7919) % 1_000_000:06d}"


# --------------------------------------------------------------------------- one node


async def test_finding_3_a_burst_of_answers_gets_no_more_checks_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Harness(tmp_path, BURST) as h:
        h.enrol_totp("alice")
        spy = CheckSpy(h, monkeypatch)
        states = await open_sessions(h, "alice", 100)
        responses = [wrong(i) for i in range(99)] + [h.code("alice")]
        replies = await asyncio.gather(
            *(h.send("alice", r, s) for r, s in zip(responses, states, strict=True))
        )
        assert spy.calls <= LIMIT
        assert sum(1 for r in replies if r.outcome is ACCEPT) <= 1
        busy = sum(1 for r in replies if r.reason == "user_busy")
        assert busy >= len(replies) - LIMIT
        record = h.store.get_user("alice")
        assert record is not None and record.failures <= LIMIT


async def test_wrong_answers_one_after_another_stop_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Harness(tmp_path, BURST) as h:
        h.enrol_totp("alice")
        spy = CheckSpy(h, monkeypatch)
        states = await open_sessions(h, "alice", 20)
        replies = [await h.send("alice", wrong(i), s) for i, s in enumerate(states)]
        assert spy.calls == LIMIT
        assert [r.reason for r in replies[LIMIT - 1 :]] == ["locked_out"] * (21 - LIMIT)
        right = await h.login("alice", password("alice"), h.code("alice"))
        assert (right.outcome, right.reason) == (REJECT, "locked_out")
        assert spy.calls == LIMIT  # a locked user's code is not even looked at


# --------------------------------------------------------------------------- several nodes


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


SCHEMAS = itertools.count(1)


@pytest.fixture(params=["sqlite+memory", "postgres+memory", "postgres+redis"])
def backends(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Callable[[bytes], UserRepository] | None, Callable[[], StateStore] | None]:
    """How each node opens its stores. With a memory state store the nodes share only
    the user store: no lease, no session is common, the reservation alone holds."""
    user_store, state_store = request.param.split("+")
    open_store: Callable[[bytes], UserRepository] | None = None
    open_state: Callable[[], StateStore] | None = None
    if user_store == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        schema = f"burst_{next(SCHEMAS)}"
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        dsn = make_conninfo(server.dsn, options=f"-c search_path={schema}")
        open_store = lambda key: PostgresUserStore(dsn, key)  # noqa: E731
    if state_store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis")
        redis_server.flush()
        settings = RedisSettings.model_validate({"url": redis_server.url})
        open_state = lambda: RedisStateStore(settings)  # noqa: E731
    return open_store, open_state


async def test_concurrent_answers_on_several_nodes_get_no_more_checks_than_the_limit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backends: tuple[Callable[[bytes], UserRepository] | None, Callable[[], StateStore] | None],
) -> None:
    open_store, open_state = backends
    nodes = [
        Harness(
            tmp_path,
            BURST,
            open_store=open_store,
            state=open_state() if open_state else None,
        )
        for _ in range(8)
    ]
    try:
        nodes[0].enrol_totp("alice")
        for node in nodes[1:]:
            node.totp_secrets = nodes[0].totp_secrets
        spies = [CheckSpy(node, monkeypatch) for node in nodes]
        sessions = [(node, await open_sessions(node, "alice", 3)) for node in nodes]
        sends = [
            node.send("alice", wrong(i * 3 + j), state)
            for i, (node, states) in enumerate(sessions)
            for j, state in enumerate(states)
        ]
        replies: list[Answer] = await asyncio.gather(*sends)
        assert sum(spy.calls for spy in spies) <= LIMIT
        assert all(r.outcome is not ACCEPT for r in replies)
        record = nodes[0].store.get_user("alice")
        assert record is not None and record.failures <= LIMIT
        assert {r.reason for r in replies} <= {"user_busy", "locked_out", "retry"}
    finally:
        for node in nodes:
            await node.__aexit__()


# --------------------------------------------------------------------------- the lease


async def test_a_check_in_flight_holds_the_users_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Harness(tmp_path) as h:
        for user in ("alice", "carol"):
            h.enrol_totp(user)
        spy = CheckSpy(h, monkeypatch)
        first, second = await open_sessions(h, "alice", 2)
        (carol,) = await open_sessions(h, "carol", 1)
        spy.hold = asyncio.Event()
        running = asyncio.create_task(h.send("alice", h.code("alice"), first))
        await spy.entered.wait()
        busy = await h.send("alice", wrong(1), second)
        assert (busy.outcome, busy.reason) == (REJECT, "user_busy")
        assert busy.reply_message is not None and "Try again" in busy.reply_message
        assert spy.calls == 1  # the second response was not looked at
        record = h.store.get_user("alice")
        assert record is not None and record.failures == 1  # only the one in flight
        spy.hold.set()  # another user is never held up by alice's lease
        other = await h.send("carol", h.code("carol"), carol)
        assert other.outcome is ACCEPT
        assert (await running).outcome is ACCEPT
        record = h.store.get_user("alice")
        assert record is not None and record.failures == 0  # released on success
        spy.hold = None
        again = await h.login("alice", password("alice"), h.code("alice", 1))
        assert again.outcome is ACCEPT  # the lease was given back


async def test_a_lease_left_by_a_crashed_node_times_out(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        lease = h.config.multifactor.check_lease()
        crashed = await h.state.reserve(LEASES, "alice", h.clock.now, max_events=1, window=lease)
        assert crashed is not None  # held by a node that died and never released it
        busy = await h.login("alice", password("alice"), h.code("alice"))
        assert busy.reason == "user_busy"
        h.clock.advance(lease)
        assert (await h.login("alice", password("alice"), h.code("alice"))).outcome is ACCEPT


def test_the_lease_outlasts_the_longest_method_wait(tmp_path: Path) -> None:
    duo = {"integration_key": "DI", "secret_key": "s" * 40, "api_hostname": "api.example"}
    h = Harness(tmp_path, {"multifactor": {"enabled": ["totp"], "duo": {**duo, "timeout": 90}}})
    assert h.config.multifactor.check_lease() == 100
    fixed = Harness(tmp_path, {"multifactor": {"lockout": {"check_lease_seconds": 40}}})
    assert fixed.config.multifactor.check_lease() == 40


# --------------------------------------------------------------------------- open sessions


async def test_a_new_challenge_retires_the_users_oldest(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:  # default: 3 open challenges per user
        h.enrol_totp("alice")
        h.enrol_totp("carol")
        before = metrics.CHALLENGES_RETIRED._value.get()
        states = await open_sessions(h, "alice", 5)
        (carol,) = await open_sessions(h, "carol", 1)
        assert metrics.CHALLENGES_RETIRED._value.get() == before + 2
        for retired in states[:2]:
            reply = await h.send("alice", h.code("alice"), retired)
            assert (reply.outcome, reply.reason) == (REJECT, "unknown_state")
        assert (await h.send("alice", h.code("alice"), states[4])).outcome is ACCEPT
        assert (await h.send("carol", h.code("carol"), carol)).outcome is ACCEPT


async def test_a_retry_challenge_replaces_the_one_it_answers(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        states = await open_sessions(h, "alice", 3)
        retry = await h.send("alice", wrong(0), states[0])
        assert retry.outcome is CHALLENGE  # the answered State was taken: still 3 open
        for state in states[1:]:
            assert (await h.send("alice", wrong(1), state)).outcome is CHALLENGE
        assert (await h.send("alice", h.code("alice"), retry.state)).outcome is ACCEPT


# --------------------------------------------------------------------------- per NAS


async def test_the_nas_throttle_is_checked_and_counted_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {f"user{i}": {"groups": ["vpn-users"]} for i in range(12)}
    nas = {"multifactor": {"lockout": {"client_failures_per_minute": 4}}}
    async with Harness(tmp_path, nas, users=users) as h:
        for user in users:
            h.enrol_totp(user)
        spy = CheckSpy(h, monkeypatch)
        states = {user: (await open_sessions(h, user, 1))[0] for user in users}
        replies = await asyncio.gather(
            *(h.send(user, wrong(i), states[user]) for i, user in enumerate(users))
        )
        assert spy.calls == 4  # one lease per user, so all 12 raced for the NAS budget
        assert sorted(r.reason for r in replies) == ["client_throttled"] * 8 + ["retry"] * 4
        h.clock.advance(60)
        assert (await h.login("user11", password("user11"), h.code("user11"))).outcome is ACCEPT


async def test_successes_give_the_nas_budget_back(tmp_path: Path) -> None:
    nas = {"multifactor": {"lockout": {"client_failures_per_minute": 2}}}
    async with Harness(tmp_path, nas) as h:
        for user in ("alice", "bob", "carol", "dave"):
            h.enrol_totp(user)
        assert (await h.login("alice", password("alice"), wrong(0))).reason == "retry"
        for user in ("bob", "carol", "dave"):  # good logins from the NAS: not counted
            reply = await h.login(user, password(user), h.code(user))
            assert reply.outcome is ACCEPT, reply.reason
        assert (await h.login("bob", password("bob"), wrong(1))).reason == "retry"
        throttled = await h.login("dave", password("dave"))
        assert (throttled.outcome, throttled.reason) == (REJECT, "client_throttled")


# --------------------------------------------------------------------------- outages


async def test_an_unreachable_method_gives_the_attempt_back(tmp_path: Path) -> None:
    otp = {
        "server": {"host": "127.0.0.1", "port": free_port(), "secret": "otp-secret-123"},
        "timeout": 0.2,
        "retries": 0,
    }
    overrides = {
        "multifactor": {"enabled": ["radius"], "default": "radius", "radius": otp},
        "access_policies": {"mfa": {"default_action": "mfa_required"}},
    }
    async with Harness(tmp_path, overrides) as h:
        for _ in range(LIMIT + 2):
            reply = await h.login("alice", password("alice"), "123456")
            assert (reply.outcome, reply.reason) == (REJECT, "radius_unavailable")
        record = h.store.get_user("alice")
        assert record is None or (record.failures, record.locked_until) == (0, None)
