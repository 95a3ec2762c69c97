"""The workers of one host (`server.workers` on the SQLite state file): each worker
keeps its own RFC 5080 duplicate table (SO_REUSEPORT sends every copy of a request,
same source address and port, to one worker) and they share the replay window. Two
workers here are two connections to one real state file, sealed as in the daemon, and
then real processes racing one captured request replayed from many ports."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mfaproxy.radius.duplicates import DuplicateTable, Seen
from mfaproxy.store.duplicates import HostDuplicates
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.sqlite_state import SqliteStateStore

NOW = 1_700_000_000.0
KEY = ("192.0.2.1", 40000, 7, b"\x05" * 16)
OTHER_PORT = ("192.0.2.1", 40001, 9, KEY[3])
REPLY_TTL, REPLAY_TTL = 30.0, 120.0
MASTER_KEY = b"k" * 32
PROCESSES, PORTS = 4, 25


def worker(path: Path) -> HostDuplicates:
    state = SealedStateStore(SqliteStateStore(path), MASTER_KEY)
    return HostDuplicates(DuplicateTable(REPLY_TTL, 300), state, REPLAY_TTL)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[HostDuplicates, HostDuplicates]]:
    a, b = worker(tmp_path / "shared-state.sqlite3"), worker(tmp_path / "shared-state.sqlite3")
    yield a, b
    for one in (a, b):
        await one.state.close()


async def test_a_retransmission_is_answered_from_its_workers_cache(
    pair: tuple[HostDuplicates, HostDuplicates],
) -> None:
    a, _b = pair
    assert (await a.begin(KEY, NOW, "vpn")).seen is Seen.NEW
    assert (await a.begin(KEY, NOW + 1, "vpn")).seen is Seen.IN_FLIGHT
    await a.finish(KEY, b"reply", NOW + 1)
    again = await a.begin(KEY, NOW + 5, "vpn")
    assert (again.seen, again.reply) == (Seen.ANSWERED, b"reply")


async def test_another_port_is_a_replay_on_the_other_worker_and_stays_silent(
    pair: tuple[HostDuplicates, HostDuplicates],
) -> None:
    a, b = pair
    assert (await a.begin(KEY, NOW, "vpn")).seen is Seen.NEW
    await a.finish(KEY, b"reply", NOW)
    assert (await b.begin(OTHER_PORT, NOW + 1, "vpn")).seen is Seen.REPLAYED
    assert (await b.begin(OTHER_PORT, NOW + 2, "vpn")).seen is Seen.IN_FLIGHT
    # replayed while the first copy is still being processed: the same
    assert (await a.begin(("192.0.2.1", 1, 1, b"\x06" * 16), NOW, "vpn")).seen is Seen.NEW
    assert (await b.begin(("192.0.2.1", 2, 2, b"\x06" * 16), NOW, "vpn")).seen is Seen.REPLAYED


async def test_a_copy_that_reaches_another_worker_is_never_processed_twice(
    pair: tuple[HostDuplicates, HostDuplicates],
) -> None:
    """After a worker restart the kernel may send a retransmission elsewhere: dropped."""
    a, b = pair
    assert (await a.begin(KEY, NOW, "vpn")).seen is Seen.NEW
    await a.finish(KEY, b"reply", NOW)
    assert (await b.begin(KEY, NOW + 3, "vpn")).seen is Seen.REPLAYED
    assert (await a.begin(KEY, NOW + REPLY_TTL + 1, "vpn")).seen is Seen.REPLAYED  # too late
    assert (await b.begin(KEY, NOW + REPLAY_TTL + 1, "vpn")).seen is Seen.NEW  # forgotten


async def test_replays_are_judged_per_client(pair: tuple[HostDuplicates, HostDuplicates]) -> None:
    a, b = pair
    assert (await a.begin(KEY, NOW, "vpn")).seen is Seen.NEW
    assert (await b.begin(OTHER_PORT, NOW + 1, "other-nas")).seen is Seen.NEW


async def test_a_shed_request_is_new_again_on_every_worker(
    pair: tuple[HostDuplicates, HostDuplicates],
) -> None:
    a, b = pair
    assert (await a.begin(KEY, NOW, "vpn")).seen is Seen.NEW
    await a.forget(KEY, "vpn")  # shed unprocessed: neither in flight nor a replay
    assert (await b.begin(OTHER_PORT, NOW + 1, "vpn")).seen is Seen.NEW
    await b.forget(OTHER_PORT, "vpn")
    assert (await a.begin(KEY, NOW + 3, "vpn")).seen is Seen.NEW


async def test_a_burst_of_one_request_from_many_ports_is_processed_once(
    pair: tuple[HostDuplicates, HostDuplicates],
) -> None:
    a, b = pair
    keys = [("192.0.2.1", 50000 + i, i % 256, b"\x07" * 16) for i in range(40)]
    found = await asyncio.gather(
        *((a if i % 2 else b).begin(key, NOW, "vpn") for i, key in enumerate(keys))
    )
    assert sorted(lookup.seen.value for lookup in found) == ["new"] + ["replayed"] * 39


def _replay_from_many_ports(path: str, barrier: Any, results: Any, index: int) -> None:
    async def run() -> None:
        dedup = worker(Path(path))
        barrier.wait()
        new = 0
        for port in range(PORTS):
            key = ("192.0.2.9", 10000 + index * PORTS + port, port, b"\x08" * 16)
            new += (await dedup.begin(key, NOW, "vpn")).seen is Seen.NEW
        await dedup.state.close()
        results.put(new)

    asyncio.run(run())


def test_worker_processes_racing_one_replayed_request_process_it_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared-state.sqlite3")
    asyncio.run(worker(Path(path)).state.close())  # the file exists before the race
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [
        context.Process(target=_replay_from_many_ports, args=(path, barrier, results, i))
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    counts = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sum(counts) == 1
