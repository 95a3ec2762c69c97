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

import heapq
import itertools
from collections import Counter, deque
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
    """Single-process store. Methods never suspend, so each is atomic on the event loop.

    Entries leave on time: every value, rate-limit window and `put_bounded` group is
    filed in a heap by its expiry, and each call first pops what has expired by its
    `now` (amortised O(log n) per entry, once). Memory follows the live entries, not the
    history, and `size` reads a per-namespace counter (O(1)) for the gauges behind
    /metrics and /readyz. `max_entries` is a last-resort cap: beyond it the entries
    nearest to their expiry go first.
    """

    def __init__(self, max_entries: int = 1_000_000):
        self._values: dict[tuple[str, str], tuple[float, int, JsonDict]] = {}
        # Events as (time, token), oldest first; the token is "" unless `reserve`d.
        self._events: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        # Members of a `put_bounded` group, oldest first (dicts keep insertion order).
        self._groups: dict[tuple[str, str], dict[str, None]] = {}
        # When an events key or a group may go: its latest event + window, or member.
        self._until: dict[tuple[int, str, str], float] = {}
        self._live: Counter[str] = Counter()
        # (expires, sequence, kind, namespace, key); stale items are skipped.
        self._heap: list[tuple[float, int, int, str, str]] = []
        self._sequence = itertools.count()
        self._max_entries = max_entries

    def __len__(self) -> int:
        """Entries held (values, rate-limit keys and groups), for tests and the cap."""
        return len(self._values) + len(self._events) + len(self._groups)

    # ------------------------------------------------------------------ expiry

    def _file(self, expires: float, sequence: int, kind: int, namespace: str, key: str) -> None:
        """Put an entry, already stored under `sequence`, in the expiry heap."""
        heapq.heappush(self._heap, (expires, sequence, kind, namespace, key))
        if len(self._heap) > 2 * len(self) + 1024:
            self._heap = [item for item in self._heap if self._current(item)]
            heapq.heapify(self._heap)
        if len(self) > self._max_entries:
            self._expire(float("-inf"))

    def _extend(self, kind: int, namespace: str, key: str, until: float) -> None:
        """An events key or a group lives at least until `until`."""
        marker = (kind, namespace, key)
        if until > self._until.get(marker, float("-inf")):
            self._until[marker] = until
            self._file(until, next(self._sequence), kind, namespace, key)

    def _current(self, item: tuple[float, int, int, str, str]) -> bool:
        expires, sequence, kind, namespace, key = item
        if kind == _VALUE:
            entry = self._values.get((namespace, key))
            return entry is not None and entry[1] == sequence
        return self._until.get((kind, namespace, key)) == expires

    def _expire(self, now: float) -> None:
        while self._heap and (self._heap[0][0] <= now or len(self) > self._max_entries):
            item = heapq.heappop(self._heap)
            if self._current(item):
                self._remove(item[2], item[3], item[4])

    def _remove(self, kind: int, namespace: str, key: str) -> None:
        if kind == _VALUE:
            if self._values.pop((namespace, key), None) is not None:
                self._live[namespace] -= 1
                if not self._live[namespace]:
                    del self._live[namespace]
            return
        self._until.pop((kind, namespace, key), None)
        if kind == _EVENTS:
            self._events.pop((namespace, key), None)
        else:
            self._groups.pop((namespace, key), None)

    # ------------------------------------------------------------------ values

    async def put(self, namespace: str, key: str, value: JsonDict, ttl: float, now: float) -> None:
        self._expire(now)
        self._store(namespace, key, value, now + ttl)

    def _store(self, namespace: str, key: str, value: JsonDict, expires: float) -> None:
        if (namespace, key) not in self._values:
            self._live[namespace] += 1
        sequence = next(self._sequence)  # marks this value's heap item as the current one
        self._values[(namespace, key)] = (expires, sequence, value)
        self._file(expires, sequence, _VALUE, namespace, key)

    async def put_if_absent(
        self, namespace: str, key: str, value: JsonDict, ttl: float, now: float
    ) -> JsonDict | None:
        current = await self.get(namespace, key, now)
        if current is not None:
            return current
        self._store(namespace, key, value, now + ttl)
        return None

    async def get(self, namespace: str, key: str, now: float) -> JsonDict | None:
        self._expire(now)
        item = self._values.get((namespace, key))
        if item is None or item[0] <= now:
            return None
        return item[2]

    async def take(self, namespace: str, key: str, now: float) -> JsonDict | None:
        self._expire(now)
        item = self._values.get((namespace, key))
        if item is None:
            return None
        self._remove(_VALUE, namespace, key)
        return item[2] if item[0] > now else None

    async def delete(self, namespace: str, key: str) -> None:
        self._remove(_VALUE, namespace, key)

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
            self._remove(_VALUE, namespace, oldest)
            retired.append(oldest)
        self._extend(_GROUP, namespace, group, now + ttl)  # as long as its newest member
        return retired

    # ------------------------------------------------------------------ rate limits

    def _window(
        self, namespace: str, key: str, now: float, window: float
    ) -> deque[tuple[float, str]]:
        events = self._events.get((namespace, key))
        if events is None:
            return deque()
        while events and events[0][0] <= now - window:
            events.popleft()
        return events

    def _record(
        self,
        namespace: str,
        key: str,
        events: deque[tuple[float, str]],
        event: tuple[float, str],
        window: float,
    ) -> None:
        self._events[(namespace, key)] = events
        events.append(event)
        self._extend(_EVENTS, namespace, key, event[0] + window)

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
        self._expire(now)
        events = self._window(namespace, key, now, window)
        if len(events) >= max_events or (events and now - events[-1][0] < min_interval):
            return False
        self._record(namespace, key, events, (now, ""), window)
        return True

    async def reserve(
        self, namespace: str, key: str, now: float, *, max_events: int, window: float
    ) -> str | None:
        self._expire(now)
        events = self._window(namespace, key, now, window)
        if len(events) >= max_events:
            return None
        token = unique_token()
        self._record(namespace, key, events, (now, token), window)
        return token

    async def release(self, namespace: str, key: str, token: str) -> None:
        events = self._events.get((namespace, key))
        if events is None:
            return
        for event in events:
            if event[1] == token:
                events.remove(event)
                return

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        self._expire(now)
        return len(self._window(namespace, key, now, window))

    async def size(self, namespace: str, now: float) -> int:
        self._expire(now)
        return self._live[namespace]

    async def close(self) -> None:
        self._values.clear()
        self._events.clear()
        self._groups.clear()
        self._until.clear()
        self._live.clear()
        self._heap.clear()


# Kinds of entries in the expiry heap.
_VALUE, _EVENTS, _GROUP = 0, 1, 2
