"""What mfaproxy does with an accounting record (RFC 2866): write it to the audit log and,
when upstream accounting servers are configured, forward it to them.

`AccountingService.record` says whether the NAS may be answered. RFC 2866 section 2: a
server answers only once it has recorded the record; with `answer: after_upstream` that
means once an upstream server acknowledged it, so when none does the NAS gets no answer
and retransmits (logged, counted `upstream_unavailable`). With `answer: at_once` the NAS
is answered after the audit event and the record is forwarded in the background, in a
bounded set of tasks (beyond it: counted `forward_queue_full`, still logged).

The daemon's accounting dispatcher (daemon/accounting.py) does the packets and the
duplicate detection, so a retransmission never reaches this module twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from mfaproxy.adapters.radius_client import RadiusClient, RadiusServer, observe_exchange
from mfaproxy.config.accounting import AccountingConfig
from mfaproxy.errors import UpstreamUnavailable
from mfaproxy.observability import metrics
from mfaproxy.radius.accounting import AccountingPacket, AccountingRecord, forwarded_attributes

audit_log = structlog.get_logger("mfaproxy.audit")
log = structlog.get_logger(__name__)

SERVICE = "accounting"  # the upstream metrics' service label


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
    def __init__(self, config: AccountingConfig) -> None:
        self._config = config
        self._client = upstream_client(config)
        self._at_once = config.upstream is not None and config.upstream.answer == "at_once"
        self._queue_limit = config.upstream.queue if config.upstream is not None else 0
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def longest_forward_seconds(self) -> float:
        """How long one record may take upstream (every server, every retry)."""
        upstream = self._config.upstream
        if upstream is None:
            return 0.0
        return len(upstream.servers) * (upstream.retries + 1) * upstream.timeout

    async def record(self, ctx: AccountingContext, packet: AccountingPacket) -> bool:
        """Log (and forward) one record; True when the NAS may be answered now."""
        record = packet.record
        assert record is not None, "Status-Server carries no record"
        started = time.monotonic()
        if self._client is None:
            self._audit(ctx, record, "recorded", started)
            return True
        if self._at_once:
            outcome = self._forward_later(ctx, record, packet)
            self._audit(ctx, record, outcome, started)
            return True
        server = await self._forward(ctx, record, packet)
        outcome = "forwarded" if server is not None else "upstream_unavailable"
        self._audit(ctx, record, outcome, started, upstream=server)
        return server is not None

    async def _forward(
        self, ctx: AccountingContext, record: AccountingRecord, packet: AccountingPacket
    ) -> str | None:
        """Send the record upstream; the label of the server that acknowledged it."""
        assert self._client is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await self._client.accounting_request(forwarded_attributes(packet))
        except UpstreamUnavailable:
            observe_exchange(SERVICE, started, "unavailable", (), self._client.servers)
            log.warning(
                "accounting_upstream_unavailable",
                request_id=ctx.request_id,
                client=ctx.client,
                status_type=record.status_type,
                session_id=record.session_id,
            )
            return None
        observe_exchange(SERVICE, started, "forwarded", (reply.server,), reply.failed_servers)
        return reply.server.label

    def _forward_later(
        self, ctx: AccountingContext, record: AccountingRecord, packet: AccountingPacket
    ) -> str:
        if len(self._pending) >= self._queue_limit:
            log.warning("accounting_forward_queue_full", client=ctx.client, limit=self._queue_limit)
            return "forward_queue_full"
        task = asyncio.ensure_future(self._forward_in_background(ctx, record, packet))
        self._pending.add(task)
        metrics.ACCOUNTING_FORWARDS_PENDING.inc()
        task.add_done_callback(self._done)
        return "queued"

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        metrics.ACCOUNTING_FORWARDS_PENDING.dec()

    async def _forward_in_background(
        self, ctx: AccountingContext, record: AccountingRecord, packet: AccountingPacket
    ) -> None:
        try:
            server = await self._forward(ctx, record, packet)
        except Exception:
            # A bug costs this one forward, never the daemon.
            log.exception("accounting_forward_failed", request_id=ctx.request_id)
            server = None
        outcome = "forwarded" if server is not None else "forward_failed"
        metrics.ACCOUNTING_OUTCOMES.labels(status_type=record.status_type, outcome=outcome).inc()
        log.info(
            "accounting_forwarded" if server else "accounting_forward_failed",
            request_id=ctx.request_id,
            client=ctx.client,
            status_type=record.status_type,
            session_id=record.session_id,
            upstream=server,
        )

    def _audit(
        self,
        ctx: AccountingContext,
        record: AccountingRecord,
        outcome: str,
        started: float,
        upstream: str | None = None,
    ) -> None:
        if outcome != "queued":  # a queued record is counted when its forward ends
            metrics.ACCOUNTING_OUTCOMES.labels(
                status_type=record.status_type, outcome=outcome
            ).inc()
        audit_log.info(
            "accounting_record",
            request_id=ctx.request_id,
            client=ctx.client,
            nas_address=ctx.source_ip,
            outcome=outcome,
            upstream=upstream,
            latency_ms=round((time.monotonic() - started) * 1000, 2),
            **record.log_fields(),
        )

    async def drain(self) -> None:
        """Wait for the background forwards (answer: at_once) to end."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*list(self._pending), return_exceptions=True)
