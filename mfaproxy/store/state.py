"""Ephemeral state: challenge sessions, rate limits, anti-flood windows.

`StateStore` is the contract; `MemoryStateStore` keeps everything in this process (one
instance, the default). Every operation that checks and changes state is one call, so a
shared implementation (Redis) can make it atomic across instances: `take` pops a
session so a State is used once, `rate_limit` checks and records in one step.
Values are JSON-compatible dicts so that a shared store can serialise them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

JsonDict = dict[str, Any]


class StateStore(Protocol):
    async def put(self, namespace: str, key: str, value: JsonDict, ttl: float, now: float) -> None:
        """Store `value` until `now + ttl`, replacing any earlier value."""
        ...

    async def put_if_absent(
        self, namespace: str, key: str, value: JsonDict, ttl: float, now: float
    ) -> JsonDict | None:
        """Store `value` unless a live value exists; return that value (None when ours
        was stored). Atomic: of two callers, exactly one stores."""
        ...

    async def get(self, namespace: str, key: str, now: float) -> JsonDict | None: ...

    async def take(self, namespace: str, key: str, now: float) -> JsonDict | None:
        """Remove and return the value: only one caller ever gets it."""
        ...

    async def delete(self, namespace: str, key: str) -> None: ...

    async def rate_limit(
        self,
        namespace: str,
        key: str,
        now: float,
        *,
        max_events: int,
        window: float,
        min_interval: float = 0.0,
    ) -> bool:
        """Record one event and return True, unless `max_events` already happened in the
        last `window` seconds or the last one was under `min_interval` ago (then False,
        and nothing is recorded)."""
        ...

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        """Events recorded by `rate_limit` in the last `window` seconds."""
        ...

    async def size(self, namespace: str, now: float) -> int:
        """Live values in a namespace (for the pending-challenges gauge)."""
        ...

    async def close(self) -> None: ...


class MemoryStateStore:
    """Single-process store. Methods never suspend, so each is atomic on the event loop."""

    def __init__(self, max_entries: int = 1_000_000):
        self._values: dict[tuple[str, str], tuple[float, JsonDict]] = {}
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._max_entries = max_entries

    def _prune(self, now: float) -> None:
        if len(self._values) + len(self._events) < self._max_entries:
            return
        self._values = {k: v for k, v in self._values.items() if v[0] > now}
        # Windows are at most a day long in practice; drop event keys idle that long.
        self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - 86400}

    async def put(self, namespace: str, key: str, value: JsonDict, ttl: float, now: float) -> None:
        self._prune(now)
        self._values[(namespace, key)] = (now + ttl, value)

    async def put_if_absent(
        self, namespace: str, key: str, value: JsonDict, ttl: float, now: float
    ) -> JsonDict | None:
        current = await self.get(namespace, key, now)
        if current is not None:
            return current
        await self.put(namespace, key, value, ttl, now)
        return None

    async def get(self, namespace: str, key: str, now: float) -> JsonDict | None:
        item = self._values.get((namespace, key))
        if item is None or item[0] <= now:
            return None
        return item[1]

    async def take(self, namespace: str, key: str, now: float) -> JsonDict | None:
        item = self._values.pop((namespace, key), None)
        if item is None or item[0] <= now:
            return None
        return item[1]

    async def delete(self, namespace: str, key: str) -> None:
        self._values.pop((namespace, key), None)

    def _window(self, namespace: str, key: str, now: float, window: float) -> deque[float]:
        events = self._events.setdefault((namespace, key), deque())
        while events and events[0] <= now - window:
            events.popleft()
        return events

    async def rate_limit(
        self,
        namespace: str,
        key: str,
        now: float,
        *,
        max_events: int,
        window: float,
        min_interval: float = 0.0,
    ) -> bool:
        self._prune(now)
        events = self._window(namespace, key, now, window)
        if len(events) >= max_events or (events and now - events[-1] < min_interval):
            return False
        events.append(now)
        return True

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        return len(self._window(namespace, key, now, window))

    async def size(self, namespace: str, now: float) -> int:
        return sum(
            1 for (ns, _), (exp, _v) in self._values.items() if ns == namespace and exp > now
        )

    async def close(self) -> None:
        self._values.clear()
        self._events.clear()
