"""Daemon lifecycle: build, bind, announce readiness, serve, reload, drain, close.

systemd contract (Type=notify): READY=1 once every socket is bound; WATCHDOG=1 from the
event loop itself so a stuck loop is noticed; RELOADING=1 around a SIGHUP reload;
STOPPING=1 when SIGTERM arrives. A second SIGTERM/SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from mfaproxy.adapters.sdnotify import SystemdNotifier
from mfaproxy.adapters.smtp import SmtpSender
from mfaproxy.adapters.status_http import StatusServer
from mfaproxy.adapters.udp import open_listener, receive_drops, socket_inode
from mfaproxy.auth.engine import Engine
from mfaproxy.auth.sessions import CHALLENGES
from mfaproxy.config.base import parse_host_port
from mfaproxy.config.schema import Config
from mfaproxy.daemon import health, preflight
from mfaproxy.daemon.accounting import open_accounting, reload_accounting
from mfaproxy.daemon.changes import describe, restart_required
from mfaproxy.daemon.limits import Limits
from mfaproxy.daemon.reload import Prepared, prepare
from mfaproxy.daemon.runtime import Dispatcher, Runtime
from mfaproxy.daemon.supervisor import report_ready, worker_index
from mfaproxy.directory.local import LocalChecker, LocalUser
from mfaproxy.errors import EXIT_INTERRUPTED, ConfigError, UpstreamError
from mfaproxy.factors.base import FactorServices
from mfaproxy.factors.registry import build_factors
from mfaproxy.observability import metrics
from mfaproxy.observability.logging import apply_log_config
from mfaproxy.radius.clients import ClientTable
from mfaproxy.radius.duplicates import DuplicateTable, ReplayWindow
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.duplicates import (
    Duplicates,
    HostDuplicates,
    LocalDuplicates,
    SharedDuplicates,
)
from mfaproxy.store.factory import master_key, open_state_store, open_throttle, open_user_store
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.state import StateStore
from mfaproxy.store.throttle import Throttle

log = structlog.get_logger(__name__)

# Longest a request may stay in flight before the duplicate table forgets it.
MAX_REQUEST_SECONDS = 300.0
# How often gauges are refreshed (and the memory store's expiry runs) when idle.
HOUSEKEEPING_SECONDS = 5.0


@dataclass(frozen=True)
class Shared:
    """What outlives a configuration reload: the stores (challenges in flight survive)."""

    users: AsyncUserStore
    state: StateStore
    master_key: bytes
    # Password-guessing counters (in the state store's Redis for a cluster).
    throttle: Throttle

    async def close(self) -> None:
        await self.throttle.close()
        await self.state.close()
        await self.users.close()


def open_shared(config: Config) -> Shared:
    key = master_key(config)
    inner = open_state_store(config)
    # Sealed on every backend, memory included: nothing read back is trusted unopened.
    state = SealedStateStore(inner, key)
    settings = config.server.user_store
    users = AsyncUserStore(open_user_store(config), settings.threads, settings.queue)
    return Shared(users, state, key, open_throttle(config, inner))


def duplicates_for(config: Config, shared: Shared) -> Duplicates:
    """In a cluster the duplicate table and the replay window are shared, so a
    retransmission that fails over to another instance is recognised there too (no
    second push), and so is a request replayed to it. The workers of one host share
    the replay window only."""
    reply_ttl = config.server.duplicate_cache_seconds
    # A Request Authenticator used again within a challenge's lifetime is a replay.
    replay_ttl = max(reply_ttl, float(config.multifactor.challenge.timeout_seconds))
    backend = config.server.state_store.backend
    if backend == "memory":
        return LocalDuplicates(
            DuplicateTable(reply_ttl=reply_ttl, in_flight_ttl=MAX_REQUEST_SECONDS),
            ReplayWindow(replay_ttl),
        )
    if backend == "sqlite":
        # One host: a retransmission reaches the worker that has the first copy
        # (store/duplicates.py HostDuplicates); only the replay window is shared.
        table = DuplicateTable(reply_ttl=reply_ttl, in_flight_ttl=MAX_REQUEST_SECONDS)
        return HostDuplicates(table, shared.state, replay_ttl)
    # No hold sized for the longest push any more: an instance that dies mid-request
    # stops holding it within a lease (store/duplicates.py), and the retransmission is
    # taken over where it lands; the TTL only bounds entries nobody finishes.
    lease = config.server.duplicate_lease_seconds
    return SharedDuplicates(
        shared.state, reply_ttl, MAX_REQUEST_SECONDS, lease, replay_ttl=replay_ttl
    )


def assemble(prepared: Prepared, shared: Shared) -> Runtime:
    """The quick, loop-side part of building a runtime (reload.prepare did the rest)."""
    config, dictionary = prepared.config, prepared.dictionary
    mail = SmtpSender(config.smtp) if config.smtp is not None else None
    services = FactorServices(shared.users, shared.state, mail, dictionary, shared.master_key)
    factors = build_factors(config.multifactor, services)
    engine = Engine(
        config, prepared.checker, factors, services, prepared.geoip, throttle=shared.throttle
    )
    return Runtime(
        ClientTable(config.clients),
        dictionary,
        engine,
        closers=[prepared.geoip.close],
        limits=Limits.of(config.server),
    )


def build_runtime(config: Config, shared: Shared) -> Runtime:
    return assemble(prepare(config), shared)


# What a refused reload leaves in place.
KEPT = "reload refused: the running configuration keeps serving"


def _users_files(
    running: Runtime, prepared: Prepared
) -> tuple[dict[str, LocalUser], dict[str, LocalUser]] | None:
    """The local users file as served and as just re-read (both local backends)."""
    old, new = running.engine.checker, prepared.checker
    if isinstance(old, LocalChecker) and isinstance(new, LocalChecker):
        return old.users, new.users
    return None


def _prepare_file(path: Path) -> tuple[Prepared, list[dict[str, object]]]:
    """A reload's blocking part (in a thread): read, check, build, and find the warnings."""
    prepared = prepare(preflight.load(path))
    return prepared, preflight.warning_records(prepared.config)


class Server:
    def __init__(self, config: Config, notifier: SystemdNotifier | None = None):
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.shared = open_shared(config)
        self.dispatcher = Dispatcher(
            build_runtime(config, self.shared),
            duplicates_for(config, self.shared),
            queue_size=config.server.intake_queue,
            workers=config.server.concurrency,
        )
        # None when off.
        self.accounting = open_accounting(config, self.shared.state, self.shared.master_key)
        self._transports: list[asyncio.DatagramTransport] = []
        self._status: StatusServer | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[object]] = set()
        self._reloading = asyncio.Lock()
        # What this process started with: restart-only settings are compared with it.
        self.running = config
        self.bound: list[tuple[str, int]] = []
        self._inodes: dict[int, int] = {}  # listening socket inode -> drops counted

    async def start(self) -> None:
        self.dispatcher.start()
        worker = worker_index()
        for host, port in self.config.server.listen_addresses():
            transport, bound_port = await open_listener(
                self.dispatcher.submit, host, port, reuse_port=worker is not None
            )
            self._transports.append(transport)
            self.bound.append((host, bound_port))
            inode = socket_inode(transport)
            if inode is not None:
                self._inodes[inode] = 0
        if self.accounting is not None:
            await self.accounting.start(reuse_port=worker is not None)
        if self.config.server.metrics is not None:
            host, port = parse_host_port(self.config.server.metrics.listen, 9812)
            # Each worker has its own registry: worker i serves metrics on port + i.
            self._status = StatusServer(
                host, port + (worker or 0), self.readiness, before_scrape=self.refresh_gauges
            )
            await self._status.start()
        metrics.CONFIG_RELOADS.labels(result="initial").inc()
        metrics.CONFIG_LAST_RELOAD.set(time.time())
        log.info(
            "listening",
            addresses=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.bound],
            accounting=self.accounting.addresses if self.accounting else None,
            metrics=self._status.port if self._status else None,
            clients=len(self.config.clients),
            backend=self.config.directory.backend,
        )
        self.notifier.ready()
        report_ready()  # to the supervisor, when this process is one of several workers
        self.notifier.status(f"serving {len(self.config.clients)} client(s)")
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self.spawn(self._watchdog(interval))
        self.spawn(self._housekeeping())

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the loop: if the loop is stuck, systemd stops hearing from us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def readiness(self) -> tuple[bool, str]:
        """Ready when listening, not stopping, and the directory and stores answer."""
        if self._stopping:
            return False, "shutting down"
        if not self._transports:
            return False, "not listening yet"
        # The directory, the user store and the state store (daemon/health.py).
        found = await health.problem(
            self.dispatcher.runtime.engine.checker, self.shared.users, self.shared.state
        )
        return (False, found) if found is not None else (True, "ok")

    async def refresh_gauges(self) -> None:
        self._count_receive_drops()
        pending = await self.shared.state.size(CHALLENGES, time.time())
        metrics.CHALLENGES_PENDING.set(pending)
        if self.accounting is not None:
            await self.accounting.refresh_gauges()

    def _count_receive_drops(self) -> None:
        for inode, drops in receive_drops(self._inodes).items():
            if drops > self._inodes[inode]:
                metrics.RECEIVE_BUFFER_DROPS.inc(drops - self._inodes[inode])
                self._inodes[inode] = drops

    async def _housekeeping(self) -> None:
        """Gauges stay current without a scraper, and the memory state store's expiry
        runs even when no request comes."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            # A store outage is reported by readiness and by the requests themselves.
            with contextlib.suppress(UpstreamError):
                await self.refresh_gauges()

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Re-read the configuration off the event loop (serving goes on); swap it in
        for new requests, or keep the old one. READY=1 follows RELOADING=1 always."""
        async with self._reloading:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready()

    async def _reload(self) -> bool:
        path = self.config.source
        try:
            if path is None:
                raise ConfigError(["the configuration was not read from a file"])
            prepared, warned = await asyncio.to_thread(_prepare_file, path)
            try:
                new_runtime = assemble(prepared, self.shared)
            except BaseException:
                await prepared.checker.close()
                prepared.geoip.close()
                raise
        except Exception as exc:
            # Invalid file, unreadable file, or a backend or factor that cannot be built.
            problems = (
                exc.problems if isinstance(exc, ConfigError) else [f"{type(exc).__name__}: {exc}"]
            )
            metrics.CONFIG_RELOADS.labels(result="failure").inc()
            log.error("reload_failed", problems=problems, detail=KEPT)
            return False
        new_config = prepared.config
        changes = describe(self.config, new_config, _users_files(self.dispatcher.runtime, prepared))
        old = self.dispatcher.runtime
        self.dispatcher.runtime = new_runtime  # new requests only; in-flight keep theirs
        reload_accounting(self.accounting, new_config)
        self.config = new_config
        apply_log_config(new_config.server.log)
        self.spawn(self._retire(old))
        metrics.CONFIG_RELOADS.labels(result="success").inc()
        metrics.CONFIG_LAST_RELOAD.set(time.time())
        # The new file's warnings as at start (once, not once per worker), then what
        # waits for a restart, compared with what this process started with; `reloaded`
        # last, so that a reader who saw it has seen the rest.
        if worker_index() in (None, 0):
            preflight.log_warnings(warned)
        for record in restart_required(self.running, new_config):
            log.warning("reload_restart_required", **record)
        log.info(
            "reloaded",
            **changes.log_fields(),
            clients=len(new_config.clients),
            backend=new_config.directory.backend,
        )
        return True

    async def _retire(self, runtime: Runtime) -> None:
        """Close the old backends once the requests that started on them are done."""
        await runtime.idle()
        await runtime.close()

    # ------------------------------------------------------------------ shutdown

    def request_stop(self) -> None:
        if self._stopping:
            log.warning("second_signal_exit")
            os._exit(EXIT_INTERRUPTED)
        self._stopping = True
        log.info("stopping", grace_seconds=self.config.server.shutdown_grace_seconds)
        self.notifier.stopping()
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop reading; answer what was taken within the grace period, with the
        sockets still open (a computed answer is always sent); then close."""
        grace = self.config.server.shutdown_grace_seconds
        # Accounting drains beside the authentication dispatcher, within the same grace.
        accounting = self.accounting and asyncio.ensure_future(self.accounting.shutdown(grace))
        unanswered = await self.dispatcher.drain(grace)
        if unanswered:
            log.warning("shutdown_grace_expired", grace_seconds=grace, unanswered=unanswered)
        for transport in self._transports:
            transport.close()
        await self.dispatcher.stop()
        if accounting:
            await accounting
        for task in list(self._tasks):
            task.cancel()
        if self._status is not None:
            await self._status.close()
        await self.dispatcher.runtime.close()
        await self.shared.close()
        log.info("stopped", unanswered=unanswered)


async def serve(config: Config) -> int:
    server = Server(config)
    loop = asyncio.get_running_loop()
    # Handlers first: systemd may signal us as soon as READY=1 is out.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: server.spawn(server.reload()))
    await server.start()
    await server.wait_stopped()
    await server.shutdown()
    return 0
