"""Accounting throughput: records/s and latency of Accounting-Request -> Accounting-Response
for FreeRADIUS 3.2 alone (`detail` module), mfaproxy logging the records (audit event at
info level to a file), mfaproxy forwarding each record to that FreeRADIUS before it
answers (`answer: after_upstream`), and mfaproxy answering at once and forwarding in
the background (`answer: at_once`; then how long FreeRADIUS took to hold every record).

    .venv/bin/python -m bench.accounting --seconds 5 --concurrency 32

A closed loop over raw UDP: `--concurrency` records outstanding from 4 source sockets,
each a distinct Stop record (its own Acct-Session-Id, so no retransmission cache hit),
its Request Authenticator computed at send time (RFC 2866 section 3) and every
Accounting-Response verified (Response Authenticator). Reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import statistics
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import HOST, SECRET, Mfaproxy
from tests.support.freeradius import FreeRadiusServer
from tests.support.ports import free_udp_port

SOCKETS = 4


def record(identifier: int, session: int) -> tuple[bytes, bytes]:
    attrs = [
        (1, b"bench-user"),
        (40, struct.pack("!I", 2)),  # Stop
        (44, f"bench-{session:012d}".encode()),
        (4, bytes([127, 0, 0, 1])),
        (42, struct.pack("!I", session & 0xFFFFFFFF)),
        (43, struct.pack("!I", 4096)),
        (46, struct.pack("!I", 3600)),
        (49, struct.pack("!I", 1)),
    ]
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    header = bytes([4, identifier]) + struct.pack("!H", 20 + len(body))
    authenticator = hashlib.md5(header + bytes(16) + body + SECRET.encode()).digest()
    return header + authenticator + body, authenticator


@dataclass
class Result:
    answered: int = 0
    timeouts: int = 0
    bad: int = 0
    latencies: list[float] = field(default_factory=list)


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        entry = self.waiting.pop(data[1], None) if len(data) >= 20 else None
        if entry is not None and not entry[1].done():
            entry[1].set_result(data)


async def run(port: int, seconds: float, concurrency: int, timeout: float = 10) -> Result:
    loop = asyncio.get_running_loop()
    sockets = []
    for _ in range(SOCKETS):
        _, protocol = await loop.create_datagram_endpoint(_Socket, remote_addr=(HOST, port))
        sockets.append(protocol)
    sessions = itertools.count()
    result = Result()
    free = {i: list(range(256)) for i in range(SOCKETS)}
    deadline = loop.time() + seconds

    async def one(slot: int) -> None:
        sock = sockets[slot % SOCKETS]
        ids = free[slot % SOCKETS]
        while loop.time() < deadline:
            identifier = ids.pop(0)
            packet, authenticator = record(identifier, next(sessions))
            future: asyncio.Future[bytes] = loop.create_future()
            sock.waiting[identifier] = (authenticator, future)
            started = time.perf_counter()
            assert sock.transport is not None
            sock.transport.sendto(packet)
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                sock.waiting.pop(identifier, None)
                result.timeouts += 1
            else:
                expected = hashlib.md5(reply[:4] + authenticator + reply[20:] + SECRET.encode())
                if reply[0] == 5 and expected.digest() == reply[4:20]:
                    result.answered += 1
                    result.latencies.append(time.perf_counter() - started)
                else:
                    result.bad += 1
            ids.append(identifier)

    await asyncio.gather(*(one(i) for i in range(concurrency)))
    for sock in sockets:
        assert sock.transport is not None
        sock.transport.close()
    return result


def report(name: str, result: Result, seconds: float) -> None:
    lat = sorted(result.latencies) or [0.0]
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    print(
        f"{name:32} {result.answered / seconds:8.0f} records/s  p50 {p50:6.2f} ms"
        f"  p99 {p99:6.2f} ms  timeouts {result.timeouts}  bad {result.bad}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", default="", help="run the targets whose name has this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-acct-") as tmp:
        work = Path(tmp)
        with FreeRadiusServer({}, secret=SECRET, accounting=True) as freeradius:
            upstream = {"host": HOST, "port": freeradius.acct_port, "secret": SECRET}
            targets = {
                "freeradius (detail)": (None, freeradius.acct_port),
                "mfaproxy (audit log)": ({}, 0),
                "mfaproxy -> freeradius": ({"upstream": {"servers": [upstream]}}, 0),
                "mfaproxy at_once -> freeradius": (
                    {"upstream": {"servers": [upstream], "answer": "at_once"}},
                    0,
                ),
            }
            for name, (accounting, port) in targets.items():
                if args.only not in name:
                    continue
                if accounting is None:
                    result = asyncio.run(run(port, args.seconds, args.concurrency))
                    report(name, result, args.seconds)
                    continue
                acct_port = free_udp_port(HOST)
                section = {"listen": [f"{HOST}:{acct_port}"], **accounting}
                daemon = Mfaproxy(
                    work / name.replace(" ", "_").replace(">", ""),
                    {
                        "server": {"accounting": section},
                        "directory": {
                            "backend": "local",
                            "local": {"users_file": str(write_empty_users(work))},
                        },
                    },
                    log_level="info",
                )
                held = len(freeradius.detail_records())
                with daemon:
                    result = asyncio.run(run(acct_port, args.seconds, args.concurrency))
                    started = time.monotonic()
                    if "upstream" in accounting:
                        arrived = wait_forwarded(freeradius, held + result.answered)
                    waited = time.monotonic() - started
                report(name, result, args.seconds)
                if "upstream" in accounting:
                    print(
                        f"{'':32} {arrived - held} of {result.answered} answered records at"
                        f" FreeRADIUS, the last {waited:.1f} s after the load ended"
                    )


def wait_forwarded(freeradius: FreeRadiusServer, expected: int, limit: float = 120) -> int:
    """How many records FreeRADIUS holds once it has `expected` (or `limit` s passed)."""
    deadline = time.monotonic() + limit
    while True:
        count = len(freeradius.detail_records())
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.2)  # polling a file in a benchmark, not a test


def write_empty_users(work: Path) -> Path:
    path = work / "users.yaml"
    path.write_text("users: {}\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    main()
