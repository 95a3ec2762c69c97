"""A closed-loop RADIUS PAP load generator: raw UDP, pre-built signed Access-Requests.

Every request is built before the clock starts (random Request Authenticator, hidden
User-Password, a zeroed Message-Authenticator as the first attribute). At send time only
the Identifier is written and the Message-Authenticator (HMAC-MD5) computed, because the
Identifier is chosen then: the free one on one of several connected source sockets (an
Identifier is 8 bits per source port, RFC 2865 section 3). A fixed window of requests is
kept outstanding: each reply or timeout sends the next request. Replies are matched by
socket and Identifier and accepted only when their Response Authenticator verifies
against the request's authenticator, so a late reply to a timed-out request whose
Identifier was reused is told apart from the reply to the new one.

There are no retransmissions: a request unanswered after `timeout` seconds is counted as
a timeout and its Identifier goes back to the end of the free list.

A login may take several rounds (RFC 2865 section 4.4, Access-Challenge): given a
`respond` callable, each verified Access-Challenge is handed to it with the request it
answers, and the request it returns (the next round, carrying the State) is sent at
once in the same window slot. Latency is then per login, from its first request to its
final answer, and `accepts` counts logins.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCESS_CHALLENGE = 11
USER_NAME = 1
USER_PASSWORD = 2
STATE = 24
MESSAGE_AUTHENTICATOR = 80
HEADER = 20
# Message-Authenticator is the first attribute: its value sits right after its own
# type and length octets.
MA_START = HEADER + 2
MA_END = MA_START + 16
IDENTIFIERS = 256

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """One Access-Request; the Identifier and Message-Authenticator are set by `sign`."""

    packet: bytearray
    authenticator: bytes
    user: str = ""


# Given a verified Access-Challenge and the request it answers: the next round, or None
# (the login then ends there, counted as a bad reply).
Responder = Callable[[Request, bytes], "Request | None"]


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password hiding, RFC 2865 section 5.2."""
    size = max(16, -(-len(password) // 16) * 16)
    if size > 128:
        raise ValueError("User-Password is limited to 128 octets")
    padded = password.ljust(size, b"\0")
    hidden = bytearray()
    previous = authenticator
    for start in range(0, size, 16):
        key = hashlib.md5(secret + previous).digest()
        block = bytes(p ^ k for p, k in zip(padded[start : start + 16], key, strict=True))
        hidden += block
        previous = block
    return bytes(hidden)


def attribute(kind: int, value: bytes) -> bytes:
    if not 0 < len(value) <= 253:
        raise ValueError(f"attribute {kind}: value of {len(value)} octets")
    return bytes((kind, len(value) + 2)) + value


def build_request(user: str, password: str, secret: bytes, extra: bytes = b"") -> Request:
    """`extra`: more encoded attributes (a State, for a later round)."""
    authenticator = os.urandom(16)
    attributes = (
        attribute(MESSAGE_AUTHENTICATOR, bytes(16))
        + attribute(USER_NAME, user.encode())
        + attribute(USER_PASSWORD, hide_password(password.encode(), secret, authenticator))
        + extra
    )
    header = struct.pack("!BBH", ACCESS_REQUEST, 0, HEADER + len(attributes))
    return Request(bytearray(header + authenticator + attributes), authenticator, user)


def reply_attribute(reply: bytes, kind: int) -> bytes | None:
    """The first attribute of type `kind` in a reply (already verified), or None."""
    length = int.from_bytes(reply[2:4], "big")
    position = HEADER
    while position + 2 <= length:
        size = reply[position + 1]
        if size < 2:
            return None
        if reply[position] == kind:
            return reply[position + 2 : position + size]
        position += size
    return None


def build_requests(
    credentials: Sequence[tuple[str, str]], secret: bytes, count: int
) -> list[Request]:
    """`count` requests cycling through `credentials` (already in workload order)."""
    return [build_request(*credentials[i % len(credentials)], secret=secret) for i in range(count)]


def sign(request: Request, identifier: int, secret: bytes) -> bytes:
    packet = request.packet
    packet[1] = identifier
    packet[MA_START:MA_END] = bytes(16)
    packet[MA_START:MA_END] = hmac.digest(secret, packet, "md5")
    return bytes(packet)


def reply_authentic(reply: bytes, request_authenticator: bytes, secret: bytes) -> bool:
    """The Response Authenticator check of RFC 2865 section 3."""
    if len(reply) < HEADER:
        return False
    length = int.from_bytes(reply[2:4], "big")
    if not HEADER <= length <= len(reply):
        return False
    expected = hashlib.md5(
        reply[:4] + request_authenticator + reply[HEADER:length] + secret
    ).digest()
    return hmac.compare_digest(expected, reply[4:HEADER])


@dataclass
class RunResult:
    sent: int = 0
    # Access-Challenges answered with a next round (multi-round logins).
    challenges: int = 0
    accepts: int = 0
    rejects: int = 0
    timeouts: int = 0
    # Verified replies with a code other than Accept/Reject.
    bad_replies: int = 0
    # Replies that match no outstanding request (too late, or failing verification).
    unmatched_replies: int = 0
    socket_errors: int = 0
    # Seconds from send to verified reply, for every answered request.
    latencies: list[float] = field(default_factory=list)
    # From the first send to the last reply or timeout.
    elapsed: float = 0.0
    # CPU seconds this process (the generator) used during the run.
    loadgen_cpu: float = 0.0

    @property
    def accepts_per_second(self) -> float:
        return self.accepts / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.rejects + self.bad_replies + self.socket_errors

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of the latencies, in seconds (0 when none)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
        return ordered[rank - 1]


class _Channel(asyncio.DatagramProtocol):
    """One connected source socket with its own Identifier space."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.DatagramTransport | None = None
        # Identifier -> (request, when its login started).
        self.pending: dict[int, tuple[Request, float]] = {}
        self.free: deque[int] = deque(range(IDENTIFIERS))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.run.on_reply(self, data)

    def error_received(self, exc: Exception) -> None:
        self.run.result.socket_errors += 1


class _Run:
    def __init__(
        self,
        requests: Sequence[Request],
        secret: bytes,
        *,
        seconds: float,
        concurrency: int,
        timeout: float,
        respond: Responder | None = None,
    ) -> None:
        self.respond = respond
        self.requests = requests
        self.secret = secret
        self.seconds = seconds
        self.concurrency = concurrency
        self.timeout = timeout
        self.channels: list[_Channel] = []
        self.result = RunResult()
        self.done = asyncio.Event()
        self.next = 0
        self.turn = 0
        self.in_flight = 0
        self.stopping = False
        self.start = 0.0
        self.deadline = 0.0
        self.last = 0.0

    def begin(self) -> None:
        self.start = self.last = time.perf_counter()
        self.deadline = self.start + self.seconds
        for _ in range(self.concurrency):
            self.send_next()

    def send_next(self) -> None:
        if self.stopping or self.next >= len(self.requests) or time.perf_counter() >= self.deadline:
            self.stopping = True
            if self.in_flight == 0:
                self.done.set()
            return
        request = self.requests[self.next]
        self.next += 1
        self.in_flight += 1
        self._send(request, time.perf_counter())

    def _send(self, request: Request, started: float) -> None:
        channel = self._channel()
        identifier = channel.free.popleft()
        data = sign(request, identifier, self.secret)
        channel.pending[identifier] = (request, started)
        assert channel.transport is not None
        channel.transport.sendto(data)
        self.result.sent += 1

    def _channel(self) -> _Channel:
        # The window is at most 256 per socket, so a free Identifier always exists.
        for _ in range(len(self.channels)):
            channel = self.channels[self.turn]
            self.turn = (self.turn + 1) % len(self.channels)
            if channel.free:
                return channel
        raise RuntimeError("no free RADIUS Identifier: window larger than 256 per socket")

    def on_reply(self, channel: _Channel, data: bytes) -> None:
        now = time.perf_counter()
        entry = channel.pending.get(data[1]) if len(data) >= HEADER else None
        if entry is None or not reply_authentic(data, entry[0].authenticator, self.secret):
            self.result.unmatched_replies += 1
            return
        identifier = data[1]
        del channel.pending[identifier]
        channel.free.append(identifier)
        if data[0] == ACCESS_CHALLENGE and self.respond is not None:
            following = self.respond(entry[0], data)
            if following is not None:
                self.result.challenges += 1
                self._send(following, entry[1])
                return
        self.result.latencies.append(now - entry[1])
        if data[0] == ACCESS_ACCEPT:
            self.result.accepts += 1
        elif data[0] == ACCESS_REJECT:
            self.result.rejects += 1
        else:
            self.result.bad_replies += 1
        self._finished(now)

    def _finished(self, now: float) -> None:
        self.in_flight -= 1
        self.last = now
        self.send_next()

    async def sweep(self) -> None:
        """Expire requests unanswered for `timeout` seconds."""
        while not self.done.is_set():
            await asyncio.sleep(min(0.1, self.timeout / 4))
            now = time.perf_counter()
            cutoff = now - self.timeout
            for channel in self.channels:
                expired = [i for i, (_, sent) in channel.pending.items() if sent < cutoff]
                for identifier in expired:
                    del channel.pending[identifier]
                    channel.free.append(identifier)
                    self.result.timeouts += 1
                    self._finished(now)
            if time.perf_counter() >= self.deadline and self.in_flight == 0:
                self.done.set()


async def run_load(
    address: tuple[str, int],
    secret: bytes,
    requests: Sequence[Request],
    *,
    seconds: float,
    concurrency: int,
    sockets: int,
    timeout: float,
    respond: Responder | None = None,
) -> RunResult:
    """Send `requests` in order, `concurrency` at a time, until all are answered or timed
    out, or `seconds` have passed (then wait for the outstanding ones)."""
    if not 1 <= concurrency <= IDENTIFIERS * sockets:
        raise ValueError(f"concurrency must be 1..{IDENTIFIERS * sockets} with {sockets} sockets")
    loop = asyncio.get_running_loop()
    run = _Run(
        requests, secret, seconds=seconds, concurrency=concurrency, timeout=timeout, respond=respond
    )
    for _ in range(sockets):
        _, channel = await loop.create_datagram_endpoint(
            lambda: _Channel(run), local_addr=("127.0.0.1", 0), remote_addr=address
        )
        run.channels.append(channel)
    sweeper = asyncio.ensure_future(run.sweep())
    cpu_before = time.process_time()
    try:
        run.begin()
        await asyncio.wait_for(run.done.wait(), seconds + timeout + 5)
    finally:
        run.result.loadgen_cpu = time.process_time() - cpu_before
        run.result.elapsed = run.last - run.start
        sweeper.cancel()
        for channel in run.channels:
            if channel.transport is not None:
                channel.transport.close()
    return run.result


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (less generator CPU), else plain asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
