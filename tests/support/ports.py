"""Free loopback ports for test servers."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel just gave us and released; good enough on loopback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)
