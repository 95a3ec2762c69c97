"""Several worker processes on one host (`server.workers: N`).

The supervisor binds nothing itself: it starts N copies of `mfaproxy serve` as workers,
each binding the same UDP ports with SO_REUSEPORT so the kernel spreads datagrams over
them. Challenges, replay marks and rate limits live in the shared state store (the
host's SQLite file, or Redis), so any worker can answer any round; every copy of one
request reaches one worker (SO_REUSEPORT hashes its source address and port), which
answers retransmissions from its own duplicate table (store/duplicates.py). The
supervisor speaks to systemd: READY=1 once every worker has bound its sockets,
RELOADING=1 and SIGHUP passed on, STOPPING=1 and SIGTERM passed on, watchdog pings from
its own loop. A worker that dies is started
again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog

from mfaproxy.adapters.sdnotify import SystemdNotifier
from mfaproxy.config.schema import Config
from mfaproxy.errors import EXIT_INTERRUPTED

log = structlog.get_logger(__name__)

WORKER_ENV = "MFAPROXY_WORKER_INDEX"
READY_FD_ENV = "MFAPROXY_READY_FD"
RESTART_DELAY = 1.0


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def report_ready() -> None:
    """Called by a worker once its sockets are bound: tell the supervisor."""
    fd = os.environ.get(READY_FD_ENV)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError as exc:
        log.warning("ready_report_failed", error=type(exc).__name__)


class Supervisor:
    def __init__(self, config: Config, config_path: Path):
        self.config = config
        self.config_path = config_path
        self.notifier = SystemdNotifier()
        self.workers: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._stop = asyncio.Event()
        self._watchers: set[asyncio.Future[None]] = set()

    async def _spawn(self, index: int) -> asyncio.Future[None]:
        """Start worker `index`; the returned future resolves when it has bound."""
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env[WORKER_ENV] = str(index)
        env[READY_FD_ENV] = str(write_fd)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mfaproxy",
            "serve",
            "--config",
            str(self.config_path),
            env=env,
            pass_fds=(write_fd,),
            stdin=asyncio.subprocess.DEVNULL,
        )
        os.close(write_fd)
        self.workers[index] = process
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            data = os.read(read_fd, 64)
            loop.remove_reader(read_fd)
            os.close(read_fd)
            if not ready.done():
                if data:
                    ready.set_result(None)
                else:
                    ready.set_exception(RuntimeError(f"worker {index} exited before binding"))

        loop.add_reader(read_fd, readable)
        watcher = asyncio.ensure_future(self._watch(index, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return ready

    async def _watch(self, index: int, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._stopping or self.workers.get(index) is not process:
            return
        log.error("worker_exited", worker=index, exit_code=code)
        await asyncio.sleep(RESTART_DELAY)  # no busy loop if it dies at once again
        if not self._stopping:
            try:
                await (await self._spawn(index))
                log.info("worker_restarted", worker=index)
            except RuntimeError as exc:
                log.error("worker_restart_failed", worker=index, error=str(exc))

    def _signal_all(self, signum: int) -> None:
        for process in self.workers.values():
            if process.returncode is None:
                process.send_signal(signum)

    def _reload(self) -> None:
        self.notifier.reloading()
        self._signal_all(signal.SIGHUP)
        log.info("reload_forwarded", workers=len(self.workers))
        self.notifier.ready()

    def _request_stop(self) -> None:
        if self._stopping:
            self._signal_all(signal.SIGKILL)
            os._exit(EXIT_INTERRUPTED)
        self._stopping = True
        self.notifier.stopping()
        self._signal_all(signal.SIGTERM)
        self._stop.set()

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        count = self.config.server.workers
        try:
            await asyncio.gather(*[await self._spawn(i) for i in range(count)])
        except RuntimeError as exc:
            log.error("workers_failed_to_start", error=str(exc))
            self._request_stop()
        else:
            log.info("workers_ready", workers=count)
            self.notifier.ready()
        interval = self.notifier.watchdog_interval()
        watchdog = asyncio.ensure_future(self._watchdog(interval)) if interval else None
        await self._stop.wait()
        codes = await asyncio.gather(*(p.wait() for p in self.workers.values()))
        if watchdog is not None:
            watchdog.cancel()
        log.info("stopped", workers=len(codes))
        return 0 if all(code == 0 for code in codes) else 1
