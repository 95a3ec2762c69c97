"""What the kernel drops before the daemon sees it is counted: the per-socket drop
counter of /proc/net/udp, found by the listener's inode (a real socket, a real kernel)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from mfaproxy.adapters.udp import open_listener, receive_drops, socket_inode

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="Linux only")


def test_a_full_receive_buffer_shows_up_as_drops() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # the kernel's minimum
    sink.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inode = os.fstat(sink.fileno()).st_ino
    try:
        assert receive_drops([inode]) == {inode: 0}
        for _ in range(200):  # nobody reads: the buffer fills, the kernel drops
            sender.sendto(b"x" * 1000, sink.getsockname())
        assert receive_drops([inode])[inode] > 0
        assert receive_drops([inode + 10**9]) == {}  # a socket that is not ours
    finally:
        sink.close()
        sender.close()


async def test_a_listener_is_found_by_its_inode() -> None:
    transport, port = await open_listener(lambda *_: None, "127.0.0.1", 0)
    try:
        inode = socket_inode(transport)
        assert inode is not None
        assert receive_drops([inode]) == {inode: 0}
        assert port > 0
    finally:
        transport.close()
        await asyncio.sleep(0)
