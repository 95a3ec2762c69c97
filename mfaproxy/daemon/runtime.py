"""The request runtime: each datagram the UDP listeners (adapters/udp.py) hand over is
decoded once, checked, de-duplicated (RFC 5080),
handed to the engine, and the encoded answer sent back from the socket it came in on.

Anything wrong with a datagram (unknown source, bad length, bad authenticator, an
exception anywhere) ends in a counted drop, never in a crash of the daemon.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pyrad.dictionary import Dictionary

from mfaproxy.auth.engine import Engine, RequestContext
from mfaproxy.config.schema import ClientConfig
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.errors import PeerError, ReplyTooLarge, UpstreamError
from mfaproxy.observability import metrics
from mfaproxy.radius.clients import ClientTable
from mfaproxy.radius.codec import RadiusRequest, decode_request, encode_reply
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
Address = tuple[Any, ...]

# Request ids only tell log lines apart: a random per-process prefix (workers differ)
# and a counter, instead of reading the kernel's random pool for every request (that
# syscall was 6 % of the CPU of a PAP request in the profile).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count()


def next_request_id() -> str:
    """16 hex digits, unique within this process for 2**32 requests."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


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
    """Shared by every listening socket: the intake queue, workers and the reply cache."""

    def __init__(self, runtime: Runtime, dedup: Duplicates, queue_size: int, workers: int):
        self.runtime = runtime
        self.dedup = dedup
        self._queue: asyncio.Queue[tuple[bytes, Address, asyncio.DatagramTransport]] = (
            asyncio.Queue(maxsize=queue_size)
        )
        self._worker_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"radius-worker-{i}")
            for i in range(self._worker_count)
        ]

    def submit(self, data: bytes, addr: Address, transport: asyncio.DatagramTransport) -> None:
        try:
            self._queue.put_nowait((data, addr, transport))
        except asyncio.QueueFull:
            metrics.PACKETS_DROPPED.labels(reason="overload").inc()

    @property
    def idle(self) -> bool:
        return self._busy == 0 and self._queue.empty()

    async def drain(self) -> None:
        """Wait until every accepted datagram has been answered (or dropped)."""
        await self._queue.join()

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            data, addr, transport = await self._queue.get()
            self._busy += 1
            metrics.IN_FLIGHT.inc()
            try:
                await self.process(data, addr, transport)
            except Exception:
                # A bug must cost one request, not the daemon.
                metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
                log.exception("request_failed", source=addr[0])
            finally:
                self._busy -= 1
                metrics.IN_FLIGHT.dec()
                self._queue.task_done()

    async def process(
        self, data: bytes, addr: Address, transport: asyncio.DatagramTransport
    ) -> None:
        started = time.monotonic()
        runtime = self.runtime  # a reload swaps self.runtime; this request keeps its own
        runtime.acquire()
        try:
            await self._process(runtime, data, addr, transport, started)
        finally:
            runtime.release()

    async def _process(
        self,
        runtime: Runtime,
        data: bytes,
        addr: Address,
        transport: asyncio.DatagramTransport,
        started: float,
    ) -> None:
        source_ip, source_port = str(addr[0]), int(addr[1])
        client = runtime.clients.match(source_ip)
        if client is None:
            metrics.PACKETS_DROPPED.labels(reason="unknown_client").inc()
            log.debug("packet_dropped", reason="unknown_client", source=source_ip)
            return
        try:
            request = decode_request(
                data,
                client.secret.get_secret_value().encode(),
                runtime.dictionary,
                client.require_message_authenticator,
                client.limits_proxy_state,
            )
        except PeerError as exc:
            metrics.PACKETS_DROPPED.labels(reason=exc.reason).inc()
            log.info("packet_dropped", reason=exc.reason, client=client.name, source=source_ip)
            return
        code_name = CODE_LABELS.get(request.code, str(request.code))
        key = (source_ip, source_port, request.identifier, request.authenticator)
        try:
            lookup = await self.dedup.begin(key, time.time())
        except UpstreamError:
            # The shared table is down: process the request; the engine's store
            # failmode then decides, and a retransmission may be processed again.
            log.warning("duplicate_table_unavailable")
            lookup = Lookup(Seen.NEW)
        if lookup.seen is Seen.ANSWERED and lookup.reply is not None:
            metrics.DUPLICATES.labels(action="answered_from_cache").inc()
            transport.sendto(lookup.reply, addr)
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
        reply: bytes | None = None
        try:
            ctx = RequestContext(next_request_id(), client, source_ip, source_port)
            answer = await runtime.engine.handle(ctx, request)
            try:
                reply = self._encode(request, answer)
            except ReplyTooLarge as exc:
                metrics.PACKETS_DROPPED.labels(reason=exc.reason).inc()
                log.warning("reply_dropped", reason=exc.reason, request_id=ctx.request_id)
        finally:
            await self._finish(key, reply)
        if reply is not None:
            transport.sendto(reply, addr)
        metrics.REQUEST_LATENCY.labels(code=code_name).observe(time.monotonic() - started)

    async def _finish(self, key: RequestKey, reply: bytes | None) -> None:
        try:
            await self.dedup.finish(key, reply, time.time())
        except UpstreamError:
            log.warning("duplicate_table_unavailable")

    @staticmethod
    def _encode(request: RadiusRequest, answer: Answer) -> bytes:
        code = REPLY_CODES[answer.outcome]
        return encode_reply(
            request, code, list(answer.attributes), answer.reply_message, answer.state
        )
