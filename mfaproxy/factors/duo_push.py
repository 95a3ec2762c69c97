"""Out-of-band Duo checks (push, phone call): push fatigue limits, one pending push per
user across nodes, and the wait for the user's answer.

Push fatigue (push bombing: someone who has the password sends push after push until
the tired user taps Approve) is met three ways:
- at most `push_limit.max_pushes` pushes or calls per user in `push_limit.window_seconds`,
  counted in the state store in one atomic check-and-record step before the push is
  sent (the reservation is made first, so N concurrent first rounds cannot all pass);
- no second push while one is pending for that user: a record in the state store,
  created atomically (put-if-absent), so this holds across the nodes of a cluster;
- a denied, ignored or timed-out push counts as a second-factor failure (the lockout).

The pending record is an ordinary state-store value (sealed like every other one) and
names the RADIUS request that sent the push (RFC 5080 key: NAS address and port,
Identifier, Request Authenticator) and the Duo transaction id. When the node holding the
push dies, the NAS's retransmission of that same request reaches another node, which
finds the record and keeps polling the same transaction: one push, and the user's
approval still gives an Accept.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from mfaproxy.config.multifactor import DuoMethodConfig
from mfaproxy.errors import DuoTimeout
from mfaproxy.factors.duo_api import DuoApi
from mfaproxy.observability.metrics import DUO_PUSHES
from mfaproxy.store.state import StateStore

PENDING: Final = "duo_push_pending"  # user -> the push waiting on them
SENT: Final = "duo_pushes"  # user -> pushes sent in the window (rate limit events)
# The verification code Duo asks the user to type into Duo Mobile (Verified Push).
VERIFICATION_CODE: Final = re.compile(r"[0-9]{3,10}")
# The pending record outlives the wait a little: a node that dies mid-push must not
# block the user's next login for long, and a live one always finishes before this.
PENDING_MARGIN: Final = 30.0


class Claim(enum.Enum):
    NEW = "new"  # this request may send a push
    CONTINUE = "continue"  # this very request already sent it (another node): poll `txid`
    INTERRUPTED = "interrupted"  # this request started a push whose txid was never recorded
    PENDING = "pending"  # another request's push is waiting on the user
    LIMITED = "limited"  # too many pushes in the window


@dataclass(frozen=True)
class Ticket:
    claim: Claim
    txid: str | None = None
    started: float = 0.0


class PushLedger:
    """The per-user push records in the (shared) state store."""

    def __init__(self, state: StateStore, settings: DuoMethodConfig):
        self.state = state
        self.settings = settings

    @property
    def ttl(self) -> float:
        return self.settings.timeout + PENDING_MARGIN

    async def claim(self, user: str, request_key: str, now: float) -> Ticket:
        record = {"request": request_key, "txid": None, "started": now}
        existing = await self.state.put_if_absent(PENDING, user, record, self.ttl, now)
        if existing is not None:
            return self._existing(existing, request_key)
        limit = self.settings.push_limit
        allowed = await self.state.rate_limit(
            SENT, user, now, max_events=limit.max_pushes, window=limit.window_seconds
        )
        if not allowed:
            await self.state.delete(PENDING, user)
            DUO_PUSHES.labels(result="limited").inc()
            return Ticket(Claim.LIMITED)
        return Ticket(Claim.NEW, started=now)

    @staticmethod
    def _existing(existing: Mapping[str, Any], request_key: str) -> Ticket:
        theirs = existing.get("request")
        same = (
            bool(request_key)
            and isinstance(theirs, str)
            and hmac.compare_digest(theirs.encode(), request_key.encode())
        )
        if not same:
            DUO_PUSHES.labels(result="refused_pending").inc()
            return Ticket(Claim.PENDING)
        txid, started = existing.get("txid"), existing.get("started")
        if not isinstance(txid, str) or not txid or not isinstance(started, int | float):
            return Ticket(Claim.INTERRUPTED)
        DUO_PUSHES.labels(result="continued").inc()
        return Ticket(Claim.CONTINUE, txid, float(started))

    async def sent(self, user: str, request_key: str, txid: str, started: float) -> None:
        DUO_PUSHES.labels(result="sent").inc()
        record = {"request": request_key, "txid": txid, "started": started}
        await self.state.put(PENDING, user, record, self.ttl, started)

    async def release(self, user: str) -> None:
        await self.state.delete(PENDING, user)


async def wait_for_answer(
    api: DuoApi, txid: str, seconds: float, poll_interval: float
) -> Mapping[str, Any] | None:
    """Long-poll auth_status until the transaction is decided; None when `seconds` run
    out first (the push is never sent again)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            status = await api.auth_status(txid, remaining)
        except DuoTimeout:
            return None
        if not status.get("waiting"):
            return status
        # Duo long-polls, so this pause only matters after an intermediate status.
        await asyncio.sleep(min(poll_interval, max(0.0, deadline - loop.time())))


def verified_push_offer(answer: Mapping[str, Any]) -> dict[str, str] | None:
    """The Verified Push txid and code from a preauth answer, when Duo gave them."""
    txid, code = answer.get("txid"), answer.get("verification_code")
    if not isinstance(txid, str) or not txid or len(txid) > 128:
        return None
    if not isinstance(code, str | int) or not VERIFICATION_CODE.fullmatch(str(code)):
        return None
    return {"txid": txid, "code": str(code)}
