"""The SMS method: a one-time code sent by text message, through Twilio or a carrier's
email-to-SMS gateway.

The number is the directory's (`FactorUser.mobile`), else the one stored at enrolment
(`{"number": ...}`), normalised to `+` and digits.

Twilio: the SDK's async client (aiohttp) is created on first use, inside the running
loop, and closed by `close()`. `TwilioConfig.base_url` points the SDK elsewhere (a local
fake in tests): the Messages API belongs to the SDK's `api` domain object, whose
`base_url` attribute ("https://api.twilio.com") prefixes every URL it builds
(twilio/base/domain.py `Domain.absolute_url`); we replace that attribute on the client's
cached `client.api`. The SDK would also rewrite the host for an edge or region taken from
TWILIO_EDGE / TWILIO_REGION in the environment, so those are cleared when base_url is set.
The SDK applies no timeout of its own to async requests: `timeout` bounds each send here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from mfaproxy.config.multifactor import (
    EmailGatewayConfig,
    Method,
    MultifactorConfig,
    SmsMethodConfig,
    TwilioConfig,
)
from mfaproxy.errors import ConfigError, UpstreamUnavailable
from mfaproxy.factors.base import Factor, FactorServices, FactorUser, MailSender
from mfaproxy.factors.delivery import (
    DeliveryFactor,
    DeliveryFailed,
    check_template,
    mask_number,
    render,
)
from mfaproxy.observability import metrics

log = structlog.get_logger(__name__)

TWILIO_TIMEOUT = 10.0
TWILIO_API = "https://api.twilio.com"
# The SDK logs every request line and header at INFO; keep that out of service logs
# (our own sms_sent / sms_provider_error lines say what matters).
_SDK_LOG = logging.getLogger("mfaproxy.twilio_sdk")
_SDK_LOG.setLevel(logging.WARNING)

_SEPARATORS = re.compile(r"[\s().\-/]")


def normalise_number(raw: object) -> str | None:
    """`+1 (555) 123-4567` -> `+15551234567`; None for what cannot be a phone number.

    A number without `+` is kept as digits (a carrier gateway may want the national
    form); `00` is read as the international prefix.
    """
    if not isinstance(raw, str):
        return None
    number = _SEPARATORS.sub("", raw.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    digits = number.removeprefix("+")
    # E.164 allows at most 15 digits; under 7 is no subscriber number anywhere.
    if not (digits.isascii() and digits.isdigit()) or not 7 <= len(digits) <= 15:
        return None
    if number.startswith("+") and digits.startswith("0"):
        return None  # no country code starts with 0
    return number


class TwilioTransport:
    def __init__(self, config: TwilioConfig, timeout: float = TWILIO_TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        self._http: Any = None
        self._client: Any = None
        self.server = urlsplit(config.base_url or TWILIO_API).netloc

    def _get_client(self) -> Any:
        # aiohttp sessions belong to the loop they are made in: make it on first use.
        if self._client is None:
            self._http = AsyncTwilioHttpClient(logger=_SDK_LOG)
            client = Client(
                self.config.account_sid,
                self.config.auth_token.get_secret_value(),
                http_client=self._http,
            )
            if self.config.base_url:
                client.edge = client.region = None
                client.api.base_url = self.config.base_url.rstrip("/")
            self._client = client
        return self._client

    def _sender(self) -> dict[str, str]:
        if self.config.messaging_service_sid:
            return {"messaging_service_sid": self.config.messaging_service_sid}
        return {"from_": self.config.from_number or ""}

    def _observe(self, result: str, started: float, up: int) -> None:
        metrics.UPSTREAM_LATENCY.labels(service="twilio", result=result).observe(
            time.monotonic() - started
        )
        metrics.UPSTREAM_UP.labels(service="twilio", server=self.server).set(up)

    async def send(self, number: str, text: str) -> None:
        client = self._get_client()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                message = await client.messages.create_async(to=number, body=text, **self._sender())
        except (TwilioRestException, TwilioServiceException) as exc:
            # Twilio answered: the service is up, the request was refused. Its message
            # text may quote the number; the status and error code say enough.
            self._observe("failure", started, 1)
            log.warning("sms_provider_error", status=exc.status, twilio_code=exc.code)
            raise DeliveryFailed("sms_provider_error") from exc
        except ValueError as exc:  # a 2xx whose body is not JSON (a proxy page...)
            self._observe("failure", started, 0)
            log.warning("sms_provider_error", error=type(exc).__name__)
            raise DeliveryFailed("sms_provider_error") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._observe("failure", started, 0)
            log.warning("sms_unreachable", server=self.server, error=type(exc).__name__)
            raise DeliveryFailed("sms_unreachable") from exc
        self._observe("sent", started, 1)
        log.info("sms_sent", provider="twilio", sid=str(message.sid), status=str(message.status))

    async def check_credentials(self) -> str:
        """Fetch the account (`mfaproxy doctor`): its status, or raise DeliveryFailed
        with the reason (wrong SID or token, unreachable)."""
        client = self._get_client()
        try:
            async with asyncio.timeout(self.timeout):
                account = await client.api.v2010.accounts(self.config.account_sid).fetch_async()
        except (TwilioRestException, TwilioServiceException) as exc:
            raise DeliveryFailed(f"Twilio refused: HTTP {exc.status}, code {exc.code}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise DeliveryFailed(f"{self.server}: {type(exc).__name__}") from exc
        return f"account {account.sid} is {account.status}"

    async def close(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()


class GatewayTransport:
    """Email to `<digits>@<domain>`: the carrier turns it into a text message."""

    def __init__(self, config: EmailGatewayConfig, mail: MailSender | None) -> None:
        self.domain = config.domain
        self.mail = mail

    async def send(self, number: str, text: str) -> None:
        if self.mail is None:
            raise DeliveryFailed("smtp_not_configured")
        try:
            # No subject: many gateways prepend it to the text.
            await self.mail.send([f"{number.removeprefix('+')}@{self.domain}"], "", text)
        except UpstreamUnavailable as exc:
            raise DeliveryFailed("smtp_unavailable") from exc
        log.info("sms_sent", provider="email_gateway")

    async def close(self) -> None:
        return None


class SmsFactor(DeliveryFactor):
    method: Method = "sms"
    field = "number"
    no_destination = "No mobile number is on file for you; contact your administrator"

    def __init__(
        self, settings: SmsMethodConfig, services: FactorServices, timeout: float = TWILIO_TIMEOUT
    ) -> None:
        super().__init__(settings, services)
        self.sms = settings
        self.transport: TwilioTransport | GatewayTransport
        if settings.provider == "twilio" and settings.twilio is not None:
            self.transport = TwilioTransport(settings.twilio, timeout)
        elif settings.provider == "email_gateway" and settings.email_gateway is not None:
            self.transport = GatewayTransport(settings.email_gateway, services.mail)
        else:  # SmsMethodConfig already refuses this; keep mypy and readers sure
            raise ValueError(f"sms provider {settings.provider!r} has no settings")

    def normalise(self, raw: object) -> str | None:
        return normalise_number(raw)

    def mask(self, destination: str) -> str:
        return mask_number(destination)

    def directory_value(self, user: FactorUser) -> str | None:
        return user.mobile

    def not_ready(self) -> str | None:
        if isinstance(self.transport, GatewayTransport) and self.transport.mail is None:
            return "smtp_not_configured"
        return None

    async def transmit(self, destination: str, code: str) -> None:
        await self.transport.send(destination, render(self.sms.message, code, self.sms))

    async def close(self) -> None:
        await self.transport.close()


def build(config: MultifactorConfig, services: FactorServices) -> Factor:
    if config.sms is None:
        raise ConfigError(["multifactor.sms: the sms method needs this section"])
    check_template(config.sms.message, "multifactor.sms.message")
    return SmsFactor(config.sms, services)
