"""The accounting listeners (RFC 2866, UDP 1813 by convention): their own sockets, intake
queue and workers, beside the authentication dispatcher (daemon/runtime.py), with the
same client table and secrets.

Each datagram is matched to a client, verified (radius/accounting.py), checked against
the duplicate table (RFC 5080 section 2.2.2: a retransmission is answered from the
reply cache, or ignored while the first copy is in flight, so it is never logged or
forwarded twice), handed to the accounting service (auth/accounting.py) and answered
from the socket it came in on. A record no upstream acknowledged (or, with `answer:
at_once`, that the spool could not take) is left unanswered and forgotten by the
duplicate table, so the NAS's next retransmission is tried afresh.

The spool (`answer: at_once`) and its reader outlive reloads, like the state store: the
reader forwards with the upstreams of the configuration in force, and records left in
the file by a stopped or killed process are forwarded after the restart.

The server (daemon/server.py) opens it when `server.accounting` is set, swaps its
runtime on reload and drains it on shutdown. Anything wrong with a datagram ends in a
counted drop, never in a crash of the daemon.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from mfaproxy.adapters.udp import open_listener
from mfaproxy.auth.accounting import AccountingContext, AccountingService
from mfaproxy.auth.accounting_spool import Spool, SpoolReader, refresh_spool_gauges
from mfaproxy.config.accounting import AccountingConfig
from mfaproxy.config.schema import ClientConfig, Config
from mfaproxy.errors import PeerError, UpstreamError
from mfaproxy.observability import metrics
from mfaproxy.radius.accounting import AccountingPacket, decode_accounting, encode_response
from mfaproxy.radius.clients import ClientTable
from mfaproxy.radius.constants import CODE_LABELS, STATUS_SERVER
from mfaproxy.radius.duplicates import DuplicateTable, Lookup, RequestKey, Seen
from mfaproxy.store.accounting_spool import AccountingSpool
from mfaproxy.store.duplicates import Duplicates, LocalDuplicates, SharedDuplicates
from mfaproxy.store.factory import accounting_spool_path
from mfaproxy.store.state import StateStore

log = structlog.get_logger(__name__)

Address = tuple[Any, ...]
Datagram = tuple[bytes, Address, asyncio.DatagramTransport]
NAMESPACE = "accounting_duplicates"


@dataclass(eq=False)
class AccountingRuntime:
    """What a reload replaces at once: the clients and the service (its upstreams)."""

    clients: ClientTable[ClientConfig]
    service: AccountingService
    active: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def acquire(self) -> None:
        self.active += 1
        self._idle.clear()

    def release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def retire(self) -> None:
        """Close once the records that started on it (and their forwards) are done."""
        if self.active:
            await self._idle.wait()
        await self.service.drain()
        await self.service.close()


def build_accounting(config: Config, spool: Spool | None) -> AccountingRuntime | None:
    if config.server.accounting is None:
        return None
    return AccountingRuntime(
        ClientTable(config.clients), AccountingService(config.server.accounting, spool)
    )


def accounting_duplicates(
    config: Config, runtime: AccountingRuntime, state: StateStore
) -> Duplicates:
    """Like the authentication table: shared in a cluster, so a NAS that fails over to
    another instance with the same packet is answered from the cache there too."""
    reply_ttl = config.server.duplicate_cache_seconds
    in_flight = runtime.service.longest_forward_seconds + 30.0
    if config.server.state_store.backend == "memory":
        return LocalDuplicates(DuplicateTable(reply_ttl=reply_ttl, in_flight_ttl=in_flight))
    return SharedDuplicates(state, reply_ttl, in_flight, namespace=NAMESPACE)


def open_accounting(
    config: Config, state: StateStore, master_key: bytes
) -> AccountingDispatcher | None:
    """The dispatcher for `server.accounting`, or None when accounting is off. The spool
    is opened whenever accounting is on, so a reload may switch to `answer: at_once`
    and records a previous run left are forwarded."""
    if config.server.accounting is None:
        return None
    path = accounting_spool_path(config)
    spool = Spool(AccountingSpool(path, master_key), AccountingSpool(path, master_key))
    runtime = build_accounting(config, spool)
    assert runtime is not None
    dedup = accounting_duplicates(config, runtime, state)
    return AccountingDispatcher(config.server.accounting, runtime, dedup, spool)


def reload_accounting(dispatcher: AccountingDispatcher | None, config: Config) -> None:
    """Swap clients and upstreams in; listeners (and turning accounting on or off)
    change on restart only, like the authentication listeners."""
    # Those restart-only settings are named by the reload (daemon/changes.py).
    runtime = build_accounting(config, dispatcher.spool if dispatcher else None)
    if dispatcher is None or runtime is None or config.server.accounting is None:
        return
    dispatcher.swap(runtime)


class AccountingDispatcher:
    def __init__(
        self,
        config: AccountingConfig,
        runtime: AccountingRuntime,
        dedup: Duplicates,
        spool: Spool,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.dedup = dedup
        self.spool = spool
        self.reader = SpoolReader(spool, lambda: self.runtime.service)
        self._queue: asyncio.Queue[Datagram] = asyncio.Queue(maxsize=config.intake_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._accepting = True
        self._retiring: set[asyncio.Task[None]] = set()
        self.bound: list[tuple[str, int]] = []

    async def start(self, reuse_port: bool) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"accounting-worker-{i}")
            for i in range(self.config.concurrency)
        ]
        for host, port in self.config.listen_addresses():
            transport, bound_port = await open_listener(self.submit, host, port, reuse_port)
            self._transports.append(transport)
            self.bound.append((host, bound_port))
        self.reader.start()

    async def refresh_gauges(self) -> None:
        await refresh_spool_gauges(self.spool)

    @property
    def addresses(self) -> list[str]:
        """The bound listeners as `host:port` / `[v6]:port`, for the `listening` log."""
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.bound]

    def submit(self, data: bytes, addr: Address, transport: asyncio.DatagramTransport) -> None:
        if not self._accepting:
            metrics.PACKETS_DROPPED.labels(reason="shutting_down").inc()
            return
        try:
            self._queue.put_nowait((data, addr, transport))
        except asyncio.QueueFull:
            metrics.PACKETS_DROPPED.labels(reason="accounting_overload").inc()

    def swap(self, runtime: AccountingRuntime) -> None:
        """A reload: new records use `runtime`; the old one closes once idle."""
        old, self.runtime = self.runtime, runtime
        task = asyncio.ensure_future(old.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def shutdown(self, grace: float) -> None:
        """Stop taking datagrams, answer those taken (sockets stay open meanwhile) and let
        the spool reader's forwards in flight end, within `grace` seconds; then close
        everything. Records still in the spool stay there for the next start."""
        self._accepting = False
        deadline = asyncio.get_running_loop().time() + grace
        try:
            async with asyncio.timeout(grace):
                await self._queue.join()
        except TimeoutError:
            log.warning("accounting_grace_expired", grace_seconds=grace)
        await self.reader.stop(max(0.0, deadline - asyncio.get_running_loop().time()))
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, *self._retiring, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        await self.runtime.service.close()
        await self.spool.close()

    async def _work(self) -> None:
        while True:
            data, addr, transport = await self._queue.get()
            runtime = self.runtime  # a reload swaps self.runtime; this record keeps its own
            runtime.acquire()
            try:
                await self.process(runtime, data, addr, transport)
            except Exception:
                # A bug must cost one record, not the daemon.
                metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
                log.exception("accounting_request_failed", source=addr[0])
            finally:
                runtime.release()
                self._queue.task_done()

    async def process(
        self,
        runtime: AccountingRuntime,
        data: bytes,
        addr: Address,
        transport: asyncio.DatagramTransport,
    ) -> None:
        started = time.monotonic()
        source_ip = str(addr[0])
        client = runtime.clients.match(source_ip)
        if client is None:
            metrics.PACKETS_DROPPED.labels(reason="unknown_client").inc()
            log.debug("packet_dropped", reason="unknown_client", source=source_ip, port="acct")
            return
        secret = client.secret.get_secret_value().encode()
        try:
            packet = decode_accounting(data, secret)
        except PeerError as exc:
            metrics.PACKETS_DROPPED.labels(reason=exc.reason).inc()
            log.info(
                "packet_dropped",
                reason=exc.reason,
                client=client.name,
                source=source_ip,
                port="acct",
            )
            return
        reply = encode_response(packet, secret)  # never longer than the request
        # Without the source port: an Accounting-Request's Request Authenticator is an
        # MD5 over its whole content and the secret (RFC 2866 section 3), so the same
        # datagram from another port is the same record, a replay by whoever captured
        # it (or a NAS retrying from another socket). Either way: answered from the
        # cache, never logged or forwarded twice.
        key = (source_ip, 0, packet.identifier, packet.authenticator)
        if not await self._is_new(key, addr, transport):
            return
        code = CODE_LABELS.get(packet.code, str(packet.code))
        metrics.REQUESTS.labels(client=client.name, code=code).inc()
        answered = False
        try:
            answered = await self._handle(runtime, client, source_ip, packet)
        finally:
            await self._finish(key, reply if answered else None)
        if answered:
            transport.sendto(reply, addr)
        metrics.REQUEST_LATENCY.labels(code=code).observe(time.monotonic() - started)

    async def _handle(
        self,
        runtime: AccountingRuntime,
        client: ClientConfig,
        source_ip: str,
        packet: AccountingPacket,
    ) -> bool:
        if packet.code == STATUS_SERVER or packet.record is None:
            return True  # RFC 5997 section 4.2: Accounting-Response, nothing recorded
        metrics.ACCOUNTING_RECORDS.labels(
            client=client.name, status_type=packet.record.status_type
        ).inc()
        ctx = AccountingContext(secrets.token_hex(8), client.name, source_ip)
        return await runtime.service.record(ctx, packet)

    async def _is_new(
        self, key: RequestKey, addr: Address, transport: asyncio.DatagramTransport
    ) -> bool:
        try:
            lookup = await self.dedup.begin(key, time.time())
        except UpstreamError:
            # The shared table is down: process the record; a retransmission may then be
            # logged twice, which beats losing it.
            log.warning("duplicate_table_unavailable", port="acct")
            lookup = Lookup(Seen.NEW)
        if lookup.seen is Seen.ANSWERED and lookup.reply is not None:
            metrics.DUPLICATES.labels(action="answered_from_cache").inc()
            transport.sendto(lookup.reply, addr)
            return False
        if lookup.seen is not Seen.NEW:
            metrics.DUPLICATES.labels(action="ignored_in_flight").inc()
            return False
        return True

    async def _finish(self, key: RequestKey, reply: bytes | None) -> None:
        try:
            if reply is None:
                await self.dedup.forget(key)  # unanswered: the NAS's retry is tried afresh
            else:
                await self.dedup.finish(key, reply, time.time())
        except UpstreamError:
            log.warning("duplicate_table_unavailable", port="acct")
