"""NAS that behave like NAS for the overload benchmark: each login is an Access-Request
retransmitted unchanged after `timeout` seconds, `retries` times, then given up (what a
VPN gateway or radclient does), from sockets bound to one source address. Replies are
matched by socket and Identifier and kept only when their Response Authenticator
verifies. Every datagram sent is counted, retransmissions included."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from bench.loadgen import IDENTIFIERS, build_request, reply_authentic, sign


@dataclass
class Login:
    started: float
    answered: float | None = None  # loop time of the verified reply
    code: int | None = None
    tries: int = 0  # datagrams sent for it

    @property
    def latency(self) -> float | None:
        return None if self.answered is None else self.answered - self.started


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.transport: asyncio.DatagramTransport | None = None
        self.free = list(range(IDENTIFIERS))
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 20 or data[1] not in self.waiting:
            return
        authenticator, future = self.waiting[data[1]]
        if not future.done() and reply_authentic(data, authenticator, self.secret):
            future.set_result(data)


class Nas:
    """Sockets bound to `source`, sending to `server`; a new socket when Identifiers
    run out (an Identifier is 8 bits per source port, RFC 2865 section 3)."""

    def __init__(
        self, source: str, server: tuple[str, int], secret: bytes, timeout: float, retries: int
    ):
        self.source = source
        self.server = server
        self.secret = secret
        self.timeout = timeout
        self.retries = retries
        self.sockets: list[_Socket] = []
        self.sent = 0
        self.logins: list[Login] = []

    async def _socket(self) -> _Socket:
        for sock in self.sockets:
            if sock.free:
                return sock
        loop = asyncio.get_running_loop()
        _, sock = await loop.create_datagram_endpoint(
            lambda: _Socket(self.secret), local_addr=(self.source, 0), remote_addr=self.server
        )
        self.sockets.append(sock)
        return sock

    async def login(self, user: str, password: str) -> Login:
        loop = asyncio.get_running_loop()
        record = Login(loop.time())
        self.logins.append(record)
        sock = await self._socket()
        identifier = sock.free.pop(0)
        request = build_request(user, password, self.secret)
        data = sign(request, identifier, self.secret)
        future: asyncio.Future[bytes] = loop.create_future()
        sock.waiting[identifier] = (request.authenticator, future)
        try:
            for _ in range(1 + self.retries):
                assert sock.transport is not None
                sock.transport.sendto(data)
                self.sent += 1
                record.tries += 1
                try:
                    reply = await asyncio.wait_for(asyncio.shield(future), self.timeout)
                except TimeoutError:
                    continue
                record.answered, record.code = loop.time(), reply[0]
                break
        finally:
            del sock.waiting[identifier]
            sock.free.append(identifier)  # reused last: late replies do not verify
        return record

    def close(self) -> None:
        for sock in self.sockets:
            if sock.transport is not None:
                sock.transport.close()
