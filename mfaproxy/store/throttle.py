"""Where the password-guessing counters live: `Throttle` is the contract,
`MemoryThrottle` keeps them in this process, `RedisThrottle` (store/redis_throttle.py)
in the shared Redis of a cluster.

A counter is a named set of events (times of failed attempts) judged by a
core/throttle.py `Rule`. The one operation that matters is `reserve`: it checks every
counter of an attempt and, only when none refuses, records the attempt in all of them,
in one atomic step. So N concurrent guesses never get more than the rule allows, and
an attempt refused by one counter (a source that is locked) costs nothing in the
others (the user's), which would let a locked source lock the user out. The caller
then keeps the event (a wrong password) or releases it (a right one, an outage).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mfaproxy.core.throttle import Refusal, Rule, first_refusal, in_window, next_allowed

Counter = tuple[str, Rule]


class Throttle(Protocol):
    async def reserve(self, counters: Sequence[Counter], token: str, now: float) -> Refusal | None:
        """Unless a counter refuses an attempt at `now` (returned), record event `token`
        at `now` in every counter. Atomic: nothing is recorded when one refuses."""
        ...

    async def check(self, counter: Counter, now: float) -> float | None:
        """When the counter would let an attempt through, if not at `now`; records nothing."""
        ...

    async def add(self, counter: Counter, token: str, now: float) -> None:
        """Record event `token` whatever the rule says (a failure learnt afterwards)."""
        ...

    async def release(self, names: Sequence[str], token: str) -> None:
        """Remove event `token` from these counters (the attempt was no failure)."""
        ...

    async def clear(self, name: str) -> None:
        """Forget every event of a counter."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Events:
    window: float
    times: dict[str, float] = field(default_factory=dict)  # token -> time

    def live(self, rule: Rule, now: float) -> list[float]:
        cutoff = now - rule.window
        self.times = {token: t for token, t in self.times.items() if t > cutoff}
        return in_window(rule, self.times.values(), now)


class MemoryThrottle:
    """One process. Methods never suspend, so each is atomic on the event loop.

    Memory is bounded: past `max_counters` counters, the one whose newest failure is
    the oldest goes (counters are kept in the order of their newest failure, so that
    is one step, never a pass over all of them: a flood of made-up names reaching the
    cap once stalled the event loop for seconds while a million counters were sorted).
    An attempt that a counter refuses records nothing, and creates no counter either."""

    def __init__(self, max_counters: int = 1_000_000) -> None:
        self._counters: OrderedDict[str, _Events] = OrderedDict()
        self._max = max_counters

    def _record(self, name: str, rule: Rule, token: str, now: float) -> None:
        events = self._counters.get(name)
        if events is None:
            events = self._counters[name] = _Events(rule.window)
        events.window = max(events.window, rule.window)
        events.times[token] = now
        self._counters.move_to_end(name)
        while len(self._counters) > self._max:
            self._counters.popitem(last=False)

    async def reserve(self, counters: Sequence[Counter], token: str, now: float) -> Refusal | None:
        found = [(rule, self._counters.get(name)) for name, rule in counters]
        live = [(rule, events.live(rule, now) if events else []) for rule, events in found]
        refusal = first_refusal(live, now)
        if refusal is None:
            for name, rule in counters:
                self._record(name, rule, token, now)
        return refusal

    async def check(self, counter: Counter, now: float) -> float | None:
        name, rule = counter
        events = self._counters.get(name)
        if events is None:
            return None
        at = next_allowed(rule, events.live(rule, now), now)
        return at if now < at else None

    async def add(self, counter: Counter, token: str, now: float) -> None:
        name, rule = counter
        self._record(name, rule, token, now)

    async def release(self, names: Sequence[str], token: str) -> None:
        for name in names:
            events = self._counters.get(name)
            if events is not None:
                events.times.pop(token, None)

    async def clear(self, name: str) -> None:
        self._counters.pop(name, None)

    async def close(self) -> None:
        self._counters.clear()
