"""A scriptable NAS for tests that need byte-level control: exact retransmissions,
hostile packets. Builds requests with pyrad and talks plain UDP sockets."""

from __future__ import annotations

import socket
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
        self.sock.settimeout(wait)
        try:
            self.sock.recvfrom(4096)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()
