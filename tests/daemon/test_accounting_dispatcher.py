"""The accounting dispatcher in process: bounded intake, retransmissions while the first
copy waits on a silent upstream, reload and shutdown. The transport is a recorder; the
upstream is a real UDP socket that never answers."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from mfaproxy.config.schema import Config, parse_config
from mfaproxy.daemon.accounting import (
    AccountingDispatcher,
    build_accounting,
    open_accounting,
    reload_accounting,
)
from mfaproxy.observability import metrics
from mfaproxy.store.state import MemoryStateStore
from tests.support.ports import free_udp_port

SECRET = "dispatch-secret"
NAS = ("127.0.0.1", 40000)


def config(upstream_port: int | None = None, intake_queue: int = 16) -> Config:
    upstream = ""
    if upstream_port is not None:
        upstream = (
            f"    upstream: {{servers: [{{host: 127.0.0.1, port: {upstream_port}, secret: up}}],"
            " timeout: 0.3, retries: 0}\n"
        )
    return parse_config(
        f"""
server:
  accounting:
    listen: ["127.0.0.1:{free_udp_port()}"]
    intake_queue: {intake_queue}
    concurrency: 4
{upstream}clients:
  - {{name: nas, address: 127.0.0.1, secret: {SECRET}}}
directory: {{backend: local, local: {{users_file: users.yaml}}}}
"""
    )


def record(session: bytes, ident: int = 1) -> bytes:
    attrs = [(40, struct.pack("!I", 1)), (44, session)]
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    header = bytes([4, ident]) + struct.pack("!H", 20 + len(body))
    return header + hashlib.md5(header + bytes(16) + body + SECRET.encode()).digest() + body


class Recorder:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.event = asyncio.Event()

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)
        self.event.set()


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _state_dir_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the spool goes to ./state, here a temporary one


def dispatcher(cfg: Config) -> AccountingDispatcher:
    made = open_accounting(cfg, MemoryStateStore(), bytes(32))
    assert made is not None
    return made


async def test_a_full_intake_drops_and_counts() -> None:
    acct = dispatcher(config(intake_queue=3))
    transport = cast(Any, Recorder())
    before = sample("mfaproxy_packets_dropped_total", reason="accounting_overload")
    for i in range(10):  # no workers started: the queue fills and stays full
        acct.submit(record(b"s", i), NAS, transport)
    assert sample("mfaproxy_packets_dropped_total", reason="accounting_overload") == before + 7


async def test_copies_while_waiting_on_the_upstream_are_ignored_then_retried_afresh(
    silent_upstream: int,
) -> None:
    acct = dispatcher(config(silent_upstream))
    transport = Recorder()
    runtime = acct.runtime
    in_flight = sample("mfaproxy_duplicates_total", action="ignored_in_flight")
    unavailable = sample(
        "mfaproxy_accounting_outcomes_total", status_type="start", outcome="upstream_unavailable"
    )
    data = record(b"held")
    tr = cast(Any, transport)
    # Two copies at once: whichever the table sees first waits on the upstream, and the
    # other is ignored as in flight.
    first = asyncio.ensure_future(acct.process(runtime, data, NAS, tr))
    await acct.process(runtime, data, NAS, tr)
    assert sample("mfaproxy_duplicates_total", action="ignored_in_flight") == in_flight + 1
    await first
    assert transport.sent == []  # nobody acknowledged: no answer
    key = ("mfaproxy_accounting_outcomes_total", "start", "upstream_unavailable")
    assert sample(key[0], status_type=key[1], outcome=key[2]) == unavailable + 1
    await acct.process(runtime, data, NAS, tr)  # the next copy is processed, not silenced
    assert sample(key[0], status_type=key[1], outcome=key[2]) == unavailable + 2


async def test_reload_swaps_upstreams_and_retires_the_old_runtime(silent_upstream: int) -> None:
    acct = dispatcher(config(silent_upstream))
    old = acct.runtime
    reload_accounting(acct, config())  # no upstream any more
    assert acct.runtime is not old
    transport = Recorder()
    await acct.process(acct.runtime, record(b"after-reload"), NAS, cast(Any, transport))
    assert len(transport.sent) == 1 and transport.sent[0][0] == 5  # answered at once
    await asyncio.gather(*acct._retiring)


async def test_reload_cannot_turn_accounting_on_or_off() -> None:
    reload_accounting(None, config())  # on in the new file, off when started: no effect
    acct = dispatcher(config())
    runtime = acct.runtime
    off = parse_config(
        f"clients: [{{name: nas, address: 127.0.0.1, secret: {SECRET}}}]\n"
        "directory: {backend: local, local: {users_file: users.yaml}}\n"
    )
    assert build_accounting(off, None) is None
    reload_accounting(acct, off)
    assert acct.runtime is runtime


async def test_shutdown_answers_what_was_taken_then_refuses_more() -> None:
    acct = dispatcher(config())
    await acct.start(reuse_port=False)
    transport = Recorder()
    tr = cast(Any, transport)
    acct.submit(record(b"taken"), NAS, tr)
    before = sample("mfaproxy_packets_dropped_total", reason="shutting_down")
    await acct.shutdown(grace=5)
    assert len(transport.sent) == 1  # the record taken before the stop was answered
    acct.submit(record(b"late", 2), NAS, tr)
    assert sample("mfaproxy_packets_dropped_total", reason="shutting_down") == before + 1
