"""Daemon lifecycle: build, bind, announce readiness, serve until told to stop, drain, close."""

from __future__ import annotations

import asyncio
import signal
import time

import structlog

from mfaproxy.adapters.udp import Dispatcher, Runtime, open_listener
from mfaproxy.config import Config
from mfaproxy.directory.registry import build_checker
from mfaproxy.engine import Engine
from mfaproxy.observability import metrics
from mfaproxy.radius.clients import ClientTable
from mfaproxy.radius.codec import load_dictionary
from mfaproxy.radius.dedup import DuplicateTable

log = structlog.get_logger(__name__)

# Longest a request may stay in flight before the duplicate table forgets it.
MAX_REQUEST_SECONDS = 300.0
SHUTDOWN_GRACE_SECONDS = 10.0


def build_runtime(config: Config) -> Runtime:
    dictionary = load_dictionary(config.server.dictionaries)
    checker = build_checker(config.directory, dictionary)
    return Runtime(ClientTable(config.clients), dictionary, Engine(config, checker))


class Server:
    def __init__(self, config: Config):
        self.config = config
        self.runtime = build_runtime(config)
        self.dispatcher = Dispatcher(
            self.runtime,
            DuplicateTable(
                reply_ttl=config.server.duplicate_cache_seconds,
                in_flight_ttl=MAX_REQUEST_SECONDS,
            ),
            queue_size=config.server.intake_queue,
            workers=config.server.concurrency,
        )
        self._transports: list[asyncio.DatagramTransport] = []
        self._stop = asyncio.Event()
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        self.dispatcher.start()
        for host, port in self.config.server.listen_addresses():
            transport, bound_port = await open_listener(self.dispatcher, host, port)
            self._transports.append(transport)
            self.bound.append((host, bound_port))
        metrics.CONFIG_RELOADS.labels(result="initial").inc()
        metrics.CONFIG_LAST_RELOAD.set(time.time())
        log.info(
            "listening",
            addresses=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.bound],
            clients=len(self.config.clients),
            backend=self.config.directory.backend,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop intake, let requests in flight finish within `grace`, close backends."""
        for transport in self._transports:
            transport.close()
        try:
            await asyncio.wait_for(self.dispatcher.drain(), timeout=grace)
        except TimeoutError:
            log.warning("shutdown_grace_expired", grace_seconds=grace)
        await self.dispatcher.stop()
        await self.runtime.engine.checker.close()
        log.info("stopped")


async def serve(config: Config) -> int:
    server = Server(config)
    loop = asyncio.get_running_loop()
    await server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    await server.wait_stopped()
    await server.shutdown()
    return 0
