"""Where the RFC 5080 duplicate table lives: in this process, or in the shared state
store so that a retransmission sent to another instance of a cluster is recognised
(a NAS fails over to the next server while a push is still pending on the first)."""

from __future__ import annotations

from typing import Protocol

from mfaproxy.radius.duplicates import DuplicateTable, Lookup, RequestKey, Seen
from mfaproxy.store.state import StateStore

NAMESPACE = "duplicates"


class Duplicates(Protocol):
    async def begin(self, key: RequestKey, now: float) -> Lookup: ...

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None: ...

    async def forget(self, key: RequestKey) -> None:
        """Drop the entry: the next copy of the request is processed as new (a request
        left unanswered on purpose, e.g. an accounting record no upstream took)."""
        ...


class LocalDuplicates:
    """One process: the pure table, no I/O."""

    def __init__(self, table: DuplicateTable):
        self.table = table

    async def begin(self, key: RequestKey, now: float) -> Lookup:
        return self.table.begin(key, now)

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None:
        self.table.finish(key, reply, now)

    async def forget(self, key: RequestKey) -> None:
        self.table.forget(key)


class SharedDuplicates:
    """A cluster: one atomic put-if-absent per request in the shared store."""

    def __init__(
        self, state: StateStore, reply_ttl: float, in_flight_ttl: float, namespace: str = NAMESPACE
    ):
        self.state = state
        self.namespace = namespace
        self.reply_ttl = reply_ttl
        # Longer than the longest hold (a pending push), shorter than forever: an
        # instance that dies mid-request must not silence retransmissions for long.
        self.in_flight_ttl = in_flight_ttl

    @staticmethod
    def _key(key: RequestKey) -> str:
        address, port, identifier, authenticator = key
        return f"{address}|{port}|{identifier}|{authenticator.hex()}"

    async def begin(self, key: RequestKey, now: float) -> Lookup:
        entry = await self.state.put_if_absent(
            self.namespace, self._key(key), {"done": False}, self.in_flight_ttl, now
        )
        if entry is None:
            return Lookup(Seen.NEW)
        reply = entry.get("reply")
        if entry.get("done") and isinstance(reply, str):
            return Lookup(Seen.ANSWERED, bytes.fromhex(reply))
        return Lookup(Seen.IN_FLIGHT)

    async def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None:
        value = {"done": True, "reply": reply.hex() if reply is not None else None}
        await self.state.put(self.namespace, self._key(key), value, self.reply_ttl, now)

    async def forget(self, key: RequestKey) -> None:
        await self.state.delete(self.namespace, self._key(key))
