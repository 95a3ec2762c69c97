"""Sealed shared state: every value read back from a state store is authenticated first.

`SealedStateStore` wraps any `StateStore` (memory and Redis alike; the daemon builds it
in daemon/server.py). Each value is sealed with AES-256-GCM (store/crypto.py
`SecretBox`) under a subkey of the master key derived for this purpose alone (HKDF info
`mfaproxy shared state v1`), and the associated data names the namespace and the key
(for a challenge session, its State). So a value that was edited, forged without the
key, or moved under another key or namespace (a session copied to another State, a
duplicate-table reply copied to another request) does not open. The plaintext also
carries the value's expiry: an old value put back after it expired (with the store's
own expiry pushed out) does not open either. Sealing encrypts as well, so a pending
enrolment secret in Redis is no longer readable there.

A value that does not open is treated as absent (the engine then answers
`unknown_state`), counted in `mfaproxy_state_rejected_total{namespace, reason}` and
logged as `state_value_rejected` with the namespace and the reason, never the key (it
may be a State) or the value. Reasons: `malformed` (not a sealed envelope),
`unauthentic` (the tag does not verify: edited, moved, forged or another key),
`expired` (authentic, but past the expiry sealed into it: a replay).

What sealing cannot do: stop someone with write access from deleting values or rate
limit events (that resets counters), or from putting a value back under its own key
before its sealed expiry. That is why a shared Redis needs a password and TLS
(config/mfaproxy-cluster.yaml, README "Security").
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import structlog

from mfaproxy.errors import DecryptionError
from mfaproxy.observability import metrics
from mfaproxy.store.crypto import SecretBox
from mfaproxy.store.state import JsonDict, StateStore

log = structlog.get_logger(__name__)

SEAL_INFO = b"mfaproxy shared state v1"
ENVELOPE_FIELD = "sealed"


def record_id(namespace: str, key: str) -> str:
    """The associated data of one slot. The namespace is length-prefixed, so no two
    (namespace, key) pairs share a record id whatever characters they contain."""
    return f"state:{len(namespace)}:{namespace}:{key}"


class Rejected(Exception):
    """A stored value failed authentication; `reason` is the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SealedStateStore:
    """A `StateStore` that seals on the way in and authenticates on the way out."""

    def __init__(self, inner: StateStore, master_key: bytes) -> None:
        self.inner = inner
        self._box = SecretBox(master_key, info=SEAL_INFO)

    # ------------------------------------------------------------------ sealing

    def seal(self, namespace: str, key: str, value: JsonDict, expires: float) -> JsonDict:
        plaintext = json.dumps({"expires": expires, "value": value}, separators=(",", ":"))
        blob = self._box.seal(record_id(namespace, key), plaintext.encode())
        return {ENVELOPE_FIELD: base64.b64encode(blob).decode("ascii")}

    def open(self, namespace: str, key: str, envelope: Any, now: float) -> JsonDict:
        """The value sealed in `envelope`; raises `Rejected` when it does not open."""
        text = envelope.get(ENVELOPE_FIELD) if isinstance(envelope, dict) else None
        if not isinstance(text, str) or len(envelope) != 1:
            raise Rejected("malformed")
        try:
            blob = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("malformed") from None
        try:
            plaintext = self._box.open(record_id(namespace, key), blob)
        except DecryptionError:
            raise Rejected("unauthentic") from None
        sealed = json.loads(plaintext)  # authentic, so it is the JSON we wrote
        if float(sealed["expires"]) <= now:
            raise Rejected("expired")
        value: JsonDict = sealed["value"]
        return value

    def _read(
        self, namespace: str, key: str, envelope: JsonDict | None, now: float
    ) -> JsonDict | None:
        if envelope is None:
            return None
        try:
            return self.open(namespace, key, envelope, now)
        except Rejected as exc:
            metrics.STATE_REJECTED.labels(namespace=namespace, reason=exc.reason).inc()
            log.warning("state_value_rejected", namespace=namespace, reason=exc.reason)
            return None

    # ------------------------------------------------------------------ StateStore

    async def put(self, namespace: str, key: str, value: JsonDict, ttl: float, now: float) -> None:
        sealed = self.seal(namespace, key, value, now + ttl)
        await self.inner.put(namespace, key, sealed, ttl, now)

    async def put_if_absent(
        self, namespace: str, key: str, value: JsonDict, ttl: float, now: float
    ) -> JsonDict | None:
        sealed = self.seal(namespace, key, value, now + ttl)
        current = await self.inner.put_if_absent(namespace, key, sealed, ttl, now)
        if current is None:
            return None
        found = self._read(namespace, key, current, now)
        if found is not None:
            return found
        # What sits there is not ours: it counts as absent, so ours replaces it.
        await self.inner.put(namespace, key, sealed, ttl, now)
        return None

    async def get(self, namespace: str, key: str, now: float) -> JsonDict | None:
        return self._read(namespace, key, await self.inner.get(namespace, key, now), now)

    async def take(self, namespace: str, key: str, now: float) -> JsonDict | None:
        return self._read(namespace, key, await self.inner.take(namespace, key, now), now)

    async def delete(self, namespace: str, key: str) -> None:
        await self.inner.delete(namespace, key)

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
        return await self.inner.rate_limit(
            namespace, key, now, max_events=max_events, window=window, min_interval=min_interval
        )

    async def reserve(
        self, namespace: str, key: str, now: float, *, max_events: int, window: float
    ) -> str | None:
        return await self.inner.reserve(namespace, key, now, max_events=max_events, window=window)

    async def release(self, namespace: str, key: str, token: str) -> None:
        await self.inner.release(namespace, key, token)

    async def count(self, namespace: str, key: str, now: float, window: float) -> int:
        return await self.inner.count(namespace, key, now, window)

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
        sealed = self.seal(namespace, key, value, now + ttl)
        return await self.inner.put_bounded(
            namespace, key, sealed, ttl, now, group=group, limit=limit
        )

    async def size(self, namespace: str, now: float) -> int:
        return await self.inner.size(namespace, now)

    async def close(self) -> None:
        await self.inner.close()
