"""structlog set-up: JSON for services, console for people, stdlib logging routed through.

Redaction is defence in depth: code never passes a password, OTP, secret or State to a
log call, and this processor still blanks any key that looks like one, at every level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

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
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
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
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at debug would include packet dumps: keep it at warning.
    for noisy in ("ldap3", "asyncio", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
