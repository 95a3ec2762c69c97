"""The asyncio RADIUS client against a real FreeRADIUS and against local fakes.

The fakes are scripted UDP servers: they see every datagram and decide, per copy, what
to send back (nothing, a forged reply, a reply from another port...). Tests wait on
replies, never on sleeps; short client timeouts only decide when a retransmission
happens, and no assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest
from pyrad import packet as radpacket

from mfaproxy.adapters.radius_client import RadiusClient, RadiusServer, RequestAttributes
from mfaproxy.errors import UpstreamUnavailable
from mfaproxy.radius.constants import ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT, ACCESS_REQUEST
from tests.support.freeradius import Challenge, FreeRadiusServer, UserSpec, rfc_dictionary
from tests.support.ports import free_udp_port

SECRET = b"fake-secret"
DICTIONARY = rfc_dictionary()
USERS = {
    "alice": UserSpec("alice-pw", reply={"Class": b"vpn-users", "Filter-Id": ["a", "b"]}),
    "carol": UserSpec("carol-pw", reply={"Class": b"otp-ok"}, challenge=Challenge("123456")),
}

# What a fake does with the n-th copy (1-based) of a request: (raw, peer, transport).
Script = Callable[[int, bytes, tuple[str, int], asyncio.DatagramTransport], None]


class FakeRadius(asyncio.DatagramProtocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append(data)
        assert self.transport is not None
        self.script(len(self.received), data, (addr[0], addr[1]), self.transport)


def reply_bytes(
    raw: bytes,
    code: int = ACCESS_ACCEPT,
    *,
    secret: bytes = SECRET,
    sign: bool = True,
    attributes: dict[str, Any] | None = None,
) -> bytes:
    """A reply to `raw` as a server with `secret` would build it."""
    request = radpacket.AuthPacket(packet=raw, secret=secret, dict=DICTIONARY)
    reply = request.CreateReply(message_authenticator=sign)
    reply.code = code
    for name, value in (attributes or {}).items():
        reply[name] = value
    return bytes(reply.ReplyPacket())


@pytest.fixture(scope="module")
def freeradius() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer(USERS, secret="fr-secret") as server:
        yield server


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[[Script], Any]]:
    """Start scripted fakes on loopback; returns (RadiusServer, FakeRadius) pairs."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []

    async def start(script: Script) -> tuple[RadiusServer, FakeRadius]:
        transport, fake = await loop.create_datagram_endpoint(
            lambda: FakeRadius(script), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        port = transport.get_extra_info("sockname")[1]
        return RadiusServer("127.0.0.1", port, SECRET), fake

    yield start
    for transport in transports:
        transport.close()


def silent(n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport) -> None:
    """A server that never answers."""


def client(*servers: RadiusServer, **options: Any) -> RadiusClient:
    # Loopback fakes answer at once; the timeout only bounds how long a failing test hangs.
    options.setdefault("timeout", 2.0)
    return RadiusClient(servers, DICTIONARY, **options)


def fr_server(freeradius: FreeRadiusServer) -> RadiusServer:
    return RadiusServer(freeradius.host, freeradius.port, freeradius.secret.encode())


# --------------------------------------------------------------------------- real server


async def test_accept_with_decoded_attributes(freeradius: FreeRadiusServer) -> None:
    reply = await client(fr_server(freeradius)).access_request(
        {"User-Name": "alice"}, password="alice-pw"
    )
    assert reply.code == ACCESS_ACCEPT and reply.accepted
    assert reply.attributes["Class"] == (b"vpn-users",)
    assert reply.attributes["Filter-Id"] == ("a", "b")
    assert "Message-Authenticator" not in reply.attributes
    assert reply.server.port == freeradius.port and reply.failed_servers == ()


async def test_wrong_password_is_rejected(freeradius: FreeRadiusServer) -> None:
    reply = await client(fr_server(freeradius)).access_request(
        {"User-Name": "alice"}, password="wrong"
    )
    assert reply.code == ACCESS_REJECT and reply.rejected
    assert "Class" not in reply.attributes


async def test_challenge_round_trip_with_state(freeradius: FreeRadiusServer) -> None:
    radius = client(fr_server(freeradius))
    first = await radius.access_request({"User-Name": "carol"}, password="carol-pw")
    assert first.code == ACCESS_CHALLENGE and first.challenged
    assert first.first("Reply-Message") == "Enter your code"
    assert first.state == b"fr-test-state"
    second = await radius.access_request(
        {"User-Name": "carol"}, password="123456", state=first.state
    )
    assert second.accepted
    assert second.attributes["Class"] == (b"otp-ok",)


async def test_wrong_secret_replies_are_ignored(freeradius: FreeRadiusServer) -> None:
    wrong = RadiusServer(freeradius.host, freeradius.port, b"not-the-secret")
    with pytest.raises(UpstreamUnavailable):
        await client(wrong, timeout=0.2, retries=0).access_request(
            {"User-Name": "alice"}, password="alice-pw"
        )


# --------------------------------------------------------------------------- wire format


async def test_request_has_message_authenticator_first_and_given_attributes(
    fakes: Callable[[Script], Any],
) -> None:
    def reject(n: int, raw: bytes, peer: tuple[str, int], tr: asyncio.DatagramTransport) -> None:
        tr.sendto(reply_bytes(raw, ACCESS_REJECT), peer)

    server, fake = await fakes(reject)
    attributes: RequestAttributes = {
        "User-Name": "bob",
        "NAS-Identifier": "mfaproxy",
        "Proxy-State": [b"p1", b"p2"],
    }
    await client(server).access_request(attributes, password="pw", state=b"st")
    raw = fake.received[0]
    assert raw[0] == ACCESS_REQUEST and raw[20] == 80  # RFC 3579 3.2 / BlastRADIUS
    request = radpacket.AuthPacket(packet=raw, secret=SECRET, dict=DICTIONARY)
    assert request["NAS-Identifier"] == ["mfaproxy"]
    assert request["Proxy-State"] == [b"p1", b"p2"]
    assert request["State"] == [b"st"]
    assert request.PwDecrypt(request["User-Password"][0]) == "pw"
    assert request.verify_message_authenticator()


async def test_retransmits_the_same_packet_until_answered(
    fakes: Callable[[Script], Any],
) -> None:
    def answer_second(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
        if n >= 2:
            tr.sendto(reply_bytes(raw), peer)

    server, fake = await fakes(answer_second)
    reply = await client(server, timeout=0.2, retries=5).access_request(
        {"User-Name": "bob"}, password="pw"
    )
    assert reply.accepted
    assert len(fake.received) >= 2
    # RFC 5080 2.2.1: same Identifier and Request Authenticator, so byte for byte equal.
    assert len(set(fake.received)) == 1


async def test_fails_over_after_retries(fakes: Callable[[Script], Any]) -> None:
    def accept(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
        tr.sendto(reply_bytes(raw), peer)

    dead, dead_fake = await fakes(silent)
    live, live_fake = await fakes(accept)
    reply = await client(dead, live, timeout=0.1, retries=2).access_request(
        {"User-Name": "bob"}, password="pw"
    )
    assert reply.accepted and reply.server == live and reply.failed_servers == (dead,)
    assert len(dead_fake.received) == 3 and len(set(dead_fake.received)) == 1
    # A new server gets a new packet (its own authenticator and password hiding).
    assert live_fake.received[0][4:20] != dead_fake.received[0][4:20]


async def test_all_servers_silent_raises(fakes: Callable[[Script], Any]) -> None:
    first, first_fake = await fakes(silent)
    closed = RadiusServer("127.0.0.1", free_udp_port(), SECRET)
    with pytest.raises(UpstreamUnavailable):
        await client(first, closed, timeout=0.1, retries=1).access_request(
            {"User-Name": "bob"}, password="pw"
        )
    assert len(first_fake.received) == 2


# --------------------------------------------------------------------------- bad replies


async def test_forged_reply_is_ignored(fakes: Callable[[Script], Any]) -> None:
    """An Accept signed with the wrong secret arrives first; the real Reject wins."""

    def forge_then_reject(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
        tr.sendto(reply_bytes(raw, ACCESS_ACCEPT, secret=b"attacker"), peer)
        tr.sendto(reply_bytes(raw, ACCESS_REJECT), peer)

    server, _ = await fakes(forge_then_reject)
    reply = await client(server).access_request({"User-Name": "bob"}, password="pw")
    assert reply.code == ACCESS_REJECT


async def test_malformed_and_mismatched_replies_are_ignored(
    fakes: Callable[[Script], Any],
) -> None:
    def junk_then_reject(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
        tr.sendto(b"\x02\x00\x00", peer)  # shorter than a header
        other_id = bytes([raw[0], (raw[1] + 1) % 256]) + raw[2:]
        tr.sendto(reply_bytes(other_id, ACCESS_ACCEPT), peer)  # another Identifier
        tr.sendto(reply_bytes(raw, ACCESS_REJECT), peer)

    server, _ = await fakes(junk_then_reject)
    reply = await client(server).access_request({"User-Name": "bob"}, password="pw")
    assert reply.code == ACCESS_REJECT


async def test_reply_from_another_port_is_ignored(fakes: Callable[[Script], Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))

        def spoof_then_reject(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
            other.sendto(reply_bytes(raw, ACCESS_ACCEPT), peer)
            tr.sendto(reply_bytes(raw, ACCESS_REJECT), peer)

        server, _ = await fakes(spoof_then_reject)
        reply = await client(server).access_request({"User-Name": "bob"}, password="pw")
    assert reply.code == ACCESS_REJECT


@pytest.mark.parametrize(("required", "expected"), [(True, ACCESS_REJECT), (False, ACCESS_ACCEPT)])
async def test_reply_without_message_authenticator(
    fakes: Callable[[Script], Any], required: bool, expected: int
) -> None:
    """An unsigned Accept arrives first: refused when required (BlastRADIUS)."""

    def unsigned_then_signed(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
        tr.sendto(reply_bytes(raw, ACCESS_ACCEPT, sign=False), peer)
        tr.sendto(reply_bytes(raw, ACCESS_REJECT, sign=True), peer)

    server, _ = await fakes(unsigned_then_signed)
    radius = client(server, require_message_authenticator=required)
    reply = await radius.access_request({"User-Name": "bob"}, password="pw")
    assert reply.code == expected


async def test_unsigned_only_replies_make_the_server_unavailable(
    fakes: Callable[[Script], Any],
) -> None:
    def unsigned(n: int, raw: bytes, peer: tuple[str, int], tr: Any) -> None:
        tr.sendto(reply_bytes(raw, ACCESS_ACCEPT, sign=False), peer)

    server, fake = await fakes(unsigned)
    with pytest.raises(UpstreamUnavailable):
        await client(server, timeout=0.1, retries=1).access_request(
            {"User-Name": "bob"}, password="pw"
        )
    assert len(fake.received) == 2


# --------------------------------------------------------------------------- bad input


async def test_refuses_what_cannot_be_encoded() -> None:
    radius = client(RadiusServer("127.0.0.1", free_udp_port(), SECRET))
    with pytest.raises(ValueError, match="128 octets"):
        await radius.access_request({"User-Name": "bob"}, password="x" * 129)
    with pytest.raises(ValueError, match="dictionary"):
        await radius.access_request({"No-Such-Attribute": "x"}, password="pw")


def test_server_label_brackets_ipv6() -> None:
    assert RadiusServer("::1", 1812, b"s").label == "[::1]:1812"
    assert RadiusServer("127.0.0.1", 1812, b"s").label == "127.0.0.1:1812"
    assert "secret-value" not in repr(RadiusServer("::1", 1812, b"secret-value"))


async def test_refuses_values_that_do_not_fit_their_type() -> None:
    radius = client(RadiusServer("127.0.0.1", free_udp_port(), SECRET))
    with pytest.raises(ValueError):
        await radius.access_request({"User-Name": "bob", "NAS-Port": "not-a-number"})
    with pytest.raises(ValueError):
        await radius.access_request({"User-Name": "x" * 300})
