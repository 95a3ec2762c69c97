"""Rate-limited log lines for dropped packets: one line per source and reason per
interval, carrying how many were not logged since, so a flood from one NAS (or a
scanner) cannot flood the log while every drop is still counted in the metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("mfaproxy.daemon.runtime")

INTERVAL_SECONDS = 10.0
# Sources remembered at once; beyond this the memory starts over (a spoofing flood).
MAX_KEYS = 4096
# Reasons a scan produces at will: logged at debug level only.
QUIET_REASONS = frozenset({"unknown_client"})


class DropLog:
    def __init__(
        self, interval: float = INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self._interval = interval
        self._clock = clock
        # (source, reason) -> (time of the last line, drops not logged since)
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def dropped(self, reason: str, source: str, **fields: Any) -> None:
        now = self._clock()
        key = (source, reason)
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) >= MAX_KEYS:
            self._last.clear()
        self._last[key] = (now, 0)
        suppressed = last[1] if last is not None else 0
        emit = log.debug if reason in QUIET_REASONS else log.info
        emit("packet_dropped", reason=reason, source=source, suppressed=suppressed, **fields)
