"""Bounded memory in the memory state store: entries leave on time, not when a cap is
reached; the gauges' `size` is a counter that agrees with the live entries; a steady
churn of challenges holds memory flat. (The behaviour both stores share is in
test_state_contract.py.)"""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from mfaproxy.store.state import MemoryStateStore

NOW = 1_700_000_000.0


async def test_expired_sessions_are_gone_not_just_hidden() -> None:
    store = MemoryStateStore()
    for i in range(10_000):
        await store.put("challenge", f"s{i}", {"user": f"u{i}"}, 120, NOW)
    assert len(store) == 10_000
    assert await store.size("challenge", NOW + 60) == 10_000
    # Any call after the lifetime frees them all (no sweep waits for a million entries).
    assert await store.size("challenge", NOW + 121) == 0
    assert len(store) == 0


async def test_rate_limit_windows_leave_when_their_window_ends() -> None:
    store = MemoryStateStore()
    for i in range(5_000):
        assert await store.rate_limit(
            "nas", f"10.0.{i // 250}.{i % 250}", NOW, max_events=3, window=60
        )
    assert len(store) == 5_000
    assert await store.count("nas", "10.0.0.1", NOW + 61, 60) == 0
    assert len(store) == 0
    # Asking about a key never seen creates nothing.
    assert await store.count("nas", "192.0.2.1", NOW + 62, 60) == 0
    assert len(store) == 0


async def test_a_window_asked_for_longer_keeps_its_events() -> None:
    store = MemoryStateStore()
    assert await store.rate_limit("user", "bob", NOW, max_events=10, window=10)
    assert await store.rate_limit("user", "bob", NOW + 1, max_events=10, window=600)
    assert await store.count("user", "bob", NOW + 300, 600) == 2


async def test_memory_stays_flat_under_a_steady_churn_of_challenges() -> None:
    """One challenge a second, each answered (taken) or abandoned (expires after
    120 s): the peak memory of the third hour of virtual time is the first hour's."""
    store = MemoryStateStore()

    async def churn(start: int, seconds: int) -> int:
        tracemalloc.reset_peak()
        for t in range(start, start + seconds):
            now = NOW + t
            await store.put("challenge", f"s{t}", {"user": "u", "pad": "x" * 200}, 120, now)
            if t % 2:
                await store.take("challenge", f"s{t - 1}", now)
            await store.rate_limit("nas", f"n{t % 50}", now, max_events=100, window=60)
        return tracemalloc.get_traced_memory()[1]

    tracemalloc.start()
    try:
        await churn(0, 600)  # warm up
        first_hour = await churn(600, 3600)
        third_hour = await churn(7800, 3600)
    finally:
        tracemalloc.stop()
    assert len(store) <= 120 + 50
    assert third_hour < first_hour * 1.1, (first_hour, third_hour)


operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "put_if_absent", "take", "delete", "get", "size"]),
        st.sampled_from(["challenge", "other"]),
        st.integers(0, 6),  # key
        st.floats(0.5, 50),  # ttl
        st.floats(0, 20),  # time advance
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(operations)
async def test_size_and_contents_agree_with_a_model(
    ops: list[tuple[str, str, int, float, float]],
) -> None:
    store = MemoryStateStore()
    model: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}
    now = NOW
    for index, (op, namespace, number, ttl, advance) in enumerate(ops):
        now += advance
        key = f"k{number}"
        model = {k: v for k, v in model.items() if v[0] > now}
        live = model.get((namespace, key))
        value = {"i": index}
        if op == "put":
            await store.put(namespace, key, value, ttl, now)
            model[(namespace, key)] = (now + ttl, value)
        elif op == "put_if_absent":
            found = await store.put_if_absent(namespace, key, value, ttl, now)
            assert found == (live[1] if live else None)
            if live is None:
                model[(namespace, key)] = (now + ttl, value)
        elif op == "take":
            assert await store.take(namespace, key, now) == (live[1] if live else None)
            model.pop((namespace, key), None)
        elif op == "delete":
            await store.delete(namespace, key)
            model.pop((namespace, key), None)
        elif op == "get":
            assert await store.get(namespace, key, now) == (live[1] if live else None)
        for ns in ("challenge", "other"):
            assert await store.size(ns, now) == sum(1 for k in model if k[0] == ns)
        assert len(store) == len(model)


async def test_the_last_resort_cap_evicts_the_nearest_expiry_first() -> None:
    store = MemoryStateStore(max_entries=100)
    for i in range(150):
        await store.put("challenge", f"s{i}", {"i": i}, 1000 + i, NOW)
    assert len(store) == 100
    assert await store.get("challenge", "s0", NOW) is None  # expired soonest: evicted
    assert await store.get("challenge", "s149", NOW) == {"i": 149}
