"""The accounting spool from the event loop (`answer: at_once`): records written before
the NAS is answered, and the reader that forwards them until an upstream has them.

`Spool` runs the calls to the spool file (store/accounting_spool.py) on threads of its
own, so the loop never waits for an fsync. Appends are group-committed: the records
that arrive while one transaction is being written go together in the next one (one
fsync for all of them), which is what keeps `at_once` fast under load.

`SpoolReader` is FreeRADIUS's detail reader: each process of `server.workers` runs one
over the shared file. Records its process just wrote come leased and are forwarded from
memory; the others (another process's, a dead one's once its lease ran out, retries)
are leased from the file, oldest first. It forwards up to `upstream.queue` at once,
each on its own, deletes in batches those an upstream acknowledged and gives the
others back. A failed forward starts a backoff (`retry_min_seconds`, doubled
by each failed probe up to `retry_max_seconds`) during which nothing is claimed; then
one record at a time is tried (a probe) until one is acknowledged, instead of sending
the whole spool to an upstream that is down.
Records older than `max_age_seconds` are deleted unforwarded; rows that do not open
(tampered, corrupt) are deleted and counted. Nothing here raises out of the loop: a
spool outage is logged and retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import structlog

from mfaproxy.config.accounting import SpoolConfig
from mfaproxy.errors import SpoolUnavailable
from mfaproxy.observability import metrics
from mfaproxy.radius.accounting import STATUS_OTHER, STATUS_TYPES
from mfaproxy.store.accounting_spool import (
    AccountingSpool,
    ExpiredRow,
    RejectedRow,
    SpooledRecord,
    SpoolEntry,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

# How often an idle reader looks for records it was not told about: those of another
# worker (or of a process that died, once their lease ran out) and those due for a retry.
POLL_SECONDS = 1.0
# Expired records are looked for at most this often.
EXPIRE_EVERY_SECONDS = 5.0
# A record just written is forwarded from memory only this soon after: its lease (the
# longest forward, and 2 s) must outlast the forward. Later, it is claimed from the file.
FRESH_SECONDS = 1.0
# Acknowledged records are deleted in batches: when this many wait, or this long after
# the first (well inside the lease, so nobody else takes them meanwhile).
SETTLE_RECORDS = 64
SETTLE_SECONDS = 0.1
LABELS = frozenset(STATUS_TYPES.values())


class Spool:
    """The spool file behind two threads, one for appends (the NAS waits on those) and
    one for the reader, each with its own connection, so an answer never queues behind
    the reader's work; see the module docstring."""

    def __init__(self, writer: AccountingSpool, reader: AccountingSpool | None = None) -> None:
        self.file = writer
        self.reader_file = reader or writer
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="accounting-spool")
        self._reader = (
            ThreadPoolExecutor(1, thread_name_prefix="accounting-spool-reader")
            if reader is not None
            else self._writer
        )
        self._waiting: list[tuple[SpoolEntry, asyncio.Future[bool]]] = []
        self._max_records = 1
        self._lease_seconds = 0.0
        self._flusher: asyncio.Task[None] | None = None
        # Records just written, leased to this process: the reader forwards them from
        # here (no claim, no opening) while their lease is young; (loop time, record).
        self.fresh: collections.deque[tuple[float, SpooledRecord]] = collections.deque()
        # Set by every append that kept a record: the reader wakes up for it.
        self.appended = asyncio.Event()

    async def _on(self, pool: ThreadPoolExecutor, operation: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, operation, *args)

    async def append(self, entry: SpoolEntry, max_records: int, lease_seconds: float) -> bool:
        """Keep `entry` durably; False when the spool is full. Raises SpoolUnavailable.
        A record kept is leased to this process for `lease_seconds` (0: not leased, not
        handed to the reader from memory)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        self._max_records = max_records  # the latest configuration's bound
        self._lease_seconds = lease_seconds
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                entries = [entry for entry, _ in batch]
                lease = self._lease_seconds
                lease_until = time.time() + lease if lease > 0 else 0.0
                try:
                    rows = await self._on(
                        self._writer, self.file.append, entries, self._max_records, lease_until
                    )
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(_unavailable(exc))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                written = asyncio.get_running_loop().time()
                for index, (entry, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(index < len(rows))
                    if index < len(rows) and lease > 0:
                        self.fresh.append((written, SpooledRecord(rows[index], entry, 0)))
                if rows:
                    self.appended.set()
        finally:
            self._flusher = None

    # The reader's side.

    async def claim(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[SpooledRecord | RejectedRow]:
        return await self._on(self._reader, self.reader_file.claim, now, limit, lease_seconds)

    async def acknowledge(self, rows: list[int]) -> None:
        await self._on(self._reader, self.reader_file.acknowledge, rows)

    async def retry(self, rows: list[int], next_try: float) -> None:
        await self._on(self._reader, self.reader_file.retry, rows, next_try)

    async def expire(self, cutoff: float) -> list[ExpiredRow]:
        return await self._on(self._reader, self.reader_file.expire, cutoff)

    async def stats(self) -> tuple[int, float | None]:
        return await self._on(self._reader, self.reader_file.stats)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await self._on(self._writer, self.file.close)
        self._writer.shutdown(wait=True)
        if self.reader_file is not self.file:
            await self._on(self._reader, self.reader_file.close)
            self._reader.shutdown(wait=True)


def _unavailable(exc: BaseException) -> Exception:
    if isinstance(exc, SpoolUnavailable):
        return exc
    return SpoolUnavailable(f"accounting spool: {type(exc).__name__}: {exc}")


class Forwarder(Protocol):
    """What the reader needs of the accounting service of the current configuration."""

    @property
    def forwards(self) -> bool: ...  # an upstream is configured

    @property
    def spool_settings(self) -> SpoolConfig: ...

    @property
    def window(self) -> int: ...  # records forwarded at once

    @property
    def lease_seconds(self) -> float: ...  # longest one forward may take, and a margin

    async def forward_spooled(self, records: list[SpooledRecord]) -> list[bool]: ...


class SpoolReader:
    """Forwards spooled records, up to `window` at once, each on its own (a slow or lost
    one holds only its own place); see the module docstring."""

    def __init__(self, spool: Spool, current: Callable[[], Forwarder]) -> None:
        self._spool = spool
        self._current = current  # the service of the configuration now in force
        self._stopping = False
        self._backoff: float | None = None  # set while forwards fail: probing
        self._resume_at = 0.0  # (loop time) no record is claimed before, while backing off
        self._in_flight: set[asyncio.Task[None]] = set()
        self._done: list[int] = []  # acknowledged, to delete
        self._failed: list[int] = []  # not acknowledged, to give back
        self._expired_at = 0.0
        self._settled_at = 0.0  # loop time
        # Loop time of the next look at the file; 0 while a look may find more.
        self._look_at = 0.0
        self._task: asyncio.Task[None] | None = None
        # Set by a new record (Spool.append), a forward that ended, and stop().
        self._wake = spool.appended

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self, grace: float) -> None:
        """End once the forwards in flight did (they get until `grace`)."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._task)
        except TimeoutError:
            # Their records stay leased until the lease runs out, then anyone takes them.
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    await self._step()
                except SpoolUnavailable as exc:
                    log.error("accounting_spool_unavailable", error=str(exc))
                    await self._sleep(POLL_SECONDS)
                except Exception:
                    # A bug costs a pause, never the reader: its records stay in the spool.
                    log.exception("accounting_spool_reader_failed")
                    await self._sleep(POLL_SECONDS)
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):
                await self._settle()

    async def _sleep(self, seconds: float) -> None:
        """Until `seconds` passed or something woke the reader."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()

    async def _step(self) -> None:
        self._wake.clear()  # whatever happens from here on wakes the next sleep
        loop = asyncio.get_running_loop()
        await self._settle(force=False)
        service = self._current()
        await self._expire(service.spool_settings)
        waiting = self._resume_at - loop.time()
        limit = (1 if self._backoff is not None else service.window) - len(self._in_flight)
        if not service.forwards or waiting > 0 or limit <= 0:
            # No upstream now (the records wait), backing off, or every place taken.
            self._drop_stale_fresh(loop.time())
            await self._sleep(self._nap(waiting if waiting > 0 else POLL_SECONDS))
            return
        records = self._take_fresh(loop.time(), limit) if self._backoff is None else []
        if len(records) < limit and loop.time() >= self._look_at:
            records += await self._claim(service, limit - len(records))
        if not records:
            await self._sleep(self._nap(max(0.0, self._look_at - loop.time()) or POLL_SECONDS))
            return
        service = self._current()  # a reload meanwhile: the new upstreams take them
        probe = self._backoff is not None
        for record in records:
            task = asyncio.ensure_future(self._forward(service, record, probe))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _nap(self, seconds: float) -> float:
        """How long to sleep: no longer than the next batch of deletions is due."""
        if self._done or self._failed:
            return min(seconds, SETTLE_SECONDS)
        return seconds

    def _take_fresh(self, now: float, limit: int) -> list[SpooledRecord]:
        self._drop_stale_fresh(now)
        fresh = self._spool.fresh
        return [fresh.popleft()[1] for _ in range(min(limit, len(fresh)))]

    def _drop_stale_fresh(self, now: float) -> None:
        """Records too old to forward from memory: their lease runs out, then the file
        hands them out (oldest first) like any other."""
        fresh = self._spool.fresh
        while fresh and now - fresh[0][0] > FRESH_SECONDS:
            fresh.popleft()

    async def _claim(self, service: Forwarder, limit: int) -> list[SpooledRecord]:
        """The oldest due records of the file: left by a stopped or dead process, by
        another worker, given back for a retry, or written too long ago to be fresh."""
        loop = asyncio.get_running_loop()
        claimed = await self._spool.claim(time.time(), limit, service.lease_seconds)
        await self._discard([row for row in claimed if isinstance(row, RejectedRow)])
        # A full batch may have more behind it; otherwise look again in a while.
        self._look_at = 0.0 if len(claimed) >= limit else loop.time() + POLL_SECONDS
        return [row for row in claimed if isinstance(row, SpooledRecord)]

    async def _forward(self, service: Forwarder, record: SpooledRecord, probe: bool) -> None:
        try:
            (acknowledged,) = await service.forward_spooled([record])
        except Exception:
            log.exception("accounting_forward_failed", request_id=record.entry.request_id)
            acknowledged = False
        if acknowledged:
            self._done.append(record.row)
            self._backoff, self._resume_at = None, 0.0  # the upstream takes records again
        else:
            self._failed.append(record.row)
            self._failed_once(service.spool_settings, probe)
        self._wake.set()

    def _failed_once(self, settings: SpoolConfig, probe: bool) -> None:
        """Back off: a failure starts it, a failed probe doubles it (up to the max)."""
        if self._backoff is None:
            self._backoff = settings.retry_min_seconds
        elif probe:
            self._backoff = min(self._backoff * 2, settings.retry_max_seconds)
        else:
            return  # one of those sent before the first failure: the backoff stands
        self._resume_at = asyncio.get_running_loop().time() + self._backoff
        self._look_at = 0.0  # the probe comes from the file, oldest first

    async def _settle(self, force: bool = True) -> None:
        """Delete what was acknowledged, give back what was not (due after the backoff),
        in batches (see SETTLE_RECORDS) unless `force`d."""
        now = asyncio.get_running_loop().time()
        pending = len(self._done) + len(self._failed)
        if not pending:
            self._settled_at = now
            return
        # Failures are given back at once: the probe that follows claims them.
        batching = not self._failed and pending < SETTLE_RECORDS
        if not force and batching and now - self._settled_at < SETTLE_SECONDS:
            return
        self._settled_at = now
        done, self._done = self._done, []
        failed, self._failed = self._failed, []
        try:
            if done:
                await self._spool.acknowledge(done)
            if failed:
                metrics.ACCOUNTING_SPOOL_RETRIES.inc(len(failed))
                delay = self._backoff or 0.0
                await self._spool.retry(failed, time.time() + delay)
                log.warning("accounting_spool_retry", records=len(failed), retry_in_seconds=delay)
        except BaseException:
            # Not written: kept for the next try (a lease ends the others' wait anyway).
            self._done[:0], self._failed[:0] = done, failed
            raise

    async def _discard(self, rejected: list[RejectedRow]) -> None:
        if not rejected:
            return
        await self._spool.acknowledge([r.row for r in rejected])
        for row in rejected:
            metrics.ACCOUNTING_SPOOL_DISCARDED.labels(reason=row.reason).inc()
            log.error("accounting_spool_row_rejected", row=row.row, reason=row.reason)

    async def _expire(self, settings: SpoolConfig) -> None:
        now = time.time()
        if now - self._expired_at < EXPIRE_EVERY_SECONDS:
            return
        self._expired_at = now
        expired = await self._spool.expire(now - settings.max_age_seconds)
        for row in expired:
            # A plain column: read back from disk, so kept to the bounded label set.
            status = row.status_type if row.status_type in LABELS else STATUS_OTHER
            metrics.ACCOUNTING_SPOOL_DISCARDED.labels(reason="expired").inc()
            metrics.ACCOUNTING_OUTCOMES.labels(status_type=status, outcome="expired").inc()
            log.error(
                "accounting_spool_expired",
                request_id=row.request_id,
                status_type=row.status_type,
                age_seconds=round(now - row.received),
                max_age_seconds=settings.max_age_seconds,
            )


async def refresh_spool_gauges(spool: Spool) -> None:
    """The spool's size and the age of its oldest record (the whole file: every worker
    shows the same)."""
    size, oldest = await spool.stats()
    metrics.ACCOUNTING_SPOOL_PENDING.set(size)
    metrics.ACCOUNTING_SPOOL_OLDEST.set(max(0.0, time.time() - oldest) if oldest else 0.0)
