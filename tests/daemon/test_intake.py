"""The bounded intake queue: beyond it datagrams are dropped and counted, never queued
without limit."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from mfaproxy.daemon.runtime import Dispatcher, Runtime
from mfaproxy.observability import metrics
from mfaproxy.radius.duplicates import DuplicateTable
from mfaproxy.store.duplicates import LocalDuplicates


class HeldEngine:
    """An engine whose requests wait until released: the worker stays busy."""

    def __init__(self) -> None:
        self.release = asyncio.Event()


class Transport:
    def sendto(self, data: bytes, addr: Any) -> None:
        raise AssertionError("nothing is answered in this test")


def dropped_overload() -> float:
    return (
        metrics.REGISTRY.get_sample_value("mfaproxy_packets_dropped_total", {"reason": "overload"})
        or 0.0
    )


async def test_overload_drops_and_counts() -> None:
    runtime = Runtime(clients=cast(Any, None), dictionary=None, engine=cast(Any, HeldEngine()))
    dispatcher = Dispatcher(
        runtime, LocalDuplicates(DuplicateTable(30, 300)), queue_size=3, workers=1
    )
    transport = cast(Any, Transport())
    before = dropped_overload()
    # no workers started: the queue fills and stays full
    for i in range(10):
        dispatcher.submit(bytes([i]), ("192.0.2.1", 1000 + i), transport)
    assert dropped_overload() - before == 7
    assert not dispatcher.idle
