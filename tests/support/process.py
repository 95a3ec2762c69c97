"""What every real test server (slapd, FreeRADIUS, redis-server, PostgreSQL, OpenVPN,
ocserv) shares."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Self


class ManagedServer:
    """Started on `with`; always torn down: `close()` runs on exit, and also when
    `start()` fails half way, so no process or temporary directory is left behind."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WatchedProcess:
    """A subprocess whose output lines (stdout and stderr together) are collected, to
    wait on them: progress is seen in what the program prints, never through sleeps."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            return any(text in line for line in self.lines) or self.proc.poll() is not None

        with self._cond:
            self._cond.wait_for(seen, timeout)
            if not any(text in line for line in self.lines):
                raise AssertionError(f"{text!r} not seen; output:\n{''.join(self.lines)[-4000:]}")

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
