"""Our own sd_notify(3): tell systemd about readiness, reloads, stops and liveness.

A service of `Type=notify` writes `KEY=VALUE` lines in one datagram to the AF_UNIX socket
named by NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). Outside
systemd the variable is unset and every call here does nothing, so the daemon runs the same
in a terminal or a test. Sending never raises: a lost notification must not take the RADIUS
service down with it (systemd's watchdog will notice if the process really is stuck).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

_log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | None:
    """The address to sendto(), or None when we cannot (or need not) notify."""
    if value.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte instead of '@'.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Unset, relative, or a transport we do not speak (systemd 254+ also has vsock:).
    return None


def _positive_int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    number = int(value)
    return number if number > 0 else None


class SystemdNotifier:
    """sd_notify for one process; the environment is read once, at construction."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _positive_int(env.get("WATCHDOG_USEC"))
        pid_text = env.get("WATCHDOG_PID")
        # Unset means "this process"; set but unparsable means "not for us" (as sd_notify).
        self._watchdog_pid = os.getpid() if pid_text is None else _positive_int(pid_text)

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket."""
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send the fields as one datagram; True when the kernel accepted it."""
        if self._address is None or not fields:
            return False
        # A newline in a value would start a new, forged assignment: flatten it.
        lines = (f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop on a full receive queue: drop instead.
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            _log.debug("sd_notify failed", fields=sorted(fields), error=str(exc))
            return False
        return True

    def ready(self) -> bool:
        return self.notify(READY=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC time in microseconds.

        systemd >= 253 (Type=notify-reload) needs MONOTONIC_USEC to tell this reload from an
        earlier one; older versions ignore it. Follow with ready() when the reload is done.
        """
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`."""
        return self.notify(STATUS=text)

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec=), or None when not asked.

        WATCHDOG_PID names the process the watchdog is meant for; a child that inherited
        the environment must not ping on its parent's behalf.
        """
        if self._watchdog_usec is None or self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000
