"""What the email and SMS methods share: one-time codes that are sent, then typed back.

`OneTimeCodes` makes a code, keeps only a keyed digest of it in `pending` (the
challenge session may live in Redis, so a dump of it must not reveal live codes),
verifies the answer in constant time, makes each code single use and limits how often
a destination is sent to. `DeliveryFactor` is the `Factor` both methods are: they only
differ in where the destination comes from, how it is masked and how the text travels.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import re
import secrets
import string
from collections.abc import Mapping
from typing import Any

import structlog

from mfaproxy.config.multifactor import CodeDelivery, Method, template_problem
from mfaproxy.errors import ConfigError
from mfaproxy.factors.base import FactorRequest, FactorResult, FactorServices, FactorUser, Verdict
from mfaproxy.otp.codes import digit_code
from mfaproxy.radius.text import reply_message
from mfaproxy.store.crypto import derive_key
from mfaproxy.store.records import UserRepository
from mfaproxy.store.state import StateStore

log = structlog.get_logger(__name__)

FLOOD_NAMESPACE = "delivery"
# Single-use markers: a code is accepted only while its marker can still be taken.
ISSUED_NAMESPACE = "delivery_issued"
_SALT_BYTES = 16
_KEY_INFO = b"mfaproxy delivered codes v1"


class DeliveryFailed(Exception):
    """The code could not be handed to the mail server or SMS provider."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------- text helpers


def new_code(length: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(length))


def mask_email(address: str) -> str:
    """`alice@example.com` -> `a***@example.com`: enough to recognise, not to harvest."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "***"
    with contextlib.suppress(UnicodeError):  # an IDN shows as xn--, not as "?"
        domain = domain.encode("idna").decode("ascii")
    return f"{local[0]}***@{domain}"


def mask_number(number: str) -> str:
    """`+15551234567` -> `+1******4567`."""
    plus = "+" if number.startswith("+") else ""
    digits = number.lstrip("+")
    if len(digits) <= 6:
        return plus + "*" * (len(digits) - 2) + digits[-2:]
    return plus + digits[0] + "*" * (len(digits) - 5) + digits[-4:]


def check_template(template: str, where: str) -> None:
    """Refuse a message template that would fail at send time or never show the code
    (the schema already refuses one in a configuration file: config/multifactor.py)."""
    problem = template_problem(template)
    if problem is not None:
        raise ConfigError([f"{where}: {problem}"])


def render(template: str, code: str, settings: CodeDelivery) -> str:
    minutes = math.ceil(settings.code_lifetime_seconds / 60)
    return template.format(code=code, minutes=minutes)


# ----------------------------------------------------------------- codes


class OneTimeCodes:
    """Issue and verify the codes of one method (`factor` is part of what is signed)."""

    def __init__(
        self, factor: str, settings: CodeDelivery, state: StateStore, master_key: bytes
    ) -> None:
        self.factor = factor
        self.settings = settings
        self.state = state
        # A server key, not the salt alone, keys the digest: with only salt and digest
        # (a leaked session), trying all 10**6 codes offline would take a second.
        self._key = derive_key(master_key, _KEY_INFO)

    def _digest(self, salt: bytes, user: str, code: str) -> str:
        # Digits-only code and NUL separators keep the encoding unambiguous.
        message = b"\0".join([salt, self.factor.encode(), code.encode(), user.encode()])
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def flood_key(self, destination: str) -> str:
        # Hashed so a shared state store holds no address book.
        message = b"\0".join([self.factor.encode(), destination.lower().encode()])
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    async def admit(self, destination: str, now: float) -> FactorResult | None:
        """Record a send to `destination`; the REJECT to answer when it would flood it."""
        s = self.settings
        key = self.flood_key(destination)
        if await self.state.rate_limit(
            FLOOD_NAMESPACE,
            key,
            now,
            max_events=s.max_sends_per_hour,
            window=3600,
            min_interval=s.resend_interval_seconds,
        ):
            return None
        if await self.state.count(FLOOD_NAMESPACE, key, now, 3600) >= s.max_sends_per_hour:
            prompt = "Too many codes were sent; try again later"
        else:
            wait = max(s.resend_interval_seconds, 1)
            prompt = f"A code was sent recently; use it or try again in {wait} seconds"
        log.info("code_flood_limited", factor=self.factor)
        return FactorResult(
            Verdict.REJECT, "flood_limited", prompt=reply_message(prompt), counts_as_failure=False
        )

    async def issue(self, user: str, masked: str, now: float) -> tuple[str, dict[str, Any]]:
        """A fresh code and the pending data that lets `verify` check it (without it)."""
        code = new_code(self.settings.code_length)
        salt = secrets.token_bytes(_SALT_BYTES)
        lifetime = self.settings.code_lifetime_seconds
        pending = {
            "salt": salt.hex(),
            "digest": self._digest(salt, user, code),
            "expires": now + lifetime,
            "to": masked,
        }
        await self.state.put(ISSUED_NAMESPACE, salt.hex(), {"factor": self.factor}, lifetime, now)
        return code, pending

    async def verify(
        self, user: str, answer: str, pending: Mapping[str, Any], now: float
    ) -> FactorResult:
        try:
            salt = bytes.fromhex(str(pending["salt"]))
            digest = str(pending["digest"])
            expires = float(pending["expires"])
        except (KeyError, ValueError, TypeError):
            # Append mode, or a session from before a restart: nothing was sent to match.
            return FactorResult.reject("no_code_sent", counts_as_failure=False)
        if now >= expires:
            return FactorResult.reject("code_expired", counts_as_failure=False)
        typed = re.sub(r"\s+", "", answer)
        if digit_code(typed, self.settings.code_length) is None:
            return FactorResult.reject("malformed_code")
        # Bytes: compare_digest refuses non-ASCII str, and pending is only data.
        if not hmac.compare_digest(self._digest(salt, user, typed).encode(), digest.encode()):
            return FactorResult.reject("bad_code")
        # Atomic take: of two requests racing with the same code, one wins.
        if await self.state.take(ISSUED_NAMESPACE, salt.hex(), now) is None:
            return FactorResult.reject("replayed")
        return FactorResult.accept("code_ok")


# ----------------------------------------------------------------- the factor


class DeliveryFactor:
    """A method that sends a code to an address or number; see email.py and sms.py.

    Subclasses set `method`, `field` (the enrolment key: "address", "number"),
    `no_destination` (the prompt when there is nowhere to send), and implement
    `normalise`, `mask`, `directory_value`, `not_ready` and `transmit`.
    """

    method: Method
    field: str
    no_destination: str
    keywords: frozenset[str] = frozenset()

    def __init__(self, settings: CodeDelivery, services: FactorServices) -> None:
        self.name: str = self.method
        self.code_length: int | None = settings.code_length
        self.settings = settings
        self.services = services
        self.codes = OneTimeCodes(self.method, settings, services.state, services.master_key)

    # -- per method

    def normalise(self, raw: object) -> str | None:
        """The destination in canonical form, or None when it is unusable."""
        raise NotImplementedError

    def mask(self, destination: str) -> str:
        raise NotImplementedError

    def directory_value(self, user: FactorUser) -> str | None:
        raise NotImplementedError

    def not_ready(self) -> str | None:
        """The UNAVAILABLE reason when the transport is not configured, else None."""
        return None

    async def transmit(self, destination: str, code: str) -> None:
        """Send the code; raise DeliveryFailed with a short reason when it cannot."""
        raise NotImplementedError

    # -- the Factor interface

    def looks_like_code(self, text: str) -> bool:
        return digit_code(text, self.settings.code_length) is not None

    def is_enrolled(self, user: FactorUser) -> bool:
        if self.normalise(self.directory_value(user)) is not None:
            return True
        return user.record is not None and self.method in user.record.enrolled

    def can_enrol_inline(self, user: FactorUser) -> bool:
        # Only a directory value can be proven inline: a typed one would let whoever
        # knows the password route codes to their own phone.
        return self.normalise(self.directory_value(user)) is not None

    async def begin(self, request: FactorRequest) -> FactorResult:
        destination = self.normalise(self.directory_value(request.user))
        if destination is None:
            destination = await self._enrolled_destination(request.user)
        return await self._send(request, destination, enrolment=False)

    async def check(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        return await self.codes.verify(request.user.name, answer, pending, request.now)

    async def begin_enrolment(self, request: FactorRequest) -> FactorResult:
        destination = self.normalise(self.directory_value(request.user))
        return await self._send(request, destination, enrolment=True)

    async def finish_enrolment(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        result = await self.codes.verify(request.user.name, answer, pending, request.now)
        if result.verdict is not Verdict.ACCEPT:
            return result
        # The destination the code went to, not whatever the directory says now.
        destination = self.normalise(pending.get("destination"))
        if destination is None:
            return FactorResult.reject("no_destination", counts_as_failure=False)
        user, now, method = request.user.name, request.now, self.method
        data = {self.field: destination}

        def enrol(store: UserRepository) -> None:
            store.set_enrolment(user, method, data, now)
            store.set_method(user, method, now)

        await self.services.users.run(enrol)
        log.info("delivery_enrolled", factor=self.method, user=user, to=self.mask(destination))
        return FactorResult.accept("enrolled")

    async def close(self) -> None:
        return None

    # -- shared steps

    async def _enrolled_destination(self, user: FactorUser) -> str | None:
        if user.record is None or self.method not in user.record.enrolled:
            return None  # the record says there is nothing to read: spare the store a call
        name, method = user.name, self.method
        data = await self.services.users.run(lambda s: s.get_enrolment(name, method))
        return self.normalise(data.get(self.field)) if data else None

    async def _send(
        self, request: FactorRequest, destination: str | None, *, enrolment: bool
    ) -> FactorResult:
        # Checked before the flood window so a misconfiguration does not use up sends.
        reason = self.not_ready()
        if reason is not None:
            return FactorResult.unavailable(reason)
        if destination is None:
            return FactorResult(
                Verdict.REJECT,
                "no_destination",
                prompt=reply_message(self.no_destination),
                counts_as_failure=False,
            )
        refused = await self.codes.admit(destination, request.now)
        if refused is not None:
            return refused
        masked = self.mask(destination)
        code, pending = await self.codes.issue(request.user.name, masked, request.now)
        try:
            await self.transmit(destination, code)
        except DeliveryFailed as exc:
            log.warning("code_not_sent", factor=self.method, user=request.user.name, why=exc.reason)
            return FactorResult.unavailable(exc.reason)
        log.info("code_sent", factor=self.method, user=request.user.name, to=masked)
        if enrolment:
            pending["destination"] = destination
        reason = "enrolment" if enrolment else "code_sent"
        return FactorResult.prompted("code_sent", {"destination": masked}, pending, reason)
