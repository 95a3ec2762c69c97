"""The bounded pool: never more than `threads` calls handed to threads, a bounded fair
queue in front, first rounds past their deadline shed without running."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mfaproxy.admission.pool import BoundedPool, PoolClosed
from mfaproxy.admission.ticket import CURRENT, Ticket
from mfaproxy.errors import Shed


class Gate:
    """A blocking call that runs only when the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.ran: list[str] = []
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def call(self, name: str) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.open.wait(30)
        with self._lock:
            self.running -= 1
            self.ran.append(name)
        return name


def ticket(source: str, *, expired: bool = False, second_round: bool = False) -> Ticket:
    now = time.monotonic()
    deadline = now - 1 if expired else now + 3600
    return Ticket(source, now, deadline, second_round)


async def call_as(
    pool: BoundedPool, work: Callable[[str], str], name: str, owner: Ticket | None
) -> str:
    CURRENT.set(owner)  # each task has its own context
    return await pool.run(work, name)


def start(pool: BoundedPool, gate: Gate, name: str, owner: Ticket | None) -> asyncio.Task[str]:
    return asyncio.create_task(call_as(pool, gate.call, name, owner))


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until the pool has taken in what the test started."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def shed_reason(task: asyncio.Task[Any]) -> str | None:
    exc = task.exception()
    return exc.reason if isinstance(exc, Shed) else None


async def test_never_more_calls_on_threads_than_threads() -> None:
    pool = BoundedPool("test", threads=2, queue=100)
    gate = Gate()
    tasks = [start(pool, gate, f"c{i}", ticket(f"s{i % 5}")) for i in range(40)]
    await until(lambda: pool.waiting == 38)
    assert pool.busy == 2
    gate.open.set()
    assert sorted(await asyncio.gather(*tasks)) == sorted(f"c{i}" for i in range(40))
    assert gate.most == 2
    assert pool.busy == 0 and pool.waiting == 0
    await pool.close()


async def test_full_queue_sheds_the_flooding_source_not_the_quiet_one() -> None:
    pool = BoundedPool("test", threads=1, queue=3)
    gate = Gate()
    running = start(pool, gate, "running", ticket("flood"))
    await until(lambda: pool.busy == 1)
    flood = [start(pool, gate, f"f{i}", ticket("flood")) for i in range(3)]
    await until(lambda: pool.waiting == 3)
    quiet = start(pool, gate, "quiet", ticket("nas"))
    await until(flood[0].done)
    assert shed_reason(flood[0]) == "test_full"
    gate.open.set()
    assert await quiet == "quiet"
    assert await running == "running"
    assert [await t for t in flood[1:]] == ["f1", "f2"]
    assert "f0" not in gate.ran  # shed, never run
    await pool.close()


async def test_expired_first_rounds_are_shed_without_running_answers_are_not() -> None:
    pool = BoundedPool("test", threads=1, queue=10)
    gate = Gate()
    running = start(pool, gate, "running", ticket("a"))
    await until(lambda: pool.busy == 1)
    late = start(pool, gate, "late", ticket("a", expired=True))
    answer = start(pool, gate, "answer", ticket("b", expired=True, second_round=True))
    await until(lambda: pool.waiting == 2 or late.done())
    gate.open.set()
    assert await answer == "answer"  # an answer to a challenge is never shed for its age
    with pytest.raises(Shed) as shed:
        await late
    assert shed.value.reason == "test_wait"
    await running
    assert "late" not in gate.ran
    await pool.close()


async def test_answers_to_challenges_get_the_next_free_thread() -> None:
    pool = BoundedPool("test", threads=1, queue=10)
    gate = Gate()
    running = start(pool, gate, "running", ticket("a"))
    await until(lambda: pool.busy == 1)
    firsts = [start(pool, gate, f"first{i}", ticket("a")) for i in range(3)]
    await until(lambda: pool.waiting == 3)
    answer = start(pool, gate, "answer", ticket("b", second_round=True))
    await until(lambda: pool.waiting == 4)
    gate.open.set()
    await asyncio.gather(running, answer, *firsts)
    assert gate.ran[:2] == ["running", "answer"]


async def test_a_cancelled_caller_gives_its_thread_back_only_when_the_thread_ends() -> None:
    pool = BoundedPool("test", threads=1, queue=10)
    gate = Gate()
    running = start(pool, gate, "running", ticket("a"))
    await until(lambda: gate.running == 1)
    waiting = start(pool, gate, "next", ticket("b"))
    await until(lambda: pool.waiting == 1)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert pool.busy == 1 and gate.running == 1  # the thread still runs its call
    waiting_cancelled = start(pool, gate, "gone", ticket("c"))
    await until(lambda: pool.waiting == 2)
    waiting_cancelled.cancel()
    await asyncio.gather(waiting_cancelled, return_exceptions=True)
    gate.open.set()
    assert await waiting == "next"
    assert gate.most == 1
    assert "gone" not in gate.ran
    await until(lambda: pool.busy == 0)
    await pool.close()


async def test_a_closed_pool_refuses_and_releases_its_waiters() -> None:
    pool = BoundedPool("test", threads=1, queue=10)
    gate = Gate()
    running = start(pool, gate, "running", None)
    await until(lambda: pool.busy == 1)
    waiting = start(pool, gate, "waiting", None)
    await until(lambda: pool.waiting == 1)
    await pool.close()
    with pytest.raises(PoolClosed):
        await waiting
    with pytest.raises(PoolClosed):
        await call_as(pool, gate.call, "late", None)
    gate.open.set()
    await running
