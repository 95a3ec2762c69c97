"""The TOTP method (authenticator apps) on top of the pure logic in factors/totp.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.factors.base import Factor, FactorRequest, FactorResult, FactorServices, FactorUser
from mfaproxy.otp import totp
from mfaproxy.store.records import UserRepository


class TotpFactor:
    name = "totp"
    keywords: frozenset[str] = frozenset()

    def __init__(self, settings: totp.TotpSettings, services: FactorServices):
        self.settings = settings
        self.services = services
        self.code_length: int | None = settings.digits

    def is_enrolled(self, user: FactorUser) -> bool:
        return user.record is not None and "totp" in user.record.enrolled

    def looks_like_code(self, text: str) -> bool:
        return totp.normalise_code(text, self.settings) is not None

    def can_enrol_inline(self, user: FactorUser) -> bool:
        return True  # the base32 key fits in a Reply-Message

    async def begin(self, request: FactorRequest) -> FactorResult:
        return FactorResult.prompted("totp")

    async def check(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        user, now, settings = request.user.name, request.now, self.settings
        if totp.normalise_code(answer, settings) is None:
            return FactorResult.reject("malformed_code")
        last = request.user.record.totp_last_step if request.user.record else None

        def check(store: UserRepository) -> str:
            # One trip to the store's thread for the read, the check and the write.
            secret = store.get_totp_secret(user)
            if secret is None:
                return "not_enrolled"
            step = totp.verify(secret, answer, now, settings, last)
            if step is None:
                # Tell a replay from a typo in the audit log (RFC 6238 section 5.2).
                seen = totp.verify(secret, answer, now, settings) is not None
                return "replayed" if seen else "bad_code"
            # The atomic compare-and-set: of two requests with the same code, one wins.
            return "code_ok" if store.accept_totp_step(user, step) else "replayed"

        reason = await self.services.users.run(check)
        if reason == "code_ok":
            return FactorResult.accept(reason)
        return FactorResult.reject(reason)

    async def begin_enrolment(self, request: FactorRequest) -> FactorResult:
        secret = totp.new_secret(self.settings)
        spaced = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
        fields = {
            "key": spaced,
            "digits": str(self.settings.digits),
            "period": str(self.settings.period),
        }
        return FactorResult.prompted("totp_enrol", fields, {"secret": secret}, "enrolment")

    async def finish_enrolment(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        secret = str(pending.get("secret", ""))
        step = totp.verify(secret, answer, request.now, self.settings) if secret else None
        if step is None:
            return FactorResult.reject("bad_code")
        user, now = request.user.name, request.now

        def enrol(store: Any) -> None:
            store.set_totp_secret(user, secret, now)
            store.accept_totp_step(user, step)
            store.set_method(user, "totp", now)

        await self.services.users.run(enrol)
        return FactorResult.accept("enrolled")

    async def close(self) -> None:
        return None


def build(config: MultifactorConfig, services: FactorServices) -> Factor:
    return TotpFactor(config.totp, services)
