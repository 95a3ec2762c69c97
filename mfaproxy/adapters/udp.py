"""UDP listeners: our own asyncio DatagramProtocol (pyrad's servers re-run handlers on
retransmissions). Each datagram goes to `submit` (the dispatcher's intake) untouched.

What the daemon never sees is counted too: when the event loop cannot keep up, the
kernel drops datagrams once a socket's receive buffer is full. `receive_drops` reads
the per-socket drop counters of /proc/net/udp and /proc/net/udp6 (the last column),
found by the socket's inode, for `mfaproxy_receive_buffer_drops_total`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import structlog

log = structlog.get_logger(__name__)

Address = tuple[Any, ...]
# Takes one datagram, its source address and the socket to answer from; never blocks.
Submit = Callable[[bytes, Address, asyncio.DatagramTransport], None]


class RadiusProtocol(asyncio.DatagramProtocol):
    def __init__(self, submit: Submit):
        self._submit = submit
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.transport is not None:
            self._submit(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies to vanished NAS ports: nothing to do but note it.
        log.debug("socket_error", error=type(exc).__name__)


async def open_listener(
    submit: Submit, host: str, port: int, reuse_port: bool = False
) -> tuple[asyncio.DatagramTransport, int]:
    """Bind one UDP socket; returns the transport and the bound port (for port 0).
    With `reuse_port` several worker processes bind the same port (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # The kernel's message names no address; with several listeners, say which.
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(exc.errno, f"UDP {where}: {exc.strerror}") from exc
    transport, _ = await loop.create_datagram_endpoint(lambda: RadiusProtocol(submit), sock=sock)
    return transport, int(sock.getsockname()[1])


PROC_TABLES = (Path("/proc/net/udp"), Path("/proc/net/udp6"))


def socket_inode(transport: asyncio.BaseTransport) -> int | None:
    """The inode that names a listener's socket in /proc/net/udp (None if unknown)."""
    sock = transport.get_extra_info("socket")
    try:
        return os.fstat(sock.fileno()).st_ino if sock is not None else None
    except (OSError, ValueError):
        return None


def receive_drops(inodes: Iterable[int], tables: Iterable[Path] = PROC_TABLES) -> dict[int, int]:
    """Datagrams the kernel dropped per socket (by inode) since it was opened."""
    wanted = set(inodes)
    found: dict[int, int] = {}
    for table in tables:
        try:
            lines = table.read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue  # not Linux, or no IPv6
        for line in lines:
            fields = line.split()
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if len(fields) >= 13 and fields[9].isdigit() and int(fields[9]) in wanted:
                found[int(fields[9])] = int(fields[12])
    return found
