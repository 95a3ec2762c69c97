"""Outgoing email over SMTP (aiosmtplib): one-time codes and reset notices."""

from __future__ import annotations

import ssl
import time
from email.message import EmailMessage

import aiosmtplib
import structlog

from mfaproxy.config.multifactor import SmtpConfig
from mfaproxy.core.doctor import Check
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

    async def diagnose(self) -> list[Check]:
        """`mfaproxy doctor`: connect (and TLS), STARTTLS, AUTH, then QUIT; no mail is sent."""
        config = self.config
        service = f"smtp {config.host}:{config.port}"
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.security == "tls",
            start_tls=False,
            tls_context=self._tls,
            timeout=config.timeout,
        )
        checks: list[Check] = []
        try:
            greeting = await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return [Check.failed(service, "connect", _why(exc))]
        what = "connect (TLS)" if config.security == "tls" else "connect"
        checks.append(Check.passed(service, what, f"{greeting.code} {greeting.message[:60]}"))
        step = "STARTTLS"
        try:
            if config.security == "starttls":
                await client.starttls(tls_context=self._tls)
                checks.append(Check.passed(service, step, "certificate verified"))
            elif config.security == "none":
                checks.append(Check.skipped(service, "TLS", "none (security: none)"))
            step = "auth"
            if config.username is None:
                checks.append(Check.skipped(service, step, "no username configured"))
            else:
                password = config.password.get_secret_value() if config.password else ""
                await client.login(config.username, password)
                checks.append(Check.passed(service, step, f"as {config.username}"))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            checks.append(Check.failed(service, step, _why(exc)))
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        return checks


def _why(exc: BaseException) -> str:
    """A one-line reason; SMTP replies quote no secret (AUTH answers are generic)."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
