"""The password-guessing rule (core/throttle.py): the documented numbers, and the
properties that make it safe whatever a guesser does (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.config.throttle import PasswordThrottleConfig
from mfaproxy.core.throttle import Rule, first_refusal, in_window, next_allowed, wait_after

DEFAULTS = PasswordThrottleConfig()
USER = Rule.from_settings(DEFAULTS.user)
SOURCE = Rule.from_settings(DEFAULTS.source)


def test_the_documented_user_rule() -> None:
    """README "Security": 5 free failures, then 1 s doubling to the 15-minute soft
    lock, at most 100 failures in 24 hours."""
    assert (USER.window, USER.free_failures, USER.max_failures) == (86400, 5, 100)
    waits = [wait_after(USER, n) for n in range(4, 17)]
    assert waits == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
    assert (SOURCE.window, SOURCE.free_failures, SOURCE.max_failures) == (3600, 20, 1000)


def guesser(rule: Rule, start: float, horizon: float) -> list[float]:
    """A guesser who tries the moment each attempt is allowed: every failure it gets."""
    events: list[float] = []
    now = start
    while now < start + horizon:
        live = in_window(rule, events, now)
        at = next_allowed(rule, live, now)
        if now < at:
            now = at
            continue
        events.append(now)
    return events


def test_a_relentless_guesser_gets_at_most_max_failures_per_window() -> None:
    events = guesser(USER, 0.0, 3 * USER.window)
    for t in events:
        assert sum(1 for e in events if t <= e < t + USER.window) <= USER.max_failures
    # and the rule does bite: far fewer than one guess a second
    assert len(events) <= 3 * USER.max_failures


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    free = draw(st.integers(0, 20))
    maximum = draw(st.integers(free + 1, 120))
    initial = draw(st.floats(0.01, 100))
    lock = draw(st.floats(initial, 5000))
    window = draw(st.floats(lock, 100_000))
    return Rule(window, free, initial, lock, maximum)


@given(rule=rules(), gaps=st.lists(st.floats(0, 2000), max_size=150))
def test_no_wait_outlasts_the_lock_or_the_window(rule: Rule, gaps: list[float]) -> None:
    events: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        live = in_window(rule, events, now)
        at = next_allowed(rule, live, now)
        if live:
            # A wait ends at most lock_seconds after the newest failure, or at the
            # ceiling when the oldest relevant failure leaves the window.
            assert at <= max(live[-1] + rule.lock_seconds, live[0] + rule.window)
        if now >= at:
            events.append(now)


@given(rule=rules(), times=st.lists(st.floats(0, 10_000), min_size=1, max_size=150))
def test_more_failures_never_allow_earlier(rule: Rule, times: list[float]) -> None:
    times.sort()
    now = times[-1]
    live = in_window(rule, times, now)
    assert next_allowed(rule, live[:-1], now) <= next_allowed(rule, live, now)


@given(rule=rules(), count=st.integers(0, 200), now=st.floats(0, 1e9))
def test_the_ceiling_refuses(rule: Rule, count: int, now: float) -> None:
    events = [now] * count  # a burst at one instant
    refusal = first_refusal([(rule, events)], now)
    if count >= rule.max_failures or (count >= rule.free_failures and count > 0):
        assert refusal is not None and refusal.retry_at > now
    else:
        assert refusal is None


def test_first_refusal_names_the_counter() -> None:
    burst = [10.0] * 30
    refusal = first_refusal([(USER, []), (SOURCE, burst)], 10.0)
    assert refusal is not None and refusal.index == 1
    assert refusal.retry_at == 10.0 + wait_after(SOURCE, 30)
