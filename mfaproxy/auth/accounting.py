"""What mfaproxy does with an accounting record (RFC 2866): write it to the audit log and,
when upstream accounting servers are configured, forward it to them.

`AccountingService.record` says whether the NAS may be answered. RFC 2866 section 2: a
server answers only once it has recorded the record; with `answer: after_upstream` that
means once an upstream server acknowledged it, so when none does the NAS gets no answer
and retransmits (logged, counted `upstream_unavailable`). With `answer: at_once` it means
once the record is in the durable spool (auth/accounting_spool.py), from which the
spool reader forwards it, across upstream outages and restarts, until an upstream has
it. A full spool (`spool.max_records`) or one that cannot be written leaves the NAS
unanswered too (`spool_full`, `spool_unavailable`): it retransmits or fails over, and
no record is dropped silently.

The daemon's accounting dispatcher (daemon/accounting.py) does the packets and the
duplicate detection, so a retransmission never reaches this module twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog

from mfaproxy.adapters.radius_client import RadiusClient, RadiusServer, observe_exchange
from mfaproxy.auth.accounting_spool import Spool
from mfaproxy.config.accounting import AccountingConfig, SpoolConfig
from mfaproxy.errors import SpoolUnavailable, UpstreamUnavailable
from mfaproxy.observability import metrics
from mfaproxy.radius.accounting import (
    AccountingPacket,
    AccountingRecord,
    Attributes,
    delay_seconds,
    encode_attributes,
    first_text,
    forwarded_attributes,
    with_delay,
)
from mfaproxy.radius.codec import split_attributes
from mfaproxy.radius.constants import ATTR_ACCT_SESSION_ID
from mfaproxy.store.accounting_spool import SpooledRecord, SpoolEntry

audit_log = structlog.get_logger("mfaproxy.audit")
log = structlog.get_logger(__name__)

SERVICE = "accounting"  # the upstream metrics' service label
# A spooled record is leased for the longest its forward can take, and this much more.
LEASE_MARGIN_SECONDS = 2.0
# Outcomes counted when the record's fate is known, not when it is taken in.
NOT_FINAL = frozenset({"spooled"})


@dataclass(frozen=True)
class AccountingContext:
    request_id: str
    client: str
    source_ip: str


def upstream_client(config: AccountingConfig) -> RadiusClient | None:
    upstream = config.upstream
    if upstream is None:
        return None
    servers = [
        RadiusServer(s.host, s.port, s.secret.get_secret_value().encode()) for s in upstream.servers
    ]
    # The dictionary is unused for accounting: records are forwarded as raw attributes.
    return RadiusClient(servers, None, timeout=upstream.timeout, retries=upstream.retries)


class AccountingService:
    def __init__(self, config: AccountingConfig, spool: Spool | None = None) -> None:
        self._config = config
        self._client = upstream_client(config)
        upstream = config.upstream
        self._at_once = upstream is not None and upstream.answer == "at_once"
        if self._at_once and spool is None:
            raise ValueError("answer: at_once needs the accounting spool")
        self._spool = spool
        self._settings = upstream.spool if upstream is not None else SpoolConfig()
        self._window = upstream.queue if upstream is not None else 1
        self._forwarding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def longest_forward_seconds(self) -> float:
        """How long one record may take upstream (every server, every retry)."""
        upstream = self._config.upstream
        if upstream is None:
            return 0.0
        return len(upstream.servers) * (upstream.retries + 1) * upstream.timeout

    # The spool reader's view (auth/accounting_spool.py `Forwarder`).

    @property
    def forwards(self) -> bool:
        return self._client is not None

    @property
    def spool_settings(self) -> SpoolConfig:
        return self._settings

    @property
    def window(self) -> int:
        return self._window

    @property
    def lease_seconds(self) -> float:
        return self.longest_forward_seconds + LEASE_MARGIN_SECONDS

    async def record(self, ctx: AccountingContext, packet: AccountingPacket) -> bool:
        """Log (and forward, or spool) one record; True when the NAS may be answered now."""
        record = packet.record
        assert record is not None, "Status-Server carries no record"
        started = time.monotonic()
        if self._client is None:
            self._audit(ctx, record, "recorded", started)
            return True
        if self._at_once:
            outcome = await self._spool_record(ctx, record, packet)
            self._audit(ctx, record, outcome, started)
            return outcome == "spooled"
        attrs = forwarded_attributes(packet)
        server = await self._forward(ctx, record.status_type, record.session_id, attrs)
        outcome = "forwarded" if server is not None else "upstream_unavailable"
        self._audit(ctx, record, outcome, started, upstream=server)
        return server is not None

    async def _spool_record(
        self, ctx: AccountingContext, record: AccountingRecord, packet: AccountingPacket
    ) -> str:
        """Into the spool before the NAS hears anything (RFC 2866 section 2)."""
        assert self._spool is not None
        wire = encode_attributes(forwarded_attributes(packet))
        entry = SpoolEntry(ctx.request_id, ctx.client, record.status_type, time.time(), wire)
        try:
            kept = await self._spool.append(entry, self._settings.max_records, self.lease_seconds)
        except SpoolUnavailable as exc:
            log.error("accounting_spool_unavailable", request_id=ctx.request_id, error=str(exc))
            return "spool_unavailable"
        if not kept:
            metrics.ACCOUNTING_SPOOL_FULL.inc()
            log.warning(
                "accounting_spool_full",
                request_id=ctx.request_id,
                client=ctx.client,
                max_records=self._settings.max_records,
                detail="the NAS is not answered: it retransmits or fails over",
            )
            return "spool_full"
        metrics.ACCOUNTING_SPOOLED.inc()
        return "spooled"

    async def _forward(
        self, ctx: AccountingContext, status_type: str, session_id: str | None, attrs: Attributes
    ) -> str | None:
        """Send the record upstream; the label of the server that acknowledged it."""
        assert self._client is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await self._client.accounting_request(attrs)
        except UpstreamUnavailable:
            observe_exchange(SERVICE, started, "unavailable", (), self._client.servers)
            log.warning(
                "accounting_upstream_unavailable",
                request_id=ctx.request_id,
                client=ctx.client,
                status_type=status_type,
                session_id=session_id,
            )
            return None
        observe_exchange(SERVICE, started, "forwarded", (reply.server,), reply.failed_servers)
        return reply.server.label

    async def forward_spooled(self, records: list[SpooledRecord]) -> list[bool]:
        """Forward records read back from the spool, at once; which were acknowledged."""
        self._forwarding += 1
        self._idle.clear()
        metrics.ACCOUNTING_FORWARDS_PENDING.inc(len(records))
        try:
            return list(await asyncio.gather(*(self._forward_one(r) for r in records)))
        finally:
            metrics.ACCOUNTING_FORWARDS_PENDING.dec(len(records))
            self._forwarding -= 1
            if not self._forwarding:
                self._idle.set()

    async def _forward_one(self, spooled: SpooledRecord) -> bool:
        entry = spooled.entry
        ctx = AccountingContext(entry.request_id, entry.client, "")
        try:
            # Re-sent later is the same record sent late: Acct-Delay-Time grows by the
            # wait (RFC 2866 section 5.2), so the packet and its signature are new.
            attrs = with_delay(
                tuple(split_attributes(entry.attributes)), time.time() - entry.received
            )
            session_id = first_text(attrs, ATTR_ACCT_SESSION_ID)
            server = await self._forward(ctx, entry.status_type, session_id, attrs)
        except Exception:
            # A bug costs this try, never the reader: the record stays in the spool.
            log.exception("accounting_forward_failed", request_id=entry.request_id)
            return False
        if server is None:
            return False
        metrics.ACCOUNTING_OUTCOMES.labels(status_type=entry.status_type, outcome="forwarded").inc()
        log.info(
            "accounting_forwarded",
            request_id=entry.request_id,
            client=entry.client,
            status_type=entry.status_type,
            session_id=session_id,
            upstream=server,
            delay_time=delay_seconds(attrs),
            attempts=spooled.attempts + 1,
        )
        return True

    def _audit(
        self,
        ctx: AccountingContext,
        record: AccountingRecord,
        outcome: str,
        started: float,
        upstream: str | None = None,
    ) -> None:
        if outcome not in NOT_FINAL:  # a spooled record is counted when it is forwarded
            metrics.ACCOUNTING_OUTCOMES.labels(
                status_type=record.status_type, outcome=outcome
            ).inc()
        fields: dict[str, Any] = record.log_fields()
        audit_log.info(
            "accounting_record",
            request_id=ctx.request_id,
            client=ctx.client,
            nas_address=ctx.source_ip,
            outcome=outcome,
            upstream=upstream,
            latency_ms=round((time.monotonic() - started) * 1000, 2),
            **fields,
        )

    async def drain(self) -> None:
        """Wait for the spool reader's forwards through this service to end."""
        await self._idle.wait()

    async def close(self) -> None:
        """Nothing of its own to close: the client opens a socket per exchange."""
