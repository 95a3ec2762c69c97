"""A thread pool with a bounded, fair queue in front, for blocking calls (password
hashes, LDAP, the user store).

`concurrent.futures.ThreadPoolExecutor` queues without limit, so under overload work
piles up in it that no NAS is still waiting for. Here at most `threads` calls are ever
handed to the executor (its own queue stays empty) and at most `queue` wait, in a
`FairQueue`: answers to challenges first, then the sources in turn. A call that finds
the queue full sheds the oldest first round of the source with most waiting; with
`shed_on_deadline`, a first round whose ticket has expired is shed instead of run. A
shed call raises `Shed` with the reason `<name>_full` or `<name>_wait`. A thread slot is
given back when the thread finishes (not when its caller stops waiting), so a cancelled
call never lets more than `threads` run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from mfaproxy.admission.fair import FairQueue
from mfaproxy.admission.ticket import Ticket, current
from mfaproxy.errors import Shed
from mfaproxy.observability import metrics

T = TypeVar("T")


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[None]
    ticket: Ticket | None


class PoolClosed(RuntimeError):
    """The pool was closed (its runtime retired); no new call starts."""


class BoundedPool:
    def __init__(self, name: str, threads: int, queue: int, *, shed_on_deadline: bool = True):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.name = name
        self.threads = threads
        self.shed_on_deadline = shed_on_deadline
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._waiting: FairQueue[_Waiter] = FairQueue(queue)
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on a pool thread, once one is free for this request."""
        loop = asyncio.get_running_loop()
        await self._acquire(loop)
        try:
            future: Future[T] = self._executor.submit(call, *args)
        except RuntimeError as exc:  # shut down between the two lines
            self._release(loop)
            raise PoolClosed(self.name) from exc
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, loop))
        return await asyncio.wrap_future(future)

    async def close(self, wait: bool = False) -> None:
        self._closed = True
        while (waiter := self._waiting.pop()) is not None:
            if not waiter.future.done():
                waiter.future.set_exception(PoolClosed(self.name))
        if wait:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        else:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._gauges()

    # ------------------------------------------------------------------ slots

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            raise PoolClosed(self.name)
        if self._busy < self.threads and not len(self._waiting):
            self._busy += 1
            self._gauges()
            return
        ticket = current()
        if self.shed_on_deadline and ticket is not None and ticket.expired(loop.time()):
            raise Shed(f"{self.name}_wait")
        waiter = _Waiter(loop.create_future(), ticket)
        source = ticket.source if ticket is not None else ""
        second_round = ticket is None or ticket.second_round
        shed = self._waiting.push(source, waiter, second_round=second_round)
        if shed is not None and not shed.future.done():
            shed.future.set_exception(Shed(f"{self.name}_full"))
        self._gauges()
        try:
            await waiter.future  # resolved by _release, which hands its slot over
        except asyncio.CancelledError:
            handed = waiter.future.done() and not waiter.future.cancelled()
            if handed and waiter.future.exception() is None:
                self._release(loop)  # the slot came to us just as we were cancelled
            raise

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """A thread is free: give it to the next waiter still worth running."""
        now = loop.time()
        while (waiter := self._waiting.pop()) is not None:
            if waiter.future.done():
                continue  # its caller was cancelled
            if self.shed_on_deadline and waiter.ticket is not None and waiter.ticket.expired(now):
                waiter.future.set_exception(Shed(f"{self.name}_wait"))
                continue
            waiter.future.set_result(None)  # the slot passes on; busy is unchanged
            self._gauges()
            return
        self._busy -= 1
        self._gauges()

    def _gauges(self) -> None:
        metrics.POOL_BUSY.labels(pool=self.name).set(self._busy)
        metrics.POOL_WAITING.labels(pool=self.name).set(len(self._waiting))
