"""Trusted reconnects, the I/O side (the rules: core/trust.py).

A pass is kept in the state store, so every node of a cluster sees it, under a key that
is an HMAC of (identity, client, Calling-Station-Id) with a subkey of the master key:
Redis shows neither who nor from where. The value is sealed like every state-store
value (store/sealed.py, with the namespace and that key as associated data), so an
edited value, one moved under another user's, NAS's or station's key, or one put back
after it expired does not open, and counts as no pass. Its lifetime is the longest
window of the active `trusted_reconnect` rules; each rule checks its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from mfaproxy.config.schema import Config, RepliesConfig
from mfaproxy.core import replies
from mfaproxy.core import trust as rules
from mfaproxy.core.answer import Answer
from mfaproxy.core.identity import identity_key
from mfaproxy.core.primary import PrimaryResult
from mfaproxy.core.trust import NOT_KNOWN, TrustFact, UserLimits
from mfaproxy.observability import metrics
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.crypto import derive_key
from mfaproxy.store.records import UserRecord
from mfaproxy.store.state import StateStore

KEY_INFO = b"mfaproxy trusted reconnect key v1"


def limits_of(record: UserRecord | None) -> UserLimits | None:
    if record is None:
        return None
    reset = record.last_reset
    reset_at = None if reset is None else max(reset.requested_at, reset.decided_at or 0.0)
    return UserLimits(record.created_at, record.trust_not_before, record.locked_until, reset_at)


class TrustedReconnects:
    def __init__(
        self, config: Config, state: StateStore, users: AsyncUserStore, master_key: bytes
    ) -> None:
        self.window = config.access_policies.trust_window_seconds()
        self.lockout_seconds = config.multifactor.lockout.lockout_seconds
        self.state = state
        self.users = users
        self._key = derive_key(master_key, KEY_INFO)

    @property
    def enabled(self) -> bool:
        """Off unless an active mfa policy has a trusted_reconnect rule."""
        return self.window > 0

    def _slot(self, user: str, client: str, station: str) -> str:
        text = json.dumps([identity_key(user), client, station], separators=(",", ":"))
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    async def fact(
        self,
        user: str,
        client: str,
        calling_station_id: str | None,
        record: UserRecord | None,
        now: float,
    ) -> TrustFact | None:
        """What the trusted_reconnect rules see for this login; None when no rule is
        active (nothing is looked up)."""
        if not self.enabled:
            return None
        station = rules.station(calling_station_id)
        if station is None:
            metrics.TRUSTED_RECONNECTS.labels(result="no_station").inc()
            return NOT_KNOWN
        user = identity_key(user)
        value = await self.state.get(rules.NAMESPACE, self._slot(user, client, station), now)
        return rules.fact(value, user, client, station, limits_of(record), now)

    async def remember(
        self,
        user: str,
        client: str,
        calling_station_id: str | None,
        reason: str,
        method: str,
        now: float,
    ) -> None:
        """After an Accept: start a window when the user proved a second factor."""
        station = rules.station(calling_station_id)
        if not self.enabled or station is None or reason not in rules.PROVEN_RESULTS:
            return
        user = identity_key(user)
        value = rules.record_value(user, client, station, now, method)
        slot = self._slot(user, client, station)
        await self.state.put(rules.NAMESPACE, slot, value, self.window, now)
        metrics.TRUSTED_RECONNECTS.labels(result="recorded").inc()

    @staticmethod
    def accept(config: RepliesConfig, primary: PrimaryResult) -> Answer:
        """The Accept of a trusted reconnect: the password was checked, the second
        factor skipped (audit reason mfa_trusted_reconnect)."""
        metrics.TRUSTED_RECONNECTS.labels(result="trusted").inc()
        return replies.accept(config, primary, rules.TRUSTED_REASON)

    async def after(self, user: str | None, reason: str, now: float) -> None:
        """After any answer: a lockout or a reset asked for at the prompt ends every
        window of the user. A reject of a user already locked out writes nothing again
        (the lockout's start revoked it), so a locked user's requests cost no writes."""
        if not self.enabled or user is None or reason not in rules.REVOKING_REASONS:
            return
        if reason == rules.LOCKED_OUT:
            limits = limits_of(await self.users.get_user(user))
            if rules.revoked_since_lockout(limits, self.lockout_seconds):
                return
        await self.users.run(lambda s: s.revoke_trust(user, now))
        metrics.TRUSTED_RECONNECTS.labels(result="revoked").inc()
