"""The per-request shortcuts of observability/ keep what they shortcut: a labelled
child is looked up once and still counts in the registry; an event below the level is
dropped before the processors run, one at or above it is still written, redacted."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import structlog
from structlog.typing import EventDict

from mfaproxy.observability import metrics
from mfaproxy.observability.logging import configure_logging


def test_a_cached_child_is_the_registrys_child_and_counts() -> None:
    before = metrics.REGISTRY.get_sample_value(
        "mfaproxy_packets_dropped_total", {"reason": "cache_probe"}
    )
    child = metrics.PACKETS_DROPPED.labels(reason="cache_probe")
    assert metrics.PACKETS_DROPPED.labels(reason="cache_probe") is child
    assert metrics.PACKETS_DROPPED.labels("cache_probe") is child  # positional: same series
    child.inc()
    metrics.PACKETS_DROPPED.labels("cache_probe").inc()
    after = metrics.REGISTRY.get_sample_value(
        "mfaproxy_packets_dropped_total", {"reason": "cache_probe"}
    )
    assert (before or 0.0) + 2 == after


def test_below_the_level_no_processor_runs_at_or_above_it_the_line_is_written() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    try:
        seen: list[str] = []

        def spy(_logger: Any, _method: str, event: EventDict) -> EventDict:
            seen.append(str(event["event"]))
            return event

        processors = structlog.get_config()["processors"]
        structlog.configure(processors=[processors[0], spy, *processors[1:]])
        log = structlog.get_logger("mfaproxy.probe")
        log.debug("below", password="hunter2")
        log.info("below_too")
        log.warning("above", password="hunter2")
        assert seen == ["above"]
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["above"]
        assert lines[0]["password"] == "[redacted]"
    finally:
        configure_logging("console", "warning")
        logging.getLogger().setLevel(logging.WARNING)
