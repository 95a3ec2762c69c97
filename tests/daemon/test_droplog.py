"""Dropped packets are logged at most once per source and reason per interval, with the
count of those not logged since; every drop is still counted in the metrics."""

from __future__ import annotations

from structlog.testing import capture_logs

from mfaproxy.daemon.droplog import MAX_KEYS, DropLog
from tests.auth.harness import Clock


def test_one_line_per_source_and_reason_per_interval() -> None:
    clock = Clock(100.0)
    drops = DropLog(interval=10, clock=clock)
    with capture_logs() as logs:
        for _ in range(500):  # a flood from one NAS
            drops.dropped("malformed", "192.0.2.1")
        drops.dropped("malformed", "192.0.2.2")  # another source has its own line
        drops.dropped("replayed", "192.0.2.1")  # and so has another reason
        clock.advance(10)
        drops.dropped("malformed", "192.0.2.1")
    lines = [(e["source"], e["reason"], e["suppressed"]) for e in logs]
    assert lines == [
        ("192.0.2.1", "malformed", 0),
        ("192.0.2.2", "malformed", 0),
        ("192.0.2.1", "replayed", 0),
        ("192.0.2.1", "malformed", 499),
    ]
    assert all(e["event"] == "packet_dropped" for e in logs)


def test_unknown_sources_log_at_debug_and_memory_is_bounded() -> None:
    drops = DropLog(interval=10, clock=Clock())
    with capture_logs() as logs:
        for i in range(MAX_KEYS + 10):  # a scan from many spoofed addresses
            drops.dropped("unknown_client", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert {e["log_level"] for e in logs} == {"debug"}
    assert len(drops._last) <= MAX_KEYS
