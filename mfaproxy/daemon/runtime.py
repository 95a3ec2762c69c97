"""The request runtime: each datagram the UDP listeners (adapters/udp.py) hand over is
queued (bounded, fair: mfaproxy/admission), decoded once, checked, de-duplicated (RFC
5080) and checked for replay, handed to the engine, and the encoded answer sent back
from the socket it came in on.

Admission: `submit` stamps each datagram with its arrival time and queues it in a
`FairQueue` (answers to challenges first, then the sources in turn; when full the
source with most waiting loses its oldest). A worker that takes a first round which
waited longer than `server.max_queue_wait` sheds it unprocessed. The request then runs
under a `Ticket` (admission/ticket.py) that the bounded pools below consult.

Access-Rejects leave after `server.reject_delay` (plus jitter) on a loop timer: the
worker is free at once, and the duplicate table keeps the request in flight until the
reply is sent, so retransmissions meanwhile are ignored, not processed again.

Anything wrong with a datagram (unknown source, bad length, bad authenticator, an
exception anywhere) ends in a counted drop, never in a crash of the daemon. Another
listener (accounting, say) runs its own `Dispatcher` with its own `Runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from pyrad.dictionary import Dictionary

from mfaproxy.admission.fair import FairQueue
from mfaproxy.admission.ticket import CURRENT, Ticket
from mfaproxy.auth.engine import Engine, RequestContext
from mfaproxy.config.schema import ClientConfig
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.daemon.droplog import DropLog
from mfaproxy.daemon.limits import Address, Datagram, Limits, next_request_id
from mfaproxy.errors import PeerError, ReplyTooLarge, Shed, UpstreamError
from mfaproxy.observability import metrics
from mfaproxy.radius.clients import ClientTable
from mfaproxy.radius.codec import RadiusRequest, carries_state, decode_request, encode_reply
from mfaproxy.radius.constants import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    CODE_LABELS,
    CODE_TITLES,
)
from mfaproxy.radius.duplicates import Lookup, RequestKey, Seen
from mfaproxy.store.duplicates import Duplicates

log = structlog.get_logger(__name__)

REPLY_CODES = {
    Outcome.ACCEPT: ACCESS_ACCEPT,
    Outcome.REJECT: ACCESS_REJECT,
    Outcome.CHALLENGE: ACCESS_CHALLENGE,
}


@dataclass(eq=False)
class Runtime:
    """Everything a request needs that a configuration reload may replace at once.

    `active` counts requests running on it, so a retired runtime's backends are closed
    only after the last of them finishes."""

    clients: ClientTable[ClientConfig]
    dictionary: Dictionary
    engine: Engine
    # Called once the runtime is retired and idle (e.g. closing GeoIP databases).
    closers: list[Callable[[], None]] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    active: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        await self.engine.close()
        for closer in self.closers:
            closer()

    def acquire(self) -> None:
        self.active += 1
        self._idle.clear()

    def release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def idle(self) -> None:
        if self.active:
            await self._idle.wait()


class Dispatcher:
    """Shared by every listening socket: the intake queue, workers and delayed replies."""

    def __init__(
        self,
        runtime: Runtime,
        dedup: Duplicates,
        queue_size: int,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.runtime = runtime
        self.dedup = dedup
        # `clock` times queue waits (monotonic); `wall` dates the duplicate table,
        # which a cluster shares (README "Deployment topologies": clocks in sync).
        self.clock = clock
        self.wall = wall
        self.drops = DropLog(clock=clock)
        self._intake: FairQueue[Datagram] = FairQueue(queue_size)
        self._queued = asyncio.Semaphore(0)  # its value is len(self._intake)
        self._worker_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self._delayed: dict[int, tuple[asyncio.TimerHandle, Callable[[], None]]] = {}
        self._tokens = itertools.count()
        self._finishing: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # nothing queued, in flight or delayed
        self._idle.set()
        self._quiet = asyncio.Event()  # nothing queued or in flight (delays may run)
        self._quiet.set()
        self.stopping = False

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"radius-worker-{i}")
            for i in range(self._worker_count)
        ]

    # ------------------------------------------------------------------ intake

    def submit(self, data: bytes, addr: Address, transport: asyncio.DatagramTransport) -> None:
        """Queue one datagram (from the listener's callback: never blocks)."""
        if self.stopping:
            metrics.PACKETS_DROPPED.labels(reason="shutting_down").inc()
            return
        item = Datagram(data, addr, transport, self.clock(), carries_state(data))
        shed = self._intake.push(str(addr[0]), item, second_round=item.second_round)
        if shed is None:
            self._queued.release()
        else:
            self._shed("intake_full", shed)
        self._changed()

    def _shed(self, reason: str, item: Datagram) -> None:
        metrics.REQUESTS_SHED.labels(reason=reason).inc()
        self.drops.dropped(reason, str(item.addr[0]))

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    @property
    def delayed(self) -> int:
        """Replies computed and waiting for their reject delay."""
        return len(self._delayed)

    async def settled(self) -> None:
        """Wait until every datagram taken so far has been processed (replies held by
        the reject delay may still be waiting)."""
        await self._quiet.wait()

    def _changed(self) -> None:
        metrics.INTAKE_DEPTH.set(len(self._intake))
        metrics.REPLIES_DELAYED.set(len(self._delayed))
        quiet = self._busy == 0 and not len(self._intake)
        for event, done in ((self._quiet, quiet), (self._idle, quiet and not self._delayed)):
            if done:
                event.set()
            else:
                event.clear()

    # ------------------------------------------------------------------ drain

    async def drain(self, grace: float) -> int:
        """Stop taking datagrams; answer what was taken (queued, in flight, delayed)
        within `grace` seconds. Returns how many requests got no answer."""
        self.stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        for handle, deliver in list(self._delayed.values()):
            handle.cancel()
            deliver()  # the delay is over early: an answer beats none
        unanswered = self._busy + len(self._intake)
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=max(grace, 1.0))
        return unanswered

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    # ------------------------------------------------------------------ workers

    async def _work(self) -> None:
        while True:
            await self._queued.acquire()
            item = self._intake.pop()
            if item is None:  # cannot happen while the semaphore mirrors the queue
                continue
            self._busy += 1
            metrics.IN_FLIGHT.inc()
            try:
                await self.process(item)
            except Exception:
                # A bug must cost one request, not the daemon.
                metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
                log.exception("request_failed", source=item.addr[0])
            finally:
                self._busy -= 1
                metrics.IN_FLIGHT.dec()
                self._changed()

    async def process(self, item: Datagram) -> None:
        runtime = self.runtime  # a reload swaps self.runtime; this request keeps its own
        limits = runtime.limits
        waited = self.clock() - item.arrival
        metrics.QUEUE_WAIT.labels(round=item.round).observe(waited)
        limit = limits.max_queue_wait_second_round if item.second_round else limits.max_queue_wait
        if waited > limit:
            self._shed("intake_wait", item)  # its NAS has retransmitted or given up
            return
        ticket = Ticket(str(item.addr[0]), item.arrival, item.arrival + limit, item.second_round)
        token = CURRENT.set(ticket)
        runtime.acquire()
        try:
            await self._process(runtime, item)
        finally:
            runtime.release()
            CURRENT.reset(token)

    async def _process(self, runtime: Runtime, item: Datagram) -> None:
        started = time.monotonic()
        addr, transport = item.addr, item.transport
        source_ip, source_port = str(addr[0]), int(addr[1])
        client = runtime.clients.match(source_ip)
        if client is None:
            metrics.PACKETS_DROPPED.labels(reason="unknown_client").inc()
            self.drops.dropped("unknown_client", source_ip)
            return
        try:
            request = decode_request(
                item.data,
                client.secret.get_secret_value().encode(),
                runtime.dictionary,
                client.require_message_authenticator,
                client.limits_proxy_state,
            )
        except PeerError as exc:
            metrics.PACKETS_DROPPED.labels(reason=exc.reason).inc()
            self.drops.dropped(exc.reason, source_ip, client=client.name)
            return
        code_name = CODE_LABELS.get(request.code, str(request.code))
        key = (source_ip, source_port, request.identifier, request.authenticator)
        lookup = await self._begin(key, client.name)
        if lookup.seen is Seen.ANSWERED and lookup.reply is not None:
            metrics.DUPLICATES.labels(action="answered_from_cache").inc()
            transport.sendto(lookup.reply, addr)
            return
        if lookup.seen is Seen.REPLAYED:
            metrics.PACKETS_DROPPED.labels(reason="replayed").inc()
            self.drops.dropped("replayed", source_ip, client=client.name)
            return
        if lookup.seen is not Seen.NEW:
            metrics.DUPLICATES.labels(action="ignored_in_flight").inc()
            return
        metrics.REQUESTS.labels(client=client.name, code=code_name).inc()
        log.debug(
            "request_received",
            client=client.name,
            source=source_ip,
            # Not `code`: the redactor blanks that key (it would hold an OTP code).
            packet_type=CODE_TITLES.get(request.code, str(request.code)),
            identifier=request.identifier,
            user=request.user_name,
            has_state=request.state is not None,
            proxy_states=len(request.proxy_states),
        )
        ctx = RequestContext(next_request_id(), client, source_ip, source_port)
        try:
            answer = await runtime.engine.handle(ctx, request)
        except Shed as exc:
            # Shed before any answer: the NAS's retransmission will be processed anew.
            metrics.REQUESTS_SHED.labels(reason=exc.reason).inc()
            self.drops.dropped(exc.reason, source_ip, client=client.name)
            await self._forget(key, client.name)
            return
        except BaseException:
            await self._finish(key, None)
            raise
        reply = self._reply(ctx, request, answer)
        if reply is None:
            await self._finish(key, None)
            return
        delay = runtime.limits.reject_after() if answer.outcome is Outcome.REJECT else 0.0
        if delay > 0:
            self._send_later(delay, key, reply, addr, transport)
        else:
            transport.sendto(reply, addr)
            await self._finish(key, reply)
        metrics.REQUEST_LATENCY.labels(code=code_name).observe(time.monotonic() - started)

    def _reply(self, ctx: RequestContext, request: RadiusRequest, answer: Answer) -> bytes | None:
        try:
            return encode_reply(
                request,
                REPLY_CODES[answer.outcome],
                list(answer.attributes),
                answer.reply_message,
                answer.state,
            )
        except ReplyTooLarge as exc:
            metrics.PACKETS_DROPPED.labels(reason=exc.reason).inc()
            log.warning("reply_dropped", reason=exc.reason, request_id=ctx.request_id)
            return None

    # ------------------------------------------------------------------ delayed replies

    def _send_later(
        self,
        delay: float,
        key: RequestKey,
        reply: bytes,
        addr: Address,
        transport: asyncio.DatagramTransport,
    ) -> None:
        """Send `reply` in `delay` seconds from a loop timer; until then the request
        stays in flight in the duplicate table, so its retransmissions are ignored."""
        loop = asyncio.get_running_loop()
        token = next(self._tokens)

        def deliver() -> None:
            if self._delayed.pop(token, None) is None:
                return
            if not transport.is_closing():
                transport.sendto(reply, addr)
            task = loop.create_task(self._finish(key, reply))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
            self._changed()

        self._delayed[token] = (loop.call_later(delay, deliver), deliver)
        self._changed()

    # ------------------------------------------------------------------ duplicates

    async def _begin(self, key: RequestKey, scope: str) -> Lookup:
        try:
            return await self.dedup.begin(key, self.wall(), scope)
        except UpstreamError:
            # The shared table is down: process the request; the engine's store
            # failmode then decides, and a retransmission may be processed again.
            log.warning("duplicate_table_unavailable")
            return Lookup(Seen.NEW)

    async def _finish(self, key: RequestKey, reply: bytes | None) -> None:
        try:
            await self.dedup.finish(key, reply, self.wall())
        except UpstreamError:
            log.warning("duplicate_table_unavailable")

    async def _forget(self, key: RequestKey, scope: str) -> None:
        try:
            await self.dedup.forget(key, scope)
        except UpstreamError:
            log.warning("duplicate_table_unavailable")
