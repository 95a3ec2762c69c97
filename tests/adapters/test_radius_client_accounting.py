"""Accounting-Request exchanges of the asyncio RADIUS client: a real FreeRADIUS
accounting server (its detail file shows what arrived), and scripted fakes that stay
silent or answer wrongly. Tests wait on replies, never on sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import pytest

from mfaproxy.adapters.radius_client import RadiusClient, RadiusServer
from mfaproxy.errors import UpstreamUnavailable
from mfaproxy.radius.accounting import Attributes
from mfaproxy.radius.constants import ACCOUNTING_RESPONSE
from tests.support.freeradius import FreeRadiusServer

SECRET = b"fake-secret"
RECORD: Attributes = (
    (1, b"alice"),
    (40, struct.pack("!I", 1)),  # Acct-Status-Type = Start
    (44, b"session-1"),
    (33, b"nas-proxy-state"),
)

# What a fake does with the n-th copy (1-based) of a request.
Script = Callable[[int, bytes, tuple[str, int], asyncio.DatagramTransport], None]


class Fake(asyncio.DatagramProtocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append(data)
        assert self.transport is not None
        self.script(len(self.received), data, (addr[0], addr[1]), self.transport)


def response(
    raw: bytes, *, secret: bytes = SECRET, code: int = 5, ident: int | None = None
) -> bytes:
    """An Accounting-Response to `raw` as a server with `secret` builds it (RFC 2866)."""
    header = bytes([code, raw[1] if ident is None else ident]) + struct.pack("!H", 20)
    return header + hashlib.md5(header + raw[4:20] + secret).digest()


StartFake = Callable[[Script], Awaitable[tuple[RadiusServer, Fake]]]


@pytest.fixture
async def fakes() -> AsyncIterator[StartFake]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []

    async def start(script: Script) -> tuple[RadiusServer, Fake]:
        transport, fake = await loop.create_datagram_endpoint(
            lambda: Fake(script), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        return RadiusServer("127.0.0.1", transport.get_extra_info("sockname")[1], SECRET), fake

    yield start
    for transport in transports:
        transport.close()


def silent(n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport) -> None:
    """Never answers."""


def client(*servers: RadiusServer, **options: Any) -> RadiusClient:
    options.setdefault("timeout", 2.0)
    return RadiusClient(servers, None, **options)


@pytest.fixture(scope="module")
def freeradius() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer({}, secret="fr-acct", accounting=True) as server:
        yield server


def fr_server(server: FreeRadiusServer) -> RadiusServer:
    return RadiusServer(server.host, server.acct_port, server.secret.encode())


async def test_freeradius_acknowledges_and_records_the_attributes(
    freeradius: FreeRadiusServer,
) -> None:
    reply = await client(fr_server(freeradius)).accounting_request(RECORD)
    assert reply.code == ACCOUNTING_RESPONSE and reply.failed_servers == ()
    record = freeradius.detail_records()[-1]
    assert record["User-Name"] == "alice"
    assert record["Acct-Status-Type"] == "Start"
    assert record["Acct-Session-Id"] == "session-1"


async def test_failover_to_the_next_server_when_the_first_is_silent(
    fakes: StartFake, freeradius: FreeRadiusServer
) -> None:
    dead, fake = await fakes(silent)
    before = len(freeradius.detail_records())
    reply = await client(dead, fr_server(freeradius), timeout=0.2, retries=1).accounting_request(
        RECORD
    )
    assert reply.server == fr_server(freeradius) and reply.failed_servers == (dead,)
    assert len(fake.received) == 2 and fake.received[0] == fake.received[1]  # RFC 5080 2.2.1
    assert len(freeradius.detail_records()) == before + 1


async def test_a_retransmission_is_the_same_datagram(fakes: StartFake) -> None:
    def second_copy(
        n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport
    ) -> None:
        if n == 2:
            tr.sendto(response(raw), peer)

    server, fake = await fakes(second_copy)
    await client(server, timeout=0.2, retries=2).accounting_request(RECORD)
    assert len(fake.received) == 2 and fake.received[0] == fake.received[1]


async def test_wrong_answers_do_not_acknowledge(fakes: StartFake) -> None:
    """A forged or mismatched answer is ignored; only the valid one ends the exchange."""

    def wrong_then_right(
        n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport
    ) -> None:
        tr.sendto(response(raw, secret=b"other"), peer)  # wrong secret
        tr.sendto(response(raw, ident=(raw[1] + 1) % 256), peer)  # another Identifier
        tr.sendto(response(raw, code=2), peer)  # an Access-Accept
        tr.sendto(b"\x05", peer)  # garbage
        tr.sendto(response(raw), peer)

    server, _ = await fakes(wrong_then_right)
    reply = await client(server).accounting_request(RECORD)
    assert reply.code == ACCOUNTING_RESPONSE


async def test_only_wrong_answers_mean_unavailable(fakes: StartFake) -> None:
    def forged(n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport) -> None:
        tr.sendto(response(raw, secret=b"other"), peer)

    server, fake = await fakes(forged)
    with pytest.raises(UpstreamUnavailable):
        await client(server, timeout=0.2, retries=1).accounting_request(RECORD)
    assert len(fake.received) == 2


async def test_each_server_gets_a_packet_under_its_own_secret(fakes: StartFake) -> None:
    first, first_fake = await fakes(silent)
    seen: list[bytes] = []

    def check(n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport) -> None:
        seen.append(raw)
        tr.sendto(response(raw, secret=b"second-secret"), peer)

    second, _ = await fakes(check)
    second = RadiusServer(second.host, second.port, b"second-secret")
    await client(first, second, timeout=0.2, retries=0).accounting_request(RECORD)
    body = seen[0][20:]
    expected = hashlib.md5(seen[0][:4] + bytes(16) + body + b"second-secret").digest()
    assert seen[0][4:20] == expected  # RFC 2866 section 3, under the second server's secret
    assert first_fake.received[0][4:20] != seen[0][4:20]
