"""Ephemeral state: challenge sessions, rate limits, anti-flood windows.

`StateStore` is the contract; `MemoryStateStore` keeps everything in this process (one
instance, the default). Every operation that checks and changes state is one call, so a
shared implementation (Redis) can make it atomic across instances: `take` pops a
session so a State is used once, `rate_limit` and `reserve` check and record in one
step (`reserve` hands back a token so `release` can take that one event back: a
per-NAS failure budget, or a short lease when the limit is one), `put_bounded` stores
a value and retires the oldest of its group beyond a limit (open challenges per user).
Values are JSON-compatible dicts so that a shared store can serialise them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from mfaproxy.store.ids import unique_token

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

    async def reserve(
        self, namespace: str, key: str, now: float, *, max_events: int, window: float
    ) -> str | None:
        """`rate_limit` that names the event it records: a token for `release`, or None
        (nothing recorded) when `max_events` already happened in the last `window`."""
        ...

    async def release(self, namespace: str, key: str, token: str) -> None:
        """Take back the event `reserve` recorded as `token` (gone already: no-op)."""
        ...

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        """Events recorded by `rate_limit` or `reserve` in the last `window` seconds."""
        ...

    async def put_bounded(
        self,
        namespace: str,
        key: str,
        value: JsonDict,
        ttl: float,
        now: float,
        *,
        group: str,
        limit: int,
    ) -> list[str]:
        """`put`, and make `key` the newest member of `group`; when more than `limit`
        members are live (not taken, not expired), delete the oldest. Returns the keys
        deleted. Atomic: concurrent callers never leave more than `limit` live."""
        ...

    async def size(self, namespace: str, now: float) -> int:
        """Live values in a namespace (for the pending-challenges gauge)."""
        ...

    async def close(self) -> None: ...


class MemoryStateStore:
    """Single-process store. Methods never suspend, so each is atomic on the event loop."""

    def __init__(self, max_entries: int = 1_000_000):
        self._values: dict[tuple[str, str], tuple[float, JsonDict]] = {}
        # Events as (time, token), oldest first; the token is "" unless `reserve`d.
        self._events: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        # Members of a `put_bounded` group, oldest first (dicts keep insertion order).
        self._groups: dict[tuple[str, str], dict[str, None]] = {}
        self._max_entries = max_entries

    def _prune(self, now: float) -> None:
        if len(self._values) + len(self._events) + len(self._groups) < self._max_entries:
            return
        self._values = {k: v for k, v in self._values.items() if v[0] > now}
        # Windows are at most a day long in practice; drop event keys idle that long.
        self._events = {k: v for k, v in self._events.items() if v and v[-1][0] > now - 86400}
        self._groups = {
            (ns, g): members
            for (ns, g), members in self._groups.items()
            if any((ns, key) in self._values for key in members)
        }

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

    def _window(
        self, namespace: str, key: str, now: float, window: float
    ) -> deque[tuple[float, str]]:
        events = self._events.setdefault((namespace, key), deque())
        while events and events[0][0] <= now - window:
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
        if len(events) >= max_events or (events and now - events[-1][0] < min_interval):
            return False
        events.append((now, ""))
        return True

    async def reserve(
        self, namespace: str, key: str, now: float, *, max_events: int, window: float
    ) -> str | None:
        self._prune(now)
        events = self._window(namespace, key, now, window)
        if len(events) >= max_events:
            return None
        token = unique_token()
        events.append((now, token))
        return token

    async def release(self, namespace: str, key: str, token: str) -> None:
        events = self._events.get((namespace, key))
        if events is None:
            return
        for event in events:
            if event[1] == token:
                events.remove(event)
                return

    async def put_bounded(
        self,
        namespace: str,
        key: str,
        value: JsonDict,
        ttl: float,
        now: float,
        *,
        group: str,
        limit: int,
    ) -> list[str]:
        await self.put(namespace, key, value, ttl, now)
        members = self._groups.setdefault((namespace, group), {})
        members.pop(key, None)
        members[key] = None
        for member in list(members):
            if await self.get(namespace, member, now) is None:
                del members[member]
        retired: list[str] = []
        while len(members) > limit:
            oldest = next(iter(members))
            del members[oldest]
            self._values.pop((namespace, oldest), None)
            retired.append(oldest)
        return retired

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        return len(self._window(namespace, key, now, window))

    async def size(self, namespace: str, now: float) -> int:
        return sum(
            1 for (ns, _), (exp, _v) in self._values.items() if ns == namespace and exp > now
        )

    async def close(self) -> None:
        self._values.clear()
        self._events.clear()
        self._groups.clear()
