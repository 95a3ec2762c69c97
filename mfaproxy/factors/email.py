"""The email method: a one-time code mailed to the user through `FactorServices.mail`.

The address is the directory's (`FactorUser.email`), else the one stored at enrolment
(`{"address": ...}`). The same object also serves the `email` alternate way, so nothing
here assumes email is the user's own method.
"""

from __future__ import annotations

import re

from mfaproxy.config.multifactor import EmailMethodConfig, Method, MultifactorConfig
from mfaproxy.errors import UpstreamUnavailable
from mfaproxy.factors.base import Factor, FactorServices, FactorUser
from mfaproxy.factors.delivery import (
    DeliveryFactor,
    DeliveryFailed,
    check_template,
    mask_email,
    render,
)

# Deliberately loose (RFC 5322 is not the point): one @, a dotted domain, and nothing
# that could break a header line.
_ADDRESS = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+")
MAX_ADDRESS = 254  # RFC 5321 section 4.5.3.1.3 path limit, less the brackets


def normalise_address(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    address = raw.strip()
    if len(address) > MAX_ADDRESS or not _ADDRESS.fullmatch(address):
        return None
    return address


class EmailFactor(DeliveryFactor):
    method: Method = "email"
    field = "address"
    no_destination = "No email address is on file for you; contact your administrator"

    def __init__(self, settings: EmailMethodConfig, services: FactorServices) -> None:
        super().__init__(settings, services)
        self.email = settings

    def normalise(self, raw: object) -> str | None:
        return normalise_address(raw)

    def mask(self, destination: str) -> str:
        return mask_email(destination)

    def directory_value(self, user: FactorUser) -> str | None:
        return user.email

    def not_ready(self) -> str | None:
        return "smtp_not_configured" if self.services.mail is None else None

    async def transmit(self, destination: str, code: str) -> None:
        mail = self.services.mail
        if mail is None:
            raise DeliveryFailed("smtp_not_configured")
        body = render(self.email.body, code, self.email)
        try:
            await mail.send([destination], self.email.subject, body)
        except UpstreamUnavailable as exc:
            raise DeliveryFailed("smtp_unavailable") from exc


def build(config: MultifactorConfig, services: FactorServices) -> Factor:
    settings = config.email_settings()
    check_template(settings.body, "multifactor.email.body")
    return EmailFactor(settings, services)
