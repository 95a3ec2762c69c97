"""The spool from the event loop (auth/accounting_spool.py), on a real spool file: appends
that arrive together share one transaction, a spool that cannot be written says so,
and the reader probes a failing upstream with one record at a time, backs off, then
sends the rest and deletes only what was acknowledged. The forwarder here is the
reader's own interface; the real upstream (FreeRADIUS) is in tests/e2e."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from mfaproxy.auth.accounting_spool import Spool, SpoolReader, refresh_spool_gauges
from mfaproxy.config.accounting import SpoolConfig
from mfaproxy.errors import SpoolUnavailable
from mfaproxy.observability import metrics
from mfaproxy.store.accounting_spool import AccountingSpool, SpooledRecord, SpoolEntry

KEY = bytes(32)


class CountingSpool(AccountingSpool):
    def __init__(self, path: Path) -> None:
        super().__init__(path, KEY)
        self.appends = 0

    def append(
        self, entries: Sequence[SpoolEntry], max_records: int, lease_until: float = 0.0
    ) -> list[int]:
        self.appends += 1
        return super().append(entries, max_records, lease_until)


def entry(n: int) -> SpoolEntry:
    return SpoolEntry(f"r{n}", "nas", "stop", time.time(), bytes([44, 3]) + bytes([48 + n % 10]))


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    made = Spool(CountingSpool(tmp_path / "spool.sqlite3"))
    yield made
    await made.close()


async def test_appends_that_arrive_together_share_one_fsynced_transaction(spool: Spool) -> None:
    kept = await asyncio.gather(
        *(spool.append(entry(n), max_records=150, lease_seconds=5) for n in range(200))
    )
    assert kept == [True] * 150 + [False] * 50  # in order: the last ones did not fit
    file = spool.file
    assert isinstance(file, CountingSpool) and file.appends <= 2
    assert spool.appended.is_set()  # the reader is woken
    await refresh_spool_gauges(spool)
    assert metrics.REGISTRY.get_sample_value("mfaproxy_accounting_spool_pending") == 150


async def test_a_spool_that_cannot_be_written_raises_unavailable(tmp_path: Path) -> None:
    spool = Spool(AccountingSpool(tmp_path / "spool.sqlite3", KEY))
    spool.file.close()  # what a vanished or broken file looks like to SQLite
    with pytest.raises(SpoolUnavailable):
        await spool.append(entry(1), 10, 5)
    await spool.close()


class Upstream:
    """The reader's Forwarder: fails the first `failures` calls, then acknowledges; notes
    how many forwards were in flight at each call."""

    def __init__(self, failures: int, expected: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, int]] = []  # (request id, forwards in flight)
        self.acknowledged: list[str] = []
        self.expected = expected
        self.active = 0
        self.done = asyncio.Event()
        self.spool_settings = SpoolConfig(retry_min_seconds=0.05, retry_max_seconds=0.1)

    forwards = True
    window = 64
    lease_seconds = 5.0

    async def forward_spooled(self, records: list[SpooledRecord]) -> list[bool]:
        (record,) = records  # the reader forwards each record on its own
        self.active += 1
        self.calls.append((record.entry.request_id, self.active))
        await asyncio.sleep(0)  # a yield, so forwards overlap as they do on the wire
        self.active -= 1
        if len(self.calls) <= self.failures:
            return [False]
        self.acknowledged.append(record.entry.request_id)
        if len(self.acknowledged) >= self.expected:
            self.done.set()
        return [True]


async def test_the_reader_probes_one_record_at_a_time_while_failing_then_sends_the_rest(
    spool: Spool,
) -> None:
    for n in range(10):
        assert await spool.append(entry(n), 100, 5)
    upstream = Upstream(failures=13, expected=10)
    retries = metrics.REGISTRY.get_sample_value("mfaproxy_accounting_spool_retries_total") or 0
    reader = SpoolReader(spool, lambda: upstream)
    reader.start()
    try:
        await asyncio.wait_for(upstream.done.wait(), 20)
    finally:
        await reader.stop(grace=5)
    # The whole spool at once; it fails: then one record at a time (three failed probes
    # and the one that went through), then the rest at once again.
    assert len(upstream.calls) == 10 + 3 + 1 + 9
    assert max(active for _, active in upstream.calls[:10]) > 1
    assert [active for _, active in upstream.calls[10:14]] == [1, 1, 1, 1]
    assert max(active for _, active in upstream.calls[14:]) > 1
    assert sorted(upstream.acknowledged) == sorted(f"r{n}" for n in range(10))
    after = metrics.REGISTRY.get_sample_value("mfaproxy_accounting_spool_retries_total")
    assert after == retries + 13
    assert await spool.stats() == (0, None)  # deleted once acknowledged


async def test_the_reader_discards_rows_that_do_not_open_and_forwards_the_rest(
    spool: Spool,
) -> None:
    for n in range(3):
        await spool.append(entry(n), 100, 0)
    with sqlite3.connect(spool.file.path, isolation_level=None) as conn:
        conn.execute("UPDATE spool SET sealed = X'00' WHERE request_id = 'r1'")
    before = metrics.REGISTRY.get_sample_value(
        "mfaproxy_accounting_spool_discarded_total", {"reason": "unauthentic"}
    )
    upstream = Upstream(failures=0, expected=2)
    reader = SpoolReader(spool, lambda: upstream)
    reader.start()
    try:
        await asyncio.wait_for(upstream.done.wait(), 20)
    finally:
        await reader.stop(grace=5)
    assert sorted(upstream.acknowledged) == ["r0", "r2"]
    after = metrics.REGISTRY.get_sample_value(
        "mfaproxy_accounting_spool_discarded_total", {"reason": "unauthentic"}
    )
    assert after == (before or 0) + 1
    assert await spool.stats() == (0, None)
