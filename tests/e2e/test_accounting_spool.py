"""End to end: `answer: at_once` and its durable spool, through the real daemon, with a
real FreeRADIUS as the upstream accounting server (its detail file is the count of what
arrived). An outage bridged, a SIGKILL between the answer and the forward, a full spool,
tampered rows, and two workers sharing one spool under a radclient burst."""

from __future__ import annotations

import copy
import shutil
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_accounting import (
    SECRET,
    UPSTREAM_SECRET,
    acct_packet,
    base_config,
    receive_for,
    record,
    wait_record,
)
from tests.support.cluster import count_events, free_port_pair, scrape, total, wait_until
from tests.support.daemon import Daemon
from tests.support.freeradius import FreeRadiusServer
from tests.support.nas import UdpNas
from tests.support.ports import free_port, free_udp_port
from tests.support.radclient import radclient

pytestmark = pytest.mark.e2e

OUTCOMES = "mfaproxy_accounting_outcomes_total"
PENDING = "mfaproxy_accounting_spool_pending{}"
OLDEST = "mfaproxy_accounting_spool_oldest_seconds{}"
DISCARDED = "mfaproxy_accounting_spool_discarded_total"


@pytest.fixture
def upstream() -> Iterator[FreeRadiusServer]:
    """A FreeRADIUS accounting server on fixed ports, stopped: each test starts it."""
    server = FreeRadiusServer({}, UPSTREAM_SECRET, port=free_udp_port(), acct_port=free_udp_port())
    try:
        yield server
    finally:
        server.stop()


def spool_config(server: FreeRadiusServer, **spool: Any) -> dict[str, Any]:
    return {
        "upstream": {
            "servers": [{"host": server.host, "port": server.acct_port, "secret": UPSTREAM_SECRET}],
            "timeout": 0.3,
            "retries": 0,
            "answer": "at_once",
            "spool": {"retry_min_seconds": 0.1, "retry_max_seconds": 0.4, **spool},
        }
    }


class Node:
    """One daemon (or supervisor) with accounting, restartable on the same state dir."""

    def __init__(
        self, tmp: Path, accounting: dict[str, Any], metrics: int | None = None, **server: Any
    ) -> None:
        self.tmp = tmp
        self.acct_port, self.metrics = free_udp_port(), metrics or free_port()
        config = base_config(
            {"listen": [f"127.0.0.1:{self.acct_port}"], **accounting}, self.metrics
        )
        config["server"].update(server)
        self.config = config
        self.daemon = self.start()

    def start(self) -> Daemon:
        self.daemon = Daemon(self.tmp, copy.deepcopy(self.config)).start()
        return self.daemon

    def metric(self, key: str, worker: int = 0) -> float:
        return scrape(self.metrics + worker).get(key, 0.0)

    def spool_file(self) -> Path:
        return self.tmp / "state" / "accounting-spool.sqlite3"


def delay(entry: dict[str, str]) -> int:
    return int(entry.get("Acct-Delay-Time", "0"))


def arrived(server: FreeRadiusServer) -> Counter[str]:
    return Counter(r.get("Acct-Session-Id", "") for r in server.detail_records())


def wait_arrived(server: FreeRadiusServer, sessions: set[str], timeout: float = 30) -> None:
    wait_until(lambda: set(arrived(server)) >= sessions, f"{sessions} upstream", timeout)


def test_an_outage_is_bridged_and_every_record_arrives_once_with_a_larger_delay(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    node = Node(tmp_path, spool_config(upstream))
    daemon = node.daemon
    try:
        sessions = {f"out-{i}": (3 if i % 2 else None) for i in range(6)}
        for session, nas_delay in sessions.items():
            extra = {"Acct-Delay-Time": str(nas_delay)} if nas_delay is not None else {}
            result = radclient(node.acct_port, SECRET, record("Stop", session, **extra), "acct")
            assert result.code == "Accounting-Response", result.output  # answered at once
            assert wait_record(daemon, session)["outcome"] == "spooled"
        daemon.wait_for(lambda e: e.get("event") == "accounting_spool_retry")
        assert node.metric(PENDING) == 6
        # Every record has waited more than two seconds when the upstream comes back.
        wait_until(lambda: node.metric(OLDEST) >= 3.0, "the spool's oldest record aged")
        upstream.start()
        wait_arrived(upstream, set(sessions))
        wait_until(lambda: node.metric(PENDING) == 0, "an empty spool")
        assert node.metric(OLDEST) == 0
        counts = arrived(upstream)
        assert all(counts[s] == 1 for s in sessions), counts  # once each
        for entry in upstream.detail_records():
            nas_delay = sessions[entry["Acct-Session-Id"]] or 0
            assert delay(entry) >= nas_delay + 2, entry  # RFC 2866 section 5.2
        samples = scrape(node.metrics)
        assert samples[f"{OUTCOMES}{{outcome=forwarded,status_type=stop}}"] == 6
        assert samples["mfaproxy_accounting_spooled_total{}"] == 6
        assert samples["mfaproxy_accounting_spool_retries_total{}"] >= 1
        forwarded = [e for e in daemon.events if e.get("event") == "accounting_forwarded"]
        assert {e["session_id"] for e in forwarded} == set(sessions)
    finally:
        daemon.stop()


def test_a_record_answered_then_sigkilled_before_its_forward_is_forwarded_after_restart(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    node = Node(tmp_path, spool_config(upstream))
    result = radclient(node.acct_port, SECRET, record("Start", "kill-1"), "acct")
    assert result.code == "Accounting-Response", result.output
    wait_record(node.daemon, "kill-1", outcome="spooled")
    wait_until(lambda: node.metric(OLDEST) >= 1.0, "the record waited a second")
    assert node.daemon.proc is not None
    node.daemon.proc.send_signal(signal.SIGKILL)  # no drain, no goodbye
    assert node.daemon.proc.wait(timeout=10) == -signal.SIGKILL
    upstream.start()
    daemon = node.start()
    try:
        event = daemon.wait_for(
            lambda e: e.get("event") == "accounting_forwarded" and e.get("session_id") == "kill-1"
        )
        assert event["delay_time"] >= 1
        assert arrived(upstream) == Counter({"kill-1": 1})
        assert delay(upstream.detail_records()[0]) >= 1
        wait_until(lambda: node.metric(PENDING) == 0, "an empty spool")
    finally:
        daemon.stop()


def test_a_full_spool_leaves_the_nas_unanswered_counts_it_and_takes_the_retry_later(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    node = Node(tmp_path, spool_config(upstream, max_records=2))
    daemon = node.daemon
    nas = UdpNas(node.acct_port)
    try:
        for session in ("full-1", "full-2"):
            assert radclient(node.acct_port, SECRET, record("Start", session), "acct").code
        request = acct_packet("full-3")
        raw = request.RequestPacket()
        nas.send(raw)
        wait_record(daemon, "full-3", outcome="spool_full")
        daemon.wait_for(lambda e: e.get("event") == "accounting_spool_full")
        assert nas.receive_none(0.5)  # not recorded, so not answered (RFC 2866 section 2)
        samples = scrape(node.metrics)
        assert samples["mfaproxy_accounting_spool_full_total{}"] == 1
        assert samples[f"{OUTCOMES}{{outcome=spool_full,status_type=start}}"] == 1
        assert samples[PENDING] == 2

        upstream.start()
        wait_arrived(upstream, {"full-1", "full-2"})
        wait_until(lambda: node.metric(PENDING) == 0, "room in the spool")
        nas.sock.settimeout(10)
        nas.send(raw)  # the NAS's retransmission is taken in afresh now
        assert receive_for(nas, request.id)[0] == 5
        wait_arrived(upstream, {"full-3"})
        assert arrived(upstream) == Counter({"full-1": 1, "full-2": 1, "full-3": 1})
    finally:
        nas.close()
        daemon.stop()


def tamper(spool: Path, request_ids: dict[str, str]) -> None:
    with sqlite3.connect(spool, isolation_level=None) as conn:
        # A flipped byte of the sealed record, an older received time (a larger delay
        # for whoever bills it), and a row nobody wrote.
        conn.execute(
            "UPDATE spool SET sealed = CAST(substr(sealed, 1, 30) || X'5A' || substr(sealed, 32)"
            " AS BLOB) WHERE request_id = ?",
            (request_ids["bad-1"],),
        )
        conn.execute(
            "UPDATE spool SET received = received - 86400 WHERE request_id = ?",
            (request_ids["bad-2"],),
        )
        conn.execute(
            "INSERT INTO spool (token, request_id, status_type, received, sealed, next_try)"
            " VALUES ('x', 'forged', 'stop', unixepoch(), 'not sealed', 0)"
        )


def test_tampered_and_corrupt_spool_rows_are_skipped_and_counted_never_a_traceback(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    node = Node(tmp_path, spool_config(upstream))
    request_ids = {}
    for session in ("bad-1", "bad-2", "good-1"):
        assert radclient(node.acct_port, SECRET, record("Stop", session), "acct").code
        request_ids[session] = wait_record(node.daemon, session)["request_id"]
    assert node.daemon.stop() == 0  # SIGTERM: the records stay in the spool
    tamper(node.spool_file(), request_ids)
    upstream.start()
    daemon = node.start()
    try:
        wait_arrived(upstream, {"good-1"})
        wait_until(lambda: node.metric(PENDING) == 0, "the bad rows gone")
        samples = scrape(node.metrics)
        assert samples[f"{DISCARDED}{{reason=unauthentic}}"] == 2
        assert samples[f"{DISCARDED}{{reason=malformed}}"] == 1
        assert arrived(upstream) == Counter({"good-1": 1})
        rejected = [e for e in daemon.events if e.get("event") == "accounting_spool_row_rejected"]
        assert sorted(e["reason"] for e in rejected) == ["malformed", "unauthentic", "unauthentic"]
        assert "Traceback" not in daemon.output
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- workers


def burst(port: int, sessions: list[str]) -> int:
    """One radclient process sending `sessions` in parallel; how many were answered."""
    binary = shutil.which("radclient")
    assert binary
    text = "\n".join(
        ",".join(f"{k}={v}" for k, v in record("Interim-Update", s).items()) + "\n"
        for s in sessions
    )
    proc = subprocess.run(
        [binary, "-x", "-p", "16", "-r", "5", "-t", "3", f"127.0.0.1:{port}", "acct", SECRET],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.stdout.count("Received Accounting-Response")


def test_two_workers_share_one_spool_and_a_burst_loses_nothing(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    node = Node(
        tmp_path,
        spool_config(upstream),
        metrics=free_port_pair(),  # worker i serves metrics on this port + i
        workers=2,
        state_store={"backend": "sqlite"},
    )
    daemon = node.daemon
    try:
        count_events(daemon, "listening", 2)
        # Each radclient has its own socket, which the kernel routes to one worker.
        batches = [[f"w{b}-{i}" for i in range(25)] for b in range(12)]
        with ThreadPoolExecutor(len(batches)) as pool:
            answered = sum(pool.map(lambda batch: burst(node.acct_port, batch), batches))
        sessions = {s for batch in batches for s in batch}
        assert answered == len(sessions)  # every one answered at once, upstream down
        spooled = [total(node.metrics + w, "mfaproxy_accounting_spooled_total") for w in (0, 1)]
        assert sum(spooled) == len(sessions) and min(spooled) > 0, spooled
        upstream.start()  # both workers' readers now drain the one shared spool
        wait_arrived(upstream, sessions, timeout=60)
        wait_until(lambda: node.metric(PENDING) == 0, "an empty spool")
        counts = arrived(upstream)
        assert set(counts) == sessions and set(counts.values()) == {1}, counts.most_common(3)
        forwarded = [total(node.metrics + w, f"{OUTCOMES}{{outcome=forwarded") for w in (0, 1)]
        assert sum(forwarded) == len(sessions)
        assert "Traceback" not in daemon.output
    finally:
        daemon.stop()
