"""What the dispatcher (daemon/runtime.py) stamps on each datagram and reads per
request: the datagram as queued, the admission and reply-timing settings a reload
swaps, and request ids."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass
from typing import Any

from mfaproxy.config.schema import ServerConfig

Address = tuple[Any, ...]
_random = secrets.SystemRandom()

# Request ids only tell log lines apart: a random per-process prefix (workers differ)
# and a counter, instead of reading the kernel's random pool for every request (that
# syscall was 6 % of the CPU of a PAP request in the profile).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count()


def next_request_id() -> str:
    """16 hex digits, unique within this process for 2**32 requests."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


@dataclass(frozen=True)
class Limits:
    """The admission and reply-timing settings; swapped with the runtime on reload."""

    max_queue_wait: float = 2.0
    max_queue_wait_second_round: float = 5.0
    reject_delay: float = 0.0
    reject_delay_jitter: float = 0.0

    @classmethod
    def of(cls, server: ServerConfig) -> Limits:
        return cls(
            server.max_queue_wait,
            server.max_queue_wait_second_round,
            server.reject_delay,
            server.reject_delay_jitter,
        )

    def reject_after(self) -> float:
        if self.reject_delay <= 0:
            return 0.0
        return self.reject_delay + _random.uniform(0, self.reject_delay_jitter)


@dataclass(eq=False)
class Datagram:
    data: bytes
    addr: Address
    transport: asyncio.DatagramTransport
    arrival: float
    second_round: bool

    @property
    def round(self) -> str:
        return "second" if self.second_round else "first"
