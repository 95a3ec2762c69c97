"""structlog set-up: JSON for services, console for people, stdlib logging routed through.

Redaction is defence in depth: code never passes a password, OTP, secret or State to a
log call, and this processor still blanks any key that looks like one, at every level.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

from mfaproxy.config.schema import LogConfig

SENSITIVE_KEYS = frozenset(
    {
        "password",
        "passwd",
        "user_password",
        "secret",
        "shared_secret",
        "bind_password",
        "otp",
        "code",
        "passcode",
        "state",
        "token",
        "api_key",
        "auth_token",
        "skey",
        "key",
    }
)
REDACTED = "[redacted]"


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]


AUDIT_LOGGER = "mfaproxy.audit"


def _syslog_handler(address: str, facility: str, shared: list[Processor]) -> logging.Handler:
    """Audit events as JSON lines to syslog (a socket path, or host:port over UDP)."""
    if address.startswith("/"):
        target: str | tuple[str, int] = address
    else:
        host, _, port = address.rpartition(":")
        target = (host.strip("[]"), int(port))
    handler = logging.handlers.SysLogHandler(
        address=target, facility=logging.handlers.SysLogHandler.facility_names[facility]
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    handler.ident = "mfaproxy: "
    handler.append_nul = False  # a JSON line, nothing after it
    return handler


def configure_audit_syslog(address: str | None, facility: str = "authpriv") -> None:
    """Send the audit logger's events to syslog too (or stop, with address None)."""
    audit = logging.getLogger(AUDIT_LOGGER)
    for handler in [h for h in audit.handlers if isinstance(h, logging.handlers.SysLogHandler)]:
        audit.removeHandler(handler)
        handler.close()
    if address is not None:
        audit.addHandler(_syslog_handler(address, facility, _shared_processors()))


def apply_log_config(log: LogConfig) -> None:
    """The `server.log` section: format, level, and the optional audit syslog."""
    configure_logging(log.format, log.level)
    syslog = log.syslog
    configure_audit_syslog(
        syslog.address if syslog else None, syslog.facility if syslog else "authpriv"
    )


def configure_logging(
    fmt: str = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to one handler with one renderer."""
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared = _shared_processors()
    structlog.configure(
        # Below the level, an event is dropped before the chain runs: a debug line per
        # request otherwise costs its timestamp, redaction and wrapping, then is thrown
        # away by the stdlib logger (bench/README.md: a third of the logging cost).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    # What the stdlib adds to every record and no renderer here prints (the logging
    # HOWTO, "Optimization"): the caller's frame (a stack walk per line), thread and
    # process names. A few percent of a request at `info`, where each has its audit line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at debug would include packet dumps: keep it at warning.
    for noisy in ("ldap3", "asyncio", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
