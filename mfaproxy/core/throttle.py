"""The password-guessing rule: when may the next attempt on a counter go through. Pure.

A counter holds the times of failed attempts (and of attempts still being checked)
in a sliding window. With `n` of them in the window:

- `n < free_failures` (or none at all): the next attempt may go at once;
- `free_failures <= n < max_failures`: it waits `initial_delay * 2 ** (n - free)`
  after the newest failure, at most `lock_seconds` (so the wait doubles with each
  further failure until it reaches the soft lock);
- `n >= max_failures`: it waits until the oldest failure that keeps `n` at the
  ceiling leaves the window (`events[n - max_failures] + window`).

Attempts refused while waiting are not recorded, so nobody can extend a wait by
knocking: every wait ends at most `lock_seconds` (or, at the ceiling, `window`) after
the last failure that was let through. The stores (store/throttle.py: memory, and a
Lua script on Redis) apply this same function atomically with the recording.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mfaproxy.config.throttle import BackoffSettings

# 2**64 seconds is far beyond any lock: larger exponents change nothing but could
# overflow a float.
MAX_EXPONENT = 64


@dataclass(frozen=True)
class Rule:
    window: float
    free_failures: int
    initial_delay: float
    lock_seconds: float
    max_failures: int

    @classmethod
    def from_settings(cls, settings: BackoffSettings) -> Rule:
        return cls(
            settings.window_seconds,
            settings.free_failures,
            settings.initial_delay_seconds,
            settings.lock_seconds,
            settings.max_failures,
        )


def wait_after(rule: Rule, failures: int) -> float:
    """Seconds the next attempt waits after the newest of `failures` (below the ceiling)."""
    if failures < rule.free_failures:
        return 0.0
    exponent = min(failures - rule.free_failures, MAX_EXPONENT)
    return min(rule.initial_delay * 2.0**exponent, rule.lock_seconds)


def in_window(rule: Rule, events: Iterable[float], now: float) -> list[float]:
    """The events still in the window at `now`, oldest first (one `window` old is out)."""
    return sorted(t for t in events if t > now - rule.window)


def next_allowed(rule: Rule, events: Sequence[float], now: float) -> float:
    """When the next attempt may go (`now` or earlier: at once). `events` are the
    counter's failures still in the window, oldest first."""
    count = len(events)
    if count >= rule.max_failures:
        return events[count - rule.max_failures] + rule.window
    if count == 0 or count < rule.free_failures:
        return now
    return events[-1] + wait_after(rule, count)


@dataclass(frozen=True)
class Refusal:
    """A counter said wait: which one (its index in the reserved list) and until when."""

    index: int
    retry_at: float


def first_refusal(counters: Sequence[tuple[Rule, Sequence[float]]], now: float) -> Refusal | None:
    """The first counter that refuses an attempt at `now`, or None when all allow it."""
    for index, (rule, events) in enumerate(counters):
        at = next_allowed(rule, events, now)
        if now < at:
            return Refusal(index, at)
    return None
