"""A scriptable NAS for tests that need byte-level control: exact retransmissions,
hostile packets. Builds requests with pyrad and talks plain UDP sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pyrad import packet as pyrad_packet

from mfaproxy.radius.codec import load_dictionary

DICTIONARY = load_dictionary()


def access_request(
    secret: str, user: str, password: str, sign: bool = True, **attributes: Any
) -> pyrad_packet.AuthPacket:
    pkt = pyrad_packet.AuthPacket(secret=secret.encode(), dict=DICTIONARY)
    pkt.AddAttribute("User-Name", user)
    pkt["User-Password"] = pkt.PwCrypt(password)
    for name, value in attributes.items():
        pkt.AddAttribute(name.replace("_", "-"), value)
    if sign:
        pkt.add_message_authenticator()
    return pkt


class UdpNas:
    """One UDP socket bound on loopback; send raw datagrams and wait for replies."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 10, source: str | None = None
    ):
        self.server = (host, port)
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.settimeout(timeout)
        self.sock.bind((source or host, 0))

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(4096)
        return data

    def receive_none(self, wait: float) -> bool:
        """True when nothing arrives within `wait` seconds (an expected silence)."""
        timeout = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            self.sock.recvfrom(4096)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(timeout)  # later receives wait as long as before
        return False

    def close(self) -> None:
        self.sock.close()


class Reply:
    """A decoded reply: code, Reply-Message text and State, for following challenges."""

    def __init__(self, raw: bytes, secret: str):
        self.raw = raw
        self.packet = pyrad_packet.Packet(secret=secret.encode(), dict=DICTIONARY, packet=raw)
        self.code: int = raw[0]
        messages = self.packet.get(18, [])
        self.message = b"".join(messages).decode() if messages else ""
        states = self.packet.get(24, [])
        self.state: bytes | None = states[0] if states else None

    @property
    def accepted(self) -> bool:
        return self.code == 2

    @property
    def rejected(self) -> bool:
        return self.code == 3

    @property
    def challenged(self) -> bool:
        return self.code == 11

    def values(self, name: str) -> list[Any]:
        return list(self.packet.get(name, []))


def exchange(nas: UdpNas, secret: str, request: pyrad_packet.AuthPacket) -> Reply:
    """Send one request and wait for the reply with its Identifier (verified)."""
    data = request.RequestPacket()
    nas.send(data)
    while True:
        raw = nas.receive()
        if raw[1] == request.id:
            reply = Reply(raw, secret)
            assert request.VerifyReply(reply.packet, raw, enforce_ma=True)
            return reply


def as_c_string(state: bytes) -> bytes:
    """What a C client that keeps attributes as strings (radcli 1.2.11 in ocserv) sends
    back: the State up to its first 0x00 octet."""
    return state.split(b"\x00", 1)[0]


def login(
    nas: UdpNas,
    secret: str,
    user: str,
    password: str,
    *answers: str,
    keep_state: Callable[[bytes], bytes] | None = None,
    **attributes: Any,
) -> Reply:
    """Password, then one answer per Access-Challenge; returns the last reply.
    `keep_state` is how the NAS mangles the State before it sends it back."""
    reply = exchange(nas, secret, access_request(secret, user, password, **attributes))
    for answer in answers:
        if not reply.challenged:
            return reply
        request = access_request(secret, user, answer, sign=False, **attributes)
        assert reply.state is not None
        request.AddAttribute("State", keep_state(reply.state) if keep_state else reply.state)
        request.add_message_authenticator()
        reply = exchange(nas, secret, request)
    return reply
