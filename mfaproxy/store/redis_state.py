"""Shared ephemeral state in Redis (`redis.asyncio`), for several mfaproxy instances.

`RedisStateStore` implements the `StateStore` contract of `mfaproxy.store.state`. Every
check-and-set is one Lua script, so it runs atomically on the server: two instances can
never both `take` one challenge session, and `rate_limit` admits exactly `max_events`
however many instances race for them.

Expiry contract (shared with `MemoryStateStore`). The caller's `now` decides: `put`
stores `expires = now + ttl` inside the value and `get`/`take`/`size` compare it with
their own `now`, exactly as the memory store does; rate-limit events are scored with
`now`. Redis' own expiry (PX / PEXPIRE of `ttl` or `window` plus `EXPIRY_MARGIN`) is
only a safety net that reclaims memory. So tests can drive both stores with virtual
time, and several instances agree as long as their clocks are synchronised: with a
shared store, `now` must be wall-clock time (`time.time()`), never a per-process
monotonic clock. The margin covers clock skew between instances.

Keys: `{key_prefix}:{namespace}:v:{key}` holds a value, `{key_prefix}:{namespace}:e:{key}`
the events of a rate limit or reservation (a sorted set scored by time),
`{key_prefix}:{namespace}:index` the live values of a namespace scored by expiry (for
`size`, and for `put_bounded` to tell live members), `{key_prefix}:{namespace}:g:{group}`
the members of a `put_bounded` group in creation order and `...:s:{group}` its sequence.
`:` and `%` in a namespace are percent-encoded so that no two (namespace, key) pairs
share a Redis key. The keys of one call are not in one hash slot: Redis Cluster is not
supported (Sentinel is).

Failures: when Redis cannot be reached or answers with an error, every method raises
`StateStoreUnavailable` after at most about two socket timeouts (one transparent retry
on a broken connection, which is what makes a restarted Redis invisible to callers);
the engine applies its failmode. redis-py reconnects on the next command, so the store
recovers by itself. `mfaproxy_upstream_up{service="redis"}` and
`mfaproxy_upstream_duration_seconds{service="redis"}` follow every call; the transitions
down and up are logged once each.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.typing import EncodableT

from mfaproxy.config.stores import RedisSettings, parse_sentinel
from mfaproxy.errors import StateStoreUnavailable
from mfaproxy.observability import metrics
from mfaproxy.store.state import JsonDict

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Seconds Redis keeps a value or an event set beyond its logical expiry.
EXPIRY_MARGIN = 5.0


# --------------------------------------------------------------------------- scripts

# KEYS: value, index. ARGV: payload, px, member, expires, now.
PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
"""

# KEYS: value, index. ARGV: payload, px, member, expires, now. Stores the payload
# unless a live value is there; returns that value (nil when ours was stored). A
# value whose logical expiry (inside the JSON) has passed counts as absent.
PUT_IF_ABSENT = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and tonumber(decoded['expires']) > tonumber(ARGV[5]) then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return false
"""

# KEYS: value, index. ARGV: member. Returns the payload or nil; nobody else gets it.
TAKE = """
local payload = redis.call('GET', KEYS[1])
if payload then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return payload
"""

# KEYS: events. ARGV: now, window start, max events, min interval, member, px.
# Returns 1 when the event is recorded, 0 when refused (and then nothing changes
# but the removal of events that left the window).
RATE_LIMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] and now - tonumber(last[2]) < tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return 1
"""


# KEYS: value, index, group, group sequence. ARGV: payload, px, member, expires, now,
# limit, value-key prefix. Stores the value (as PUT), appends the member to its group
# in creation order (a sequence number, so equal clocks keep the order), forgets the
# members that are no longer live (taken: gone from the index; expired: scored at or
# before now) and deletes the oldest beyond the limit. Returns the deleted members.
# The value keys of the other members are built from the prefix: like the rest of
# this store, not for Redis Cluster.
PUT_BOUNDED = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], seq, ARGV[3])
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  if redis.call('PTTL', key) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
local live = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local expires = redis.call('ZSCORE', KEYS[2], member)
  if expires and tonumber(expires) > tonumber(ARGV[5]) then
    table.insert(live, member)
  else
    redis.call('ZREM', KEYS[3], member)
  end
end
local retired = {}
for i = 1, #live - tonumber(ARGV[6]) do
  local member = live[i]
  redis.call('DEL', ARGV[7] .. member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
  table.insert(retired, member)
end
return retired
"""


def _px(seconds: float) -> int:
    """Milliseconds Redis keeps a key: the logical lifetime plus the safety margin."""
    total = seconds + EXPIRY_MARGIN
    return max(1, math.ceil(total * 1000)) if math.isfinite(total) else 2**62


def _encode(text: str) -> bytes:
    # Keys may come from packets (user names): never fail on odd code points.
    return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- store


class RedisStateStore:
    """`StateStore` on Redis. Create it once per configuration; it connects lazily, so
    construction never fails on an unreachable server. `close()` releases the pool."""

    def __init__(self, settings: RedisSettings):
        self.settings = settings
        self._server = settings.server_label()
        self._root = settings.key_prefix
        self._up: bool | None = None
        self._sentinel: Sentinel | None = None
        self._client = self._connect(settings)
        self._put = self._client.register_script(PUT)
        self._take = self._client.register_script(TAKE)
        self._put_if_absent = self._client.register_script(PUT_IF_ABSENT)
        self._rate_limit = self._client.register_script(RATE_LIMIT)
        self._put_bounded = self._client.register_script(PUT_BOUNDED)

    def _connect(self, settings: RedisSettings) -> Redis:
        # Retry once, at once, on a broken connection (a restarted server): redis-py
        # then opens a new one. Timeouts are not retried: they would only add latency.
        options: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": 30,
        }
        if settings.username is not None:
            options["username"] = settings.username
        if settings.password is not None:
            options["password"] = settings.password.get_secret_value()
        if settings.tls_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.tls_ca_file)
        if settings.url is not None:
            return Redis.from_url(settings.url, **options)
        if settings.tls:
            options["ssl"] = True
        sentinel_options = {k: v for k, v in options.items() if k != "username"}
        sentinel_options.pop("password", None)  # sentinels usually have no AUTH
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [parse_sentinel(item) for item in settings.sentinels],
            sentinel_kwargs=sentinel_options,
            **options,
        )
        assert settings.service_name is not None  # checked by RedisSettings
        client: Redis = self._sentinel.master_for(settings.service_name, db=settings.db)
        return client

    # ------------------------------------------------------------------ plumbing

    def _key(self, namespace: str, kind: str, key: str = "") -> bytes:
        safe = namespace.replace("%", "%25").replace(":", "%3A")
        suffix = f"{kind}:{key}" if kind != "index" else kind
        return _encode(f"{self._root}:{safe}:{suffix}")

    async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            self._observe("failure", started)
            if self._up is not False:
                log.warning("state_store_down", server=self._server, op=operation, error=repr(exc))
            self._up = False
            raise StateStoreUnavailable(
                f"redis {self._server}: {operation}: {type(exc).__name__}"
            ) from exc
        self._observe("ok", started)
        if self._up is False:
            log.info("state_store_up", server=self._server)
        self._up = True
        return result

    def _observe(self, result: str, started: float) -> None:
        metrics.UPSTREAM_LATENCY.labels(service="redis", result=result).observe(
            time.monotonic() - started
        )
        metrics.UPSTREAM_UP.labels(service="redis", server=self._server).set(
            1 if result == "ok" else 0
        )

    @staticmethod
    def _decode(raw: Any, now: float) -> JsonDict | None:
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            expires, value = float(stored["expires"]), stored["value"]
        except (ValueError, TypeError, KeyError):
            log.warning("state_store_bad_value")
            return None
        if expires <= now or not isinstance(value, dict):
            return None
        return value

    # ------------------------------------------------------------------ StateStore

    async def put(self, namespace: str, key: str, value: JsonDict, ttl: float, now: float) -> None:
        expires = now + ttl
        payload = json.dumps({"expires": expires, "value": value}, separators=(",", ":"))
        keys = [self._key(namespace, "v", key), self._key(namespace, "index")]
        args: list[EncodableT] = [payload, _px(ttl), _encode(key), repr(expires), repr(now)]
        await self._call("put", self._put(keys, args))

    async def put_if_absent(
        self, namespace: str, key: str, value: JsonDict, ttl: float, now: float
    ) -> JsonDict | None:
        expires = now + ttl
        payload = json.dumps({"expires": expires, "value": value}, separators=(",", ":"))
        keys = [self._key(namespace, "v", key), self._key(namespace, "index")]
        args: list[EncodableT] = [payload, _px(ttl), _encode(key), repr(expires), repr(now)]
        raw = await self._call("put_if_absent", self._put_if_absent(keys, args))
        return self._decode(raw, now)

    async def get(self, namespace: str, key: str, now: float) -> JsonDict | None:
        raw = await self._call("get", self._client.get(self._key(namespace, "v", key)))
        return self._decode(raw, now)

    async def take(self, namespace: str, key: str, now: float) -> JsonDict | None:
        keys = [self._key(namespace, "v", key), self._key(namespace, "index")]
        raw = await self._call("take", self._take(keys, [_encode(key)]))
        return self._decode(raw, now)

    async def delete(self, namespace: str, key: str) -> None:
        keys = [self._key(namespace, "v", key), self._key(namespace, "index")]
        await self._call("delete", self._take(keys, [_encode(key)]))

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
        member = f"{now!r}:{secrets.token_hex(8)}"
        args: list[EncodableT] = [repr(now), repr(now - window), max_events]
        args += [repr(min_interval), member, _px(window)]
        keys = [self._key(namespace, "e", key)]
        recorded = await self._call("rate_limit", self._rate_limit(keys, args))
        return bool(recorded)

    async def reserve(
        self, namespace: str, key: str, now: float, *, max_events: int, window: float
    ) -> str | None:
        member = f"{now!r}:{secrets.token_hex(8)}"
        args: list[EncodableT] = [repr(now), repr(now - window), max_events]
        args += ["0", member, _px(window)]
        keys = [self._key(namespace, "e", key)]
        recorded = await self._call("reserve", self._rate_limit(keys, args))
        return member if recorded else None

    async def release(self, namespace: str, key: str, token: str) -> None:
        events = self._key(namespace, "e", key)
        await self._call("release", self._client.zrem(events, token))

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
        expires = now + ttl
        payload = json.dumps({"expires": expires, "value": value}, separators=(",", ":"))
        keys = [
            self._key(namespace, "v", key),
            self._key(namespace, "index"),
            self._key(namespace, "g", group),
            self._key(namespace, "s", group),
        ]
        args: list[EncodableT] = [payload, _px(ttl), _encode(key), repr(expires), repr(now)]
        args += [limit, self._key(namespace, "v", "")]
        retired = await self._call("put_bounded", self._put_bounded(keys, args))
        return [m.decode("utf-8", "surrogatepass") if isinstance(m, bytes) else m for m in retired]

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        key_name = self._key(namespace, "e", key)
        found = await self._call(
            "count", self._client.zcount(key_name, f"({now - window!r}", "+inf")
        )
        return int(found)

    async def size(self, namespace: str, now: float) -> int:
        index = self._key(namespace, "index")
        found = await self._call("size", self._client.zcount(index, f"({now!r}", "+inf"))
        return int(found)

    # ------------------------------------------------------------------ for other
    # Redis-backed parts of mfaproxy (store/redis_throttle.py): one connection pool,
    # one key scheme, one way failures become StateStoreUnavailable.

    def register_script(self, source: str) -> AsyncScript:
        return self._client.register_script(source)

    def key(self, namespace: str, kind: str, key: str = "") -> bytes:
        """The Redis key of (namespace, kind, key), in this store's key scheme."""
        return self._key(namespace, kind, key)

    async def call(self, operation: str, awaitable: Awaitable[T]) -> T:
        """Await a Redis command: metered, and StateStoreUnavailable when it fails."""
        return await self._call(operation, awaitable)

    async def ping(self) -> None:
        """Raise `StateStoreUnavailable` unless Redis answers (for readiness checks)."""
        await self._call("ping", self._client.ping())

    async def close(self) -> None:
        clients = [self._client, *(self._sentinel.sentinels if self._sentinel else [])]
        for client in clients:
            try:
                await client.aclose()
            except (RedisError, OSError) as exc:
                log.debug("state_store_close_failed", error=repr(exc))
