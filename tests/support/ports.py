"""Free loopback ports for test servers, safe to hand to another process to bind later.

A port is chosen here and bound afterwards by someone else (slapd, redis-server, the
daemon), so two things could take it in between, and both did:

- The kernel's ephemeral range (``net.ipv4.ip_local_port_range``): every ``connect()``
  and every unbound UDP socket takes its source port from it. Worse, a client polling
  a server that is not listening yet can be given the very port it connects to: TCP's
  simultaneous open (RFC 9293 section 3.5) then connects the socket to itself, and
  slapd's readiness bind read its own BindRequest back. Ports here come from below
  that range, where the kernel never assigns one by itself.
- Another test run on the same machine (helpers share it; CI may run two suites): each
  process reserves blocks of ports with an abstract Unix socket name per block. The
  name is held for the life of the process and dies with it, and it is scoped like
  the ports themselves (one network namespace), so nothing is left in the filesystem.

Within a process a port is handed out once; servers that restart keep their own port.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from dataclasses import dataclass, field

BLOCK = 64
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST = 10000  # below: ports of well-known and registered services


def _ephemeral() -> tuple[int, int]:
    try:
        with open(EPHEMERAL_RANGE, encoding="ascii") as text:
            low, high = (int(part) for part in text.read().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _outside_ephemeral() -> range:
    """The widest stretch of ports the kernel does not hand out by itself."""
    low, high = _ephemeral()
    below, above = range(LOWEST, low), range(high + 1, 65536)
    widest = max(below, above, key=len)
    # A machine whose ephemeral range covers (nearly) everything: reservations between
    # processes still hold; only the kernel's own picks can collide.
    return widest if len(widest) >= 8 * BLOCK else range(LOWEST, 65536)


def _bindable(port: int, kind: int, host: str) -> bool:
    """Nothing outside our reservations (a system service, a stray process) holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class _Pool:
    """The blocks of `ports` this process holds, and the ports it already gave out."""

    ports: range
    pid: int = field(default_factory=os.getpid)
    locks: list[socket.socket] = field(default_factory=list)
    blocks: list[range] = field(default_factory=list)
    given: set[int] = field(default_factory=set)

    def take(self, count: int, kind: int, host: str) -> int:
        if self.pid != os.getpid():  # a forked child: the parent's blocks are not ours
            self.pid, self.locks, self.blocks, self.given = os.getpid(), [], [], set()
        for block in self.blocks:
            if (first := self._first_free(block, count, kind, host)) is not None:
                return first
        while (first := self._first_free(self._reserve_block(), count, kind, host)) is None:
            pass  # a fresh block whose ports a foreign process holds: the next one
        return first

    def _first_free(self, block: range, count: int, kind: int, host: str) -> int | None:
        for first in range(block.start, block.stop - count + 1):
            run = range(first, first + count)
            if self.given.isdisjoint(run) and all(_bindable(p, kind, host) for p in run):
                self.given.update(run)
                return first
        return None

    def _reserve_block(self) -> range:
        starts = list(range(self.ports.start, self.ports.stop - BLOCK + 1, BLOCK))
        random.shuffle(starts)  # concurrent runs mostly try different blocks first
        for start in starts:
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(f"\0mfaproxy-test-ports-{start}")
            except OSError:  # another process holds this block
                lock.close()
                continue
            self.locks.append(lock)
            self.blocks.append(range(start, start + BLOCK))
            return self.blocks[-1]
        raise RuntimeError(
            f"every block of test ports in {self.ports.start}-{self.ports.stop - 1} "
            "is held by another process"
        )


_LOCK = threading.Lock()
_POOLS: dict[str, _Pool] = {}


def _pool(name: str, ports: range) -> _Pool:
    return _POOLS.setdefault(name, _Pool(ports))


def free_ports(count: int, kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports, reserved for this process."""
    with _LOCK:
        return _pool("main", _outside_ephemeral()).take(count, kind, host)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    return free_ports(1, kind, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)


def free_short_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A free port of four digits (2000-9999), for a peer that reads no more."""
    with _LOCK:
        return _pool("short", range(2000, 10000)).take(1, kind, host)
