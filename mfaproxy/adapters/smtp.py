"""Outgoing email over SMTP (aiosmtplib): one-time codes and reset notices."""

from __future__ import annotations

import ssl
import time
from email.message import EmailMessage

import aiosmtplib
import structlog

from mfaproxy.config.multifactor import SmtpConfig
from mfaproxy.errors import UpstreamUnavailable
from mfaproxy.observability import metrics

log = structlog.get_logger(__name__)


class SmtpSender:
    def __init__(self, config: SmtpConfig):
        self.config = config
        self._tls: ssl.SSLContext | None = None
        if config.security != "none":
            self._tls = ssl.create_default_context(
                cafile=str(config.ca_file) if config.ca_file else None
            )

    async def send(self, to: list[str], subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self.config.from_address
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message.set_content(body)
        password = self.config.password.get_secret_value() if self.config.password else None
        started = time.monotonic()
        try:
            await aiosmtplib.send(
                message,
                hostname=self.config.host,
                port=self.config.port,
                username=self.config.username,
                password=password,
                use_tls=self.config.security == "tls",
                start_tls=self.config.security == "starttls",
                tls_context=self._tls,
                timeout=self.config.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            metrics.UPSTREAM_LATENCY.labels(service="smtp", result="failure").observe(
                time.monotonic() - started
            )
            metrics.UPSTREAM_UP.labels(service="smtp", server=self.config.host).set(0)
            log.warning("smtp_failed", host=self.config.host, error=type(exc).__name__)
            raise UpstreamUnavailable(f"SMTP {self.config.host}: {type(exc).__name__}") from exc
        metrics.UPSTREAM_LATENCY.labels(service="smtp", result="sent").observe(
            time.monotonic() - started
        )
        metrics.UPSTREAM_UP.labels(service="smtp", server=self.config.host).set(1)
        log.info("email_sent", recipients=len(to), subject=subject)
