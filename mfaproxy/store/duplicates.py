"""Where the RFC 5080 duplicate table lives: in this process, or in the shared state
store so that a retransmission sent to another instance of a cluster is recognised
(a NAS fails over to the next server while a push is still pending on the first).

In a cluster an instance can die with a request in flight (a push pending, say). Its
in-flight entry must then stop silencing the NAS's retransmissions soon, or the login
is lost: the owner of a long request keeps a short lease on it, renewed every
`lease / 3` seconds while it works. A retransmission that finds the entry in flight,
older than `lease`, and no lease, was left by a dead instance: it is taken over
(processed here, counted as `taken_over`), and the work it finds recorded in the state
store (a pending Duo push, a challenge session) continues rather than starting again.
Requests shorter than `lease / 3` never write a lease: most cost nothing extra.

Takeover compares the entry's start time with this instance's clock: keep the nodes'
clocks in sync (NTP), as for every other expiry in the shared store.

Replays: the Request Authenticators of processed requests are remembered per client
for the replay window (the challenge lifetime), in this process or in the shared store.
`begin` answers REPLAYED for a request whose authenticator a processed request used,
outside the duplicate window or from another port (a captured request played back):
it is dropped. A takeover is the same request continuing, never a replay. `forget`
undoes `begin` for a request shed unprocessed, so its retransmission is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import structlog

from mfaproxy.errors import UpstreamError
from mfaproxy.observability import metrics
from mfaproxy.radius.duplicates import DuplicateTable, Lookup, ReplayWindow, RequestKey, Seen
from mfaproxy.store.state import StateStore

log = structlog.get_logger(__name__)

NAMESPACE = "duplicates"
LEASES = f"{NAMESPACE}_lease"  # the leases of the default namespace
REPLAYS = "replays"
# Seconds after its owner's last sign of life that an in-flight request is taken over
# by the instance its retransmission reaches (NAS retransmit every 3-10 s).
LEASE_SECONDS = 6.0


class Duplicates(Protocol):
    async def begin(self, key: RequestKey, now: float, scope: str = "") -> Lookup:
        """NEW, IN_FLIGHT, ANSWERED or REPLAYED; `scope` is the client (replays are
        recognised per client)."""
        ...

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None: ...

    async def forget(self, key: RequestKey, scope: str = "") -> None:
        """Drop the entry and its replay mark: the next copy of the request is processed
        as new (a request shed unprocessed, or left unanswered on purpose, e.g. an
        accounting record no upstream took)."""
        ...


class LocalDuplicates:
    """One process: the pure table and replay window, no I/O."""

    def __init__(self, table: DuplicateTable, replays: ReplayWindow | None = None):
        self.table = table
        self.replays = replays

    async def begin(self, key: RequestKey, now: float, scope: str = "") -> Lookup:
        lookup = self.table.begin(key, now)
        fresh = lookup.seen is Seen.NEW
        if fresh and self.replays is not None and not self.replays.admit(scope, key[3], now):
            self.table.finish(key, None, now)  # its own copies stay silent
            return Lookup(Seen.REPLAYED)
        return lookup

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None:
        self.table.finish(key, reply, now)

    async def forget(self, key: RequestKey, scope: str = "") -> None:
        self.table.forget(key)
        if self.replays is not None:
            self.replays.forget(scope, key[3])


class HostDuplicates:
    """The workers of one host (`server.workers` with the SQLite state file): each
    worker keeps its own duplicate table, and the replay window is shared.

    Every copy of a request comes from one source address and port, and SO_REUSEPORT
    hashes that (with the destination) to one socket of the group: while the set of
    workers stays the same, a retransmission reaches the worker that holds the first
    copy, its cached answer included, so that table needs no sharing (two SQLite writes
    per request less, measured in bench/README.md). A replay from another port reaches
    any worker: the mark of each processed Request Authenticator is in the shared store,
    one atomic put-if-absent per request, as in a cluster.

    When a worker dies and is started again the kernel spreads sources afresh: a
    retransmission of a request answered before may then reach a worker that never saw
    it; the shared mark makes it REPLAYED (dropped, never processed twice) and the NAS's
    next attempt is a new request. A cluster keeps SharedDuplicates, whose entries a
    retransmission failing over to another host finds (and takes over)."""

    def __init__(self, table: DuplicateTable, state: StateStore, replay_ttl: float) -> None:
        self.table = table
        self.state = state
        self.replay_ttl = replay_ttl

    async def begin(self, key: RequestKey, now: float, scope: str = "") -> Lookup:
        lookup = self.table.begin(key, now)  # NEW ones are in flight from here on
        if lookup.seen is not Seen.NEW:
            return lookup
        # When the store is down this raises: the dispatcher processes the request
        # anyway (the store failmode decides), and its copies here stay in flight.
        mark = SharedDuplicates._replay_key(key, scope)
        seen = await self.state.put_if_absent(REPLAYS, mark, {"seen": True}, self.replay_ttl, now)
        if seen is not None:
            self.table.finish(key, None, now)  # its own copies stay silent
            return Lookup(Seen.REPLAYED)
        return lookup

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None:
        self.table.finish(key, reply, now)

    async def forget(self, key: RequestKey, scope: str = "") -> None:
        self.table.forget(key)
        await self.state.delete(REPLAYS, SharedDuplicates._replay_key(key, scope))


class SharedDuplicates:
    """A cluster: one atomic put-if-absent per request in the shared store, and a lease
    for requests that take long."""

    def __init__(
        self,
        state: StateStore,
        reply_ttl: float,
        in_flight_ttl: float,
        lease: float = LEASE_SECONDS,
        namespace: str = NAMESPACE,
        *,
        replay_ttl: float = 0.0,
    ):
        self.state = state
        # 0: no replay window (the accounting table, whose records may repeat).
        self.replay_ttl = replay_ttl
        self.namespace = namespace
        self.leases = f"{namespace}_lease"
        self.reply_ttl = reply_ttl
        # Bounds an entry nobody finishes; a dead owner is noticed by its lease instead.
        self.in_flight_ttl = in_flight_ttl
        self.lease = lease
        self._renewals: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def _key(key: RequestKey) -> str:
        address, port, identifier, authenticator = key
        return f"{address}|{port}|{identifier}|{authenticator.hex()}"

    @staticmethod
    def _replay_key(key: RequestKey, scope: str) -> str:
        return f"{scope}|{key[3].hex()}"

    async def begin(self, key: RequestKey, now: float, scope: str = "") -> Lookup:
        name = self._key(key)
        entry = await self.state.put_if_absent(
            self.namespace, name, {"done": False, "started": now}, self.in_flight_ttl, now
        )
        if entry is None:
            if self.replay_ttl > 0:
                mark = self._replay_key(key, scope)
                seen = await self.state.put_if_absent(
                    REPLAYS, mark, {"seen": True}, self.replay_ttl, now
                )
                if seen is not None:
                    await self.finish(key, None, now)  # its own copies stay silent
                    return Lookup(Seen.REPLAYED)
            self._hold(name)
            return Lookup(Seen.NEW)
        reply = entry.get("reply")
        if entry.get("done"):
            if isinstance(reply, str):
                return Lookup(Seen.ANSWERED, bytes.fromhex(reply))
            return Lookup(Seen.IN_FLIGHT)  # finished without an answer: stay silent
        if await self._abandoned(name, entry.get("started"), now):
            metrics.DUPLICATES.labels(action="taken_over").inc()
            log.warning("request_taken_over", reason="owner_lease_expired")
            self._hold(name)
            return Lookup(Seen.NEW)
        return Lookup(Seen.IN_FLIGHT)

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None:
        name = self._key(key)
        await self._release(name)
        value = {"done": True, "reply": reply.hex() if reply is not None else None}
        await self.state.put(self.namespace, name, value, self.reply_ttl, now)

    async def forget(self, key: RequestKey, scope: str = "") -> None:
        name = self._key(key)
        await self._release(name)
        await self.state.delete(self.namespace, name)
        if self.replay_ttl > 0:
            await self.state.delete(REPLAYS, self._replay_key(key, scope))

    async def _release(self, name: str) -> None:
        renewal = self._renewals.pop(name, None)
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal

    async def _abandoned(self, name: str, started: object, now: float) -> bool:
        """In flight for longer than a lease, and nobody holds one: the owner is gone.
        Taking the lease is atomic, so of two instances only one takes over."""
        if not isinstance(started, int | float) or now - started < self.lease:
            return False  # young: its owner has not had to renew yet
        taken = await self.state.put_if_absent(self.leases, name, {"lease": True}, self.lease, now)
        return taken is None

    def _hold(self, name: str) -> None:
        self._renewals[name] = asyncio.create_task(self._renew(name), name="duplicate-lease")

    async def _renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.state.put(self.leases, name, {"lease": True}, self.lease, time.time())
            except UpstreamError:
                log.warning("duplicate_lease_unavailable")
