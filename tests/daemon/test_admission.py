"""The dispatcher's admission control, reject delay, replay window and drain, with the
real engine (tests/auth/harness.py) behind it and a recording socket in front.

No sleeps: time is a virtual clock where it matters (queue waits, the duplicate and
replay windows), and `settled()` / `drain()` say when the dispatcher is done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from mfaproxy.auth.engine import Engine, RequestContext
from mfaproxy.core.answer import Answer
from mfaproxy.daemon.limits import Limits
from mfaproxy.daemon.runtime import Dispatcher, Runtime
from mfaproxy.errors import Shed
from mfaproxy.observability import metrics
from mfaproxy.radius.clients import ClientTable
from mfaproxy.radius.codec import RadiusRequest
from mfaproxy.radius.duplicates import DuplicateTable, ReplayWindow
from mfaproxy.store.duplicates import LocalDuplicates
from tests.auth.harness import SECRET, Clock, Harness, password
from tests.support.nas import DICTIONARY, access_request

FLOOD = "127.0.0.1"  # the `vpn` client of the harness
QUIET = "127.0.0.3"  # the `legacy` client


class Recorder:
    """The real engine, with a list of what reached it (and an optional fault)."""

    def __init__(self, engine: Engine, shed_first: int = 0) -> None:
        self.engine = engine
        self.seen: list[tuple[str, str | None, bool]] = []
        self.shed_first = shed_first

    async def handle(self, ctx: RequestContext, request: RadiusRequest) -> Answer:
        self.seen.append((ctx.source_ip, request.user_name, request.state is not None))
        if self.shed_first:
            self.shed_first -= 1
            raise Shed("hash_full")  # what a full pool raises deep in a backend
        return await self.engine.handle(ctx, request)

    async def close(self) -> None:
        await self.engine.close()


class Socket:
    """Stands in for the listening socket: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.arrived = asyncio.Event()

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))
        self.arrived.set()

    def is_closing(self) -> bool:
        return False

    def codes(self) -> list[int]:
        return [data[0] for data, _ in self.sent]


class Setup:
    def __init__(self, harness: Harness, limits: Limits, queue: int, workers: int) -> None:
        self.harness = harness
        self.recorder = Recorder(harness.engine)
        self.clock = Clock(1000.0)
        self.wall = Clock()
        runtime = Runtime(
            ClientTable(harness.config.clients),
            DICTIONARY,
            cast(Engine, self.recorder),
            limits=limits,
        )
        dedup = LocalDuplicates(DuplicateTable(30, 300), ReplayWindow(120))
        self.dispatcher = Dispatcher(runtime, dedup, queue, workers, self.clock, self.wall)
        self.socket = Socket()

    def send(self, data: bytes, source: str = FLOOD, port: int = 40000) -> None:
        self.dispatcher.submit(data, (source, port), cast(asyncio.DatagramTransport, self.socket))


def datagram(user: str, typed: str, state: bytes | None = None) -> bytes:
    packet = access_request(SECRET, user, typed, sign=False)
    if state is not None:
        packet.AddAttribute("State", state)
    packet.add_message_authenticator()
    return bytes(packet.RequestPacket())


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def shed(reason: str) -> float:
    return sample("mfaproxy_requests_shed_total", reason=reason)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    overrides = {"access_policies": {"mfa": {"default_action": "mfa_skipped"}}}
    async with Harness(tmp_path, overrides) as running:
        yield running


def setup(harness: Harness, queue: int = 100, workers: int = 4, **limits: float) -> Setup:
    return Setup(harness, Limits(**limits), queue, workers)


async def test_a_full_intake_sheds_the_flooding_source_and_counts(harness: Harness) -> None:
    s = setup(harness, queue=4, workers=1)
    before = shed("intake_full")
    for i in range(10):
        s.send(datagram("alice", password("alice")), port=41000 + i)
    s.send(datagram("carol", password("carol")), source=QUIET)
    assert shed("intake_full") - before == 7
    s.dispatcher.start()
    assert await s.dispatcher.drain(30) == 0
    await s.dispatcher.stop()
    assert (QUIET, "carol", False) in s.recorder.seen  # the quiet NAS kept its place
    assert len(s.recorder.seen) == 4
    assert s.socket.codes() == [2, 2, 2, 2]


async def test_requests_that_waited_too_long_are_shed_and_never_processed(
    harness: Harness,
) -> None:
    s = setup(harness, max_queue_wait=2.0, max_queue_wait_second_round=5.0)
    before = shed("intake_wait")
    for i in range(5):
        s.send(datagram("alice", password("alice")), port=42000 + i)
    s.send(datagram("alice", "123456", state=b"x" * 43), port=42010)  # an answer
    s.clock.advance(3.0)  # past max_queue_wait, within the second round's
    s.dispatcher.start()
    await s.dispatcher.settled()
    await s.dispatcher.stop()
    assert shed("intake_wait") - before == 5
    assert s.recorder.seen == [(FLOOD, "alice", True)]  # only the answer reached it
    assert s.socket.codes() == [3]  # (its State is unknown: a reject)


async def test_answers_go_first_then_sources_take_turns(harness: Harness) -> None:
    s = setup(harness, workers=1)
    for i in range(4):
        s.send(datagram("alice", password("alice")), port=43000 + i)
    s.send(datagram("carol", password("carol")), source=QUIET)
    s.send(datagram("dave", password("dave")), source=QUIET, port=43100)
    s.send(datagram("bob", "123456", state=b"y" * 43), port=43200)
    s.dispatcher.start()
    await s.dispatcher.settled()
    await s.dispatcher.stop()
    order = [(source, user) for source, user, _ in s.recorder.seen]
    assert order == [
        (FLOOD, "bob"),  # the answer to a challenge
        (FLOOD, "alice"),
        (QUIET, "carol"),
        (FLOOD, "alice"),
        (QUIET, "dave"),
        (FLOOD, "alice"),
        (FLOOD, "alice"),
    ]


async def test_the_reject_delay_holds_the_reply_not_a_worker(harness: Harness) -> None:
    s = setup(harness, workers=1, reject_delay=30.0)  # the timer never fires in this test
    wrong = datagram("alice", "not-her-password")
    s.dispatcher.start()
    s.send(wrong)
    await s.dispatcher.settled()
    assert s.socket.sent == [] and s.dispatcher.delayed == 1
    ignored = sample("mfaproxy_duplicates_total", action="ignored_in_flight")
    s.send(wrong)  # the NAS retransmits during the delay: not processed again
    s.send(datagram("carol", password("carol")), source=QUIET)  # the worker is free
    await s.dispatcher.settled()
    assert sample("mfaproxy_duplicates_total", action="ignored_in_flight") == ignored + 1
    assert len(s.recorder.seen) == 2
    assert s.socket.codes() == [2]  # carol's accept went out; alice's reject waits
    assert await s.dispatcher.drain(0) == 0  # a stop sends what is held
    assert s.socket.codes() == [2, 3]
    await s.dispatcher.stop()


async def test_the_reject_leaves_when_its_timer_fires(harness: Harness) -> None:
    s = setup(harness, reject_delay=0.01, reject_delay_jitter=0.01)
    s.dispatcher.start()
    s.send(datagram("alice", "wrong"))
    await asyncio.wait_for(s.socket.arrived.wait(), 30)
    assert s.socket.codes() == [3]
    assert s.dispatcher.delayed == 0
    await s.dispatcher.stop()


async def test_a_request_shed_in_the_engine_is_processed_on_retransmission(
    harness: Harness,
) -> None:
    s = setup(harness)
    s.recorder.shed_first = 1
    before = shed("hash_full")
    request = datagram("alice", password("alice"))
    s.dispatcher.start()
    s.send(request)
    await s.dispatcher.settled()
    assert s.socket.sent == [] and shed("hash_full") == before + 1
    s.send(request)  # forgotten by the duplicate table: processed anew
    await s.dispatcher.settled()
    await s.dispatcher.stop()
    assert len(s.recorder.seen) == 2 and s.socket.codes() == [2]


async def test_a_replay_outside_the_duplicate_window_is_dropped_and_counted(
    harness: Harness,
) -> None:
    s = setup(harness)
    request = datagram("alice", password("alice"))
    before = sample("mfaproxy_packets_dropped_total", reason="replayed")
    s.dispatcher.start()
    s.send(request)
    await s.dispatcher.settled()
    s.send(request, port=40001)  # the same request from another port: a replay
    s.wall.advance(31)  # past the duplicate window, within the replay window
    s.send(request)  # the same bytes again: no longer a retransmission
    await s.dispatcher.settled()
    await s.dispatcher.stop()
    assert sample("mfaproxy_packets_dropped_total", reason="replayed") == before + 2
    assert len(s.recorder.seen) == 1 and s.socket.codes() == [2]


async def test_drain_answers_what_was_taken_and_refuses_the_rest(harness: Harness) -> None:
    s = setup(harness, workers=2)
    for i in range(5):
        s.send(datagram("alice", password("alice")), port=44000 + i)
    s.dispatcher.start()
    drained = asyncio.create_task(s.dispatcher.drain(30))
    await asyncio.sleep(0)  # the drain has begun: new datagrams are refused
    before = sample("mfaproxy_packets_dropped_total", reason="shutting_down")
    s.send(datagram("carol", password("carol")), source=QUIET)
    assert await drained == 0
    await s.dispatcher.stop()
    assert sample("mfaproxy_packets_dropped_total", reason="shutting_down") == before + 1
    assert s.socket.codes() == [2] * 5
