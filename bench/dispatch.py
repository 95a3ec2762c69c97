"""The daemon's request path in process: loop-thread CPU per request, no socket.

    python -m bench.dispatch [--requests 20000] [--state-store memory|sqlite]
                             [--log-level warning|info] [--concurrency 32]

Builds the real `Server` (daemon/server.py) from a generated configuration: local users
at the cheapest argon2id (1,000 users, MFA skipped, as the `pap` workload of
bench.throughput), and hands pre-built, signed Access-Requests straight to its
dispatcher (`Dispatcher.process`, what the UDP listener's queue feeds), `--concurrency`
at a time, with a socket stand-in that only counts replies. Printed: CPU of the event
loop's thread, of the whole process, and wall time, per request. Without the kernel,
the load generator and FreeRADIUS in the way, a change to the loop's Python shows up
here at a few percent, where bench.throughput's machine-wide figures move by more than
that from one round to the next. Audit lines (at `info`) go to /dev/null. Speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import yaml

from bench import servers
from bench.loadgen import build_request, sign
from mfaproxy.daemon import preflight
from mfaproxy.daemon.limits import Datagram
from mfaproxy.daemon.server import Server
from mfaproxy.observability.logging import apply_log_config

WARMUP = 2_000


class Replies:
    """Stands in for the listening socket: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, _data: bytes, _addr: Any) -> None:
        self.sent += 1

    def is_closing(self) -> bool:
        return False


def write_config(workdir: Path, state_store: str, log_level: str) -> Path:
    users = servers.make_users(1000)
    users_file = workdir / "users.yaml"
    servers.write_users_file(users_file, servers.argon2_hashes(users, "cheap"))
    server: dict[str, Any] = {
        "listen": ["127.0.0.1:1812"],  # never bound here
        "log": {"format": "json", "level": log_level},
        "state_dir": str(workdir / "state"),
    }
    if state_store != "memory":
        server["state_store"] = {"backend": state_store}
    document = {
        "server": server,
        "clients": [{"name": "bench", "address": ["127.0.0.1/32"], "secret": servers.SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(users_file)}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }
    path = workdir / "mfaproxy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


async def drive(server: Server, requests: list[bytes], first_port: int, window: int) -> None:
    """Every request through the dispatcher, `window` at a time; a fresh source port
    for every 256 Identifiers, so none is a retransmission of another."""
    replies = Replies()
    work = iter(enumerate(requests))

    async def one_at_a_time() -> None:
        for i, data in work:
            port = first_port + (i // 256) % 30_000
            item = Datagram(data, ("127.0.0.1", port), replies, time.monotonic(), False)  # type: ignore[arg-type]
            await server.dispatcher.process(item)

    await asyncio.gather(*(one_at_a_time() for _ in range(window)))
    if replies.sent != len(requests):
        raise RuntimeError(f"{len(requests) - replies.sent} requests got no answer")


async def measure(args: argparse.Namespace, config_path: Path) -> dict[str, float]:
    config = preflight.load(config_path)
    apply_log_config(config.server.log)
    server = Server(config)
    secret = servers.SECRET.encode()
    credentials = servers.workload(servers.make_users(1000), WARMUP + args.requests, 1)
    requests = [
        bytes(sign(build_request(user, password, secret), i % 256, secret))
        for i, (user, password) in enumerate(credentials)
    ]
    try:
        await drive(server, requests[:WARMUP], 20_000, args.concurrency)
        loop, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
        await drive(server, requests[WARMUP:], 50_000, args.concurrency)
        count = args.requests
        return {
            "loop_us": (time.thread_time() - loop) * 1e6 / count,
            "process_us": (time.process_time() - process) * 1e6 / count,
            "wall_us": (time.perf_counter() - wall) * 1e6 / count,
        }
    finally:
        await server.dispatcher.stop()
        await server.dispatcher.runtime.close()
        await server.shared.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--state-store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--log-level", choices=["warning", "info"], default="warning")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mfaproxy-bench-dispatch-") as tmp:
        config_path = write_config(Path(tmp), args.state_store, args.log_level)
        stderr = sys.stderr
        with open(os.devnull, "w", encoding="utf-8") as sink:
            sys.stderr = sink  # the audit lines at `info`
            try:
                result = uvloop.run(measure(args, config_path))
            finally:
                sys.stderr = stderr
    print(
        f"{args.requests} requests, state store {args.state_store}, log {args.log_level}: "
        f"loop {result['loop_us']:.1f} us/request, process {result['process_us']:.1f}, "
        f"wall {result['wall_us']:.1f} ({1e6 / result['wall_us']:.0f}/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
