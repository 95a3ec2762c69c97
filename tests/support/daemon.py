"""Run the real mfaproxy daemon as a subprocess for end-to-end tests.

Readiness and progress are observed through the daemon's JSON log on stderr (the
`listening` event, audit events), never through sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_udp_port

REPO = Path(__file__).resolve().parents[2]
LogEvent = dict[str, Any]


class Daemon:
    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_udp_port()
        server = config.setdefault("server", {})
        server.setdefault("listen", [f"127.0.0.1:{self.port}"])
        server.setdefault("log", {"format": "json", "level": "debug"})
        server.setdefault("state_dir", str(workdir / "state"))
        # Rejects at once unless a test is about the delay: keeps the suite fast.
        server.setdefault("reject_delay", 0)
        self.config_path = workdir / "mfaproxy.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.events: list[LogEvent] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mfaproxy", "serve", "--config", str(self.config_path)],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda e: e.get("event") == "listening", timeout)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "_raw", "text": line}
                if isinstance(event, dict):
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[LogEvent], bool], timeout: float = 30) -> LogEvent:
        """Block until a log event matches; fail with the log if the daemon exits first."""

        def found() -> LogEvent | None:
            return next((e for e in self.events if predicate(e)), None)

        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    found() is not None or (self.proc is not None and self.proc.poll() is not None)
                ),
                timeout,
            )
            event = found()
        if event is None:
            raise AssertionError(f"event not seen (ok={ok}); daemon output:\n{self.output}")
        return event

    def wait_audit(self, timeout: float = 30, **match: Any) -> LogEvent:
        """Wait for the audit event with these fields (the reply can beat the log line)."""
        return self.wait_for(
            lambda e: (
                e.get("event") == "auth_decision" and all(e.get(k) == v for k, v in match.items())
            ),
            timeout,
        )

    def audit(self, **match: Any) -> list[LogEvent]:
        with self._cond:
            return [
                e
                for e in self.events
                if e.get("event") == "auth_decision"
                and all(e.get(k) == v for k, v in match.items())
            ]

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
