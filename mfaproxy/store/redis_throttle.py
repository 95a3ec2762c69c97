"""Password-guessing counters in the cluster's Redis: the `Throttle` contract of
store/throttle.py on the `RedisStateStore`'s connection pool and key scheme.

Each counter is a sorted set `{key_prefix}:password_failures:e:{name}` of event tokens
scored by time. One Lua script applies the rule of core/throttle.py to every counter of
an attempt and records the attempt in all of them only when none refuses, so it is
atomic across instances. Times come from the caller (wall-clock `now`, as for the state
store) and are passed as exact decimal strings: Lua would print numbers with 14
significant digits only. Redis expires a counter `window` plus a margin after its
newest event. Failures raise `StateStoreUnavailable`, like the state store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.typing import EncodableT

from mfaproxy.core.throttle import MAX_EXPONENT, Refusal
from mfaproxy.store.redis_state import EXPIRY_MARGIN, RedisStateStore
from mfaproxy.store.throttle import Counter

NAMESPACE = "password_failures"

# KEYS: one sorted set per counter. ARGV: mode (reserve | check | add), now, token,
# then per counter: cutoff (now - window), window, free, initial delay, lock, max, px.
# Returns {0} when the attempt may go (and, for reserve and add, was recorded), or
# {index, retry_at} for the first counter (1-based) that refuses it.
APPLY = f"""
local mode, now, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function next_allowed(key, base)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[base])
  local window, free = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local initial, lock, max = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]),
    tonumber(ARGV[base + 5])
  local n = redis.call('ZCARD', key)
  if n >= max then
    local oldest = redis.call('ZRANGE', key, n - max, n - max, 'WITHSCORES')
    return tonumber(oldest[2]) + window
  end
  if n == 0 or n < free then
    return now
  end
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local exponent = math.min(n - free, {MAX_EXPONENT})
  return tonumber(newest[2]) + math.min(initial * 2 ^ exponent, lock)
end
if mode ~= 'add' then
  for i, key in ipairs(KEYS) do
    local at = next_allowed(key, 4 + (i - 1) * 7)
    if now < at then
      return {{i, string.format('%.17g', at)}}
    end
  end
end
if mode ~= 'check' then
  for i, key in ipairs(KEYS) do
    local base = 4 + (i - 1) * 7
    redis.call('ZADD', key, ARGV[2], token)
    if redis.call('PTTL', key) < tonumber(ARGV[base + 6]) then
      redis.call('PEXPIRE', key, ARGV[base + 6])
    end
  end
end
return {{0}}
"""

# KEYS: counters. ARGV: token. Removes the event from each.
RELEASE = """
for _, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[1])
end
"""

# KEYS: one counter. Forgets it.
CLEAR = "redis.call('DEL', KEYS[1])"


def _px(window: float) -> int:
    """Milliseconds Redis keeps a counter after its newest event."""
    return math.ceil((window + EXPIRY_MARGIN) * 1000)


class RedisThrottle:
    def __init__(self, store: RedisStateStore) -> None:
        self._store = store
        self._apply = store.register_script(APPLY)
        self._release = store.register_script(RELEASE)
        self._clear = store.register_script(CLEAR)

    def _name(self, name: str) -> bytes:
        return self._store.key(NAMESPACE, "e", name)

    async def _run(
        self, mode: str, counters: Sequence[Counter], token: str, now: float
    ) -> Refusal | None:
        keys = [self._name(name) for name, _rule in counters]
        args: list[EncodableT] = [mode, repr(now), token]
        for _name, rule in counters:
            args += [repr(now - rule.window), repr(rule.window), rule.free_failures]
            args += [repr(rule.initial_delay), repr(rule.lock_seconds), rule.max_failures]
            args.append(_px(rule.window))
        result: list[Any] = await self._store.call(f"throttle_{mode}", self._apply(keys, args))
        if int(result[0]) == 0:
            return None
        return Refusal(int(result[0]) - 1, float(result[1]))

    async def reserve(self, counters: Sequence[Counter], token: str, now: float) -> Refusal | None:
        return await self._run("reserve", counters, token, now)

    async def check(self, counter: Counter, now: float) -> float | None:
        refusal = await self._run("check", [counter], "", now)
        return refusal.retry_at if refusal is not None else None

    async def add(self, counter: Counter, token: str, now: float) -> None:
        await self._run("add", [counter], token, now)

    async def release(self, names: Sequence[str], token: str) -> None:
        if names:
            keys = [self._name(name) for name in names]
            await self._store.call("throttle_release", self._release(keys, [token]))

    async def clear(self, name: str) -> None:
        await self._store.call("throttle_clear", self._clear([self._name(name)], []))

    async def close(self) -> None:
        """The connection pool is the state store's: closed with it."""
