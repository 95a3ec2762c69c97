"""Duo pushes under attack and under load, with the real factor against the Duo fake.

- failmodes mean outages: 429 and 5xx after preauth never accept, whatever `failmode`;
- push fatigue: the per-user cap, one pending push per user (also across two "nodes"
  sharing a real redis-server), ignored and denied pushes counted;
- a retransmission that reaches another node continues the same Duo transaction;
- 100 pending pushes leave another user's passcode and push unaffected;
- Verified Push: the code Duo hands out at preauth is shown, Duo checks the user's entry.

Synchronisation is by the fake's Events and counters, never by sleeping.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.config.stores import RedisSettings
from mfaproxy.factors.base import FactorRequest, FactorResult, FactorUser, Verdict
from mfaproxy.factors.duo import DuoFactor
from mfaproxy.factors.duo_push import PENDING
from mfaproxy.observability.metrics import REGISTRY
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from tests.support.duo_fake import FakeDuo
from tests.support.redis_server import RedisServer

Make = Callable[..., DuoFactor]
WAIT = 30.0  # a hang guard for awaits, never a timing assertion
AFTER_PREAUTH = ["/auth/v2/auth", "/auth/v2/auth_status"]
ERRORS = [429, 500, 502, 503]


@pytest.fixture
def duo() -> Iterator[FakeDuo]:
    with FakeDuo() as fake:
        yield fake


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def settings(duo: FakeDuo, **options: Any) -> Any:
    config = MultifactorConfig.model_validate(
        {
            "enabled": ["duo"],
            "default": "duo",
            "duo": {
                "integration_key": duo.ikey,
                "secret_key": duo.skey,
                "api_hostname": duo.api_hostname,
                "ca_file": str(duo.ca_file),
                **options,
            },
        }
    )
    return config.duo


@pytest.fixture
async def make(duo: FakeDuo) -> AsyncIterator[Make]:
    built: list[DuoFactor] = []
    memory = MemoryStateStore()

    def factory(state: StateStore | None = None, **options: Any) -> DuoFactor:
        factor = DuoFactor(settings(duo, **options), state or memory, poll_interval=0.01)
        built.append(factor)
        return factor

    yield factory
    for factor in built:
        await factor.close()
    await memory.close()


def request(user: str = "alice", key: str | None = None) -> FactorRequest:
    return FactorRequest(
        user=FactorUser(name=user, login_name=user),
        client="vpn",
        client_ip=None,
        now=time.time(),
        request_key=key if key is not None else secrets.token_hex(8),
    )


async def menu(factor: DuoFactor, user: str = "alice") -> dict[str, Any]:
    result = await factor.begin(request(user))
    assert result.verdict is Verdict.CHALLENGE, result
    return dict(result.pending)


def pushes(result: str) -> float:
    return REGISTRY.get_sample_value("mfaproxy_duo_pushes_total", {"result": result}) or 0.0


# ------------------------------------------------------------ failmodes = outages


@pytest.mark.parametrize("status", ERRORS)
@pytest.mark.parametrize("path", AFTER_PREAUTH)
@pytest.mark.parametrize("answer", ["push", "phone", "sms", "123456"])
async def test_errors_after_the_user_was_asked_never_accept(
    duo: FakeDuo, make: Make, path: str, status: int, answer: str
) -> None:
    """failmode safe, and Duo fails once the user was asked: a reject, every time."""
    duo.add_user("alice", passcodes={"123456"})
    factor = make(failmode="safe")
    pending = await menu(factor)
    duo.fail(path, status)
    result = await factor.check(request(), answer, pending)
    if path == "/auth/v2/auth_status" and answer in ("sms", "123456"):
        # Passcodes and SMS are answered by /auth alone: no status poll to fail.
        assert result.verdict in (Verdict.ACCEPT, Verdict.CHALLENGE)
        assert result.reason in ("passcode_ok", "sms_sent")
        return
    assert (result.verdict, result.reason) == (Verdict.REJECT, "duo_error_after_prompt")
    assert not result.counts_as_failure  # Duo's fault, not the user's
    assert duo.failed[path] >= 1


@pytest.mark.parametrize("status", ERRORS)
@pytest.mark.parametrize("path", AFTER_PREAUTH)
async def test_append_mode_errors_after_preauth_never_accept(
    duo: FakeDuo, make: Make, path: str, status: int
) -> None:
    """`password,push` runs preauth inside check: a failure after it still rejects."""
    duo.add_user("alice")
    duo.fail(path, status)
    result = await make(failmode="safe").check(request(), "push", {})
    assert (result.verdict, result.reason) == (Verdict.REJECT, "duo_error_after_prompt")
    assert len(duo.calls_to("/auth/v2/preauth", "alice")) == 1


async def test_a_wrong_passcode_then_a_duo_outage_never_accepts(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", passcodes={"123456"})
    factor = make(failmode="safe")
    pending = await menu(factor)
    wrong = await factor.check(request(), "654321", pending)
    assert (wrong.verdict, wrong.reason) == (Verdict.REJECT, "bad_passcode")
    duo.fail("/auth/v2/auth", 503)
    again = await factor.check(request(), "654321", pending)
    assert again.verdict is Verdict.REJECT


@pytest.mark.parametrize(("status", "verdict", "reason"), [
    (500, Verdict.ACCEPT, "failmode_safe"),
    (503, Verdict.ACCEPT, "failmode_safe"),
    (429, Verdict.UNAVAILABLE, "duo_rate_limited"),
])  # fmt: skip
async def test_preauth_failures_safe_mode(
    duo: FakeDuo, make: Make, status: int, verdict: Verdict, reason: str
) -> None:
    """Only an outage at preauth (5xx, unreachable) is failmode's; a 429 is Duo saying no."""
    duo.add_user("alice")
    duo.fail("/auth/v2/preauth", status)
    result = await make(failmode="safe").begin(request())
    assert (result.verdict, result.reason) == (verdict, reason)
    result = await make(failmode="secure").begin(request())
    assert result.verdict is Verdict.UNAVAILABLE


# ------------------------------------------------------------------- push fatigue


async def test_pushes_per_user_are_capped(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", push="deny")
    duo.add_user("bob")
    factor = make(push_limit={"max_pushes": 3, "window_seconds": 600})
    pending = await menu(factor)
    limited = pushes("limited")
    for _ in range(3):
        denied = await factor.check(request(), "push", pending)
        assert (denied.reason, denied.counts_as_failure) == ("push_denied", True)
    capped = await factor.check(request(), "push", pending)
    assert (capped.verdict, capped.reason) == (Verdict.REJECT, "push_limited")
    assert capped.prompt is not None and "passcode" in capped.prompt
    assert duo.auth_calls("alice") == 3
    assert pushes("limited") == limited + 1
    # The cap is per user: bob is not affected.
    assert (await factor.check(request("bob"), "push", await menu(factor, "bob"))).reason == (
        "push_approved"
    )


async def test_a_burst_of_first_rounds_sends_one_push(duo: FakeDuo, make: Make) -> None:
    """Push bombing: 20 concurrent answers `push` for one user, while one is pending."""
    alice = duo.add_user("alice", hold=True)
    factor = make()
    pending = await menu(factor)
    refused = pushes("refused_pending")
    tasks = [asyncio.create_task(factor.check(request(), "push", pending)) for _ in range(20)]
    assert await asyncio.to_thread(alice.push_sent.wait, WAIT)
    while sum(t.done() for t in tasks) < 19:  # the 19 refusals need no Duo call
        await asyncio.wait(tasks, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    alice.release.set()
    results = [await asyncio.wait_for(t, WAIT) for t in tasks]
    reasons = sorted(r.reason for r in results)
    assert reasons == ["push_approved"] + ["push_pending"] * 19
    assert duo.auth_calls("alice") == 1
    assert pushes("refused_pending") == refused + 19
    assert all(not r.counts_as_failure for r in results if r.reason == "push_pending")


async def test_the_pending_record_is_released_after_each_push(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", push="timeout")
    state = MemoryStateStore()
    factor = make(state=state)
    result = await factor.check(request(), "push", {})
    assert result.reason == "push_timeout"
    assert await state.get(PENDING, "alice", time.time()) is None
    assert (await factor.check(request(), "push", {})).reason == "push_timeout"
    assert duo.auth_calls("alice") == 2


# ------------------------------------------------- two nodes sharing one redis


@pytest.fixture
async def two_nodes(
    duo: FakeDuo, make: Make, redis_server: RedisServer
) -> AsyncIterator[tuple[DuoFactor, DuoFactor]]:
    redis_server.flush()
    stores = [
        RedisStateStore(RedisSettings.model_validate({"url": redis_server.url})) for _ in range(2)
    ]
    yield make(state=stores[0]), make(state=stores[1])
    for store in stores:
        await store.close()


async def test_no_second_push_from_another_node(
    duo: FakeDuo, two_nodes: tuple[DuoFactor, DuoFactor]
) -> None:
    a, b = two_nodes
    alice = duo.add_user("alice", hold=True)
    first = asyncio.create_task(a.check(request(key="nas|1|7|aa"), "push", {}))
    assert await asyncio.to_thread(alice.polled.wait, WAIT)
    # Another login for alice on node B (a new request): refused, no push.
    other = await b.check(request(key="nas|1|8|bb"), "push", {})
    assert (other.verdict, other.reason) == (Verdict.REJECT, "push_pending")
    assert duo.auth_calls("alice") == 1
    alice.release.set()
    assert (await asyncio.wait_for(first, WAIT)).reason == "push_approved"
    # Once answered, a new login may push again.
    assert (await b.check(request(key="nas|1|9|cc"), "push", {})).reason == "push_approved"
    assert duo.auth_calls("alice") == 2


async def test_a_retransmission_on_another_node_continues_the_same_push(
    duo: FakeDuo, two_nodes: tuple[DuoFactor, DuoFactor]
) -> None:
    """Node A sent the push and died; the NAS's retransmission (same request key)
    reaches node B, which polls A's transaction: one push, and the approval is B's."""
    a, b = two_nodes
    alice = duo.add_user("alice", hold=True)
    key = "127.0.0.1|40000|42|" + secrets.token_hex(16)
    doomed = asyncio.create_task(a.check(request(key=key), "push", {}))
    assert await asyncio.to_thread(alice.polled.wait, WAIT)
    doomed.cancel()  # node A is gone (its task never finishes, nothing is released)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    continued = pushes("continued")
    taken_over = asyncio.create_task(b.check(request(key=key), "push", {}))
    alice.polled.clear()
    assert await asyncio.to_thread(alice.polled.wait, WAIT)
    alice.release.set()
    result = await asyncio.wait_for(taken_over, WAIT)
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "push_approved")
    assert duo.auth_calls("alice") == 1
    assert pushes("continued") == continued + 1


async def test_a_forged_request_key_is_not_a_retransmission(
    duo: FakeDuo, two_nodes: tuple[DuoFactor, DuoFactor]
) -> None:
    a, b = two_nodes
    alice = duo.add_user("alice", hold=True)
    key = "127.0.0.1|40000|42|" + "ab" * 16
    first = asyncio.create_task(a.check(request(key=key), "push", {}))
    assert await asyncio.to_thread(alice.polled.wait, WAIT)
    for forged in ("", key[:-1], key + "0", key.upper()):
        result = await b.check(request(key=forged), "push", {})
        assert result.reason == "push_pending", forged
    alice.release.set()
    assert (await asyncio.wait_for(first, WAIT)).reason == "push_approved"
    assert duo.auth_calls("alice") == 1


# ------------------------------------------------------------------------- load


async def test_100_pending_pushes_leave_other_logins_unaffected(duo: FakeDuo, make: Make) -> None:
    """Each pending push long-polls auth_status; none holds a call slot, so a passcode
    and a push of other users go through while all 100 wait (pool_size is only 2)."""
    duo.long_poll = 20
    waiting = [duo.add_user(f"user{i}", hold=True) for i in range(100)]
    duo.add_user("pat", passcodes={"271828"})
    duo.add_user("quick")
    factor = make(pool_size=2)
    held = [asyncio.create_task(factor.check(request(f"user{i}"), "push", {})) for i in range(100)]
    for user in waiting:
        assert await asyncio.to_thread(user.polled.wait, WAIT)
    assert all(not task.done() for task in held)

    passcode = await asyncio.wait_for(factor.check(request("pat"), "271828", {}), WAIT)
    assert (passcode.verdict, passcode.reason) == (Verdict.ACCEPT, "passcode_ok")
    push = await asyncio.wait_for(factor.check(request("quick"), "push", {}), WAIT)
    assert (push.verdict, push.reason) == (Verdict.ACCEPT, "push_approved")
    assert all(not task.done() for task in held)  # the 100 are still waiting

    for user in waiting:
        user.release.set()
    results: list[FactorResult] = [await asyncio.wait_for(t, WAIT) for t in held]
    assert {r.reason for r in results} == {"push_approved"}


# ----------------------------------------------------------------- Verified Push


async def test_verified_push_shows_the_code_and_duo_checks_it(duo: FakeDuo, make: Make) -> None:
    alice = duo.add_user("alice", verified_push=True)
    factor = make(verified_push=True)
    pending = await menu(factor)
    [preauth] = duo.calls_to("/auth/v2/preauth", "alice")
    assert preauth.params["client_supports_verified_push"] == "1"
    [code] = alice.verification_codes.values()

    shown = await factor.check(request(), "push", pending)
    assert (shown.verdict, shown.reason) == (Verdict.CHALLENGE, "verified_push")
    assert shown.prompt is not None and code in shown.prompt
    assert len(shown.prompt.encode("ascii")) <= 253
    [auth] = duo.calls_to("/auth/v2/auth", "alice")
    assert auth.params["factor"] == "push" and auth.params["txid"]

    alice.enter_code(code)  # the user types the code into Duo Mobile
    result = await factor.check(request(), "", shown.pending)
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "push_approved")
    assert duo.auth_calls("alice") == 1


async def test_verified_push_with_the_wrong_code_is_a_counted_reject(
    duo: FakeDuo, make: Make
) -> None:
    alice = duo.add_user("alice", verified_push=True)
    factor = make(verified_push=True)
    shown = await factor.check(request(), "push", await menu(factor))
    assert shown.verdict is Verdict.CHALLENGE
    [code] = alice.verification_codes.values() or ["000000"]
    alice.enter_code("999999" if code != "999999" else "111111")
    # Typing the code at the NAS instead of the app proves nothing: Duo decides.
    result = await factor.check(request(), code, shown.pending)
    assert (result.verdict, result.reason, result.counts_as_failure) == (
        Verdict.REJECT,
        "push_denied",
        True,
    )


async def test_verified_push_waits_while_the_code_is_not_entered(duo: FakeDuo, make: Make) -> None:
    alice = duo.add_user("alice", verified_push=True)
    factor = make(verified_push=True, timeout=0.5)
    shown = await factor.check(request(), "push", await menu(factor))
    result = await factor.check(request(), "", shown.pending)
    assert (result.verdict, result.reason, result.counts_as_failure) == (
        Verdict.REJECT,
        "push_timeout",
        True,
    )
    assert alice.entered_code is None


async def test_without_verified_push_support_duo_refuses_the_push(duo: FakeDuo, make: Make) -> None:
    """Duo's policy asks for Verified Push, we did not declare it (or the NAS cannot
    show a challenge: append mode never declares it): Duo denies, we reject."""
    duo.add_user("alice", verified_push=True)
    factor = make(verified_push=True)
    result = await factor.check(request(), "push", {})  # append mode: no begin
    assert (result.verdict, result.reason) == (Verdict.REJECT, "push_denied")
    assert "client_supports_verified_push" not in duo.calls_to("/auth/v2/preauth")[-1].params
    off = make(verified_push=False)
    pending = await menu(off)
    assert "verified_push" not in pending
    assert (await off.check(request(), "push", pending)).reason == "push_denied"


async def test_a_tampered_verified_push_record_is_refused(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    factor = make()
    for bad in ({"txid": 5, "started": 1.0}, {"txid": "x", "started": "soon"}, {}):
        result = await factor.check(request(), "", {"push": bad})
        assert (result.verdict, result.reason) == (Verdict.REJECT, "invalid_pending")
    assert duo.calls_to("/auth/v2/auth_status") == []
