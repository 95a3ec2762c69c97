"""TOTP (RFC 6238) without I/O: secrets, provisioning URIs and code verification.

The caller passes the time in (`now`, Unix seconds) and the last time step this user
had accepted; `verify` returns the step a code matched so the caller can store it with
an atomic compare-and-set (`UserStore.accept_totp_step`). Together they make every code
single use, as RFC 6238 section 5.2 requires ("the verifier MUST NOT accept the second
attempt of the OTP after the successful validation has been issued for the first OTP").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Literal

import pyotp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mfaproxy.otp.codes import digit_code

Algorithm = Literal["sha1", "sha256", "sha512"]

_DIGESTS: dict[str, Callable[..., hashlib._Hash]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
# Key length = HMAC output length, as the RFC 6238 Appendix B seeds do; RFC 4226
# section 4 (R6) asks for at least 128 bits and recommends 160.
_SECRET_BYTES = {"sha1": 20, "sha256": 32, "sha512": 64}


class TotpSettings(BaseModel):
    """`multifactor.totp` in the configuration."""

    # Same rules as mfaproxy.config.schema.Strict, not imported from there so that the config
    # module can embed this model without an import cycle.
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(default="mfaproxy", min_length=1, max_length=64)
    digits: Literal[6, 8] = 6
    # RFC 6238 section 5.2 recommends 30 s; pyotp accepts at most 120 s.
    period: int = Field(default=30, ge=15, le=120)
    algorithm: Algorithm = "sha1"
    # Steps accepted either side of the current one for clock drift (RFC 6238 section
    # 5.2 recommends "at most one time step" of network delay).
    window: int = Field(default=1, ge=0, le=10)

    @field_validator("issuer")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        # The Key URI format uses ":" to separate the issuer from the account name.
        if ":" in value:
            raise ValueError("must not contain ':'")
        return value


def new_secret(settings: TotpSettings | None = None) -> str:
    """A fresh random shared secret, base32 without padding (as authenticator apps want)."""
    algorithm = (settings or TotpSettings()).algorithm
    raw = secrets.token_bytes(_SECRET_BYTES[algorithm])
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def secret_from_bytes(raw: bytes) -> str:
    """The base32 form of a raw key (RFC 6238 Appendix B gives its seeds as bytes)."""
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def _totp(secret: str, settings: TotpSettings) -> pyotp.TOTP:
    return pyotp.TOTP(
        secret,
        digits=settings.digits,
        digest=_DIGESTS[settings.algorithm],
        interval=settings.period,
    )


def time_step(now: float, settings: TotpSettings) -> int:
    """T = floor((now - T0) / X) with T0 = 0 (RFC 6238 section 4.2)."""
    return int(now // settings.period)


def code_at_step(secret: str, step: int, settings: TotpSettings) -> str:
    """The code for one time step: HOTP (RFC 4226 section 5.3) with counter T."""
    return str(_totp(secret, settings).generate_otp(step))


def code_at(secret: str, now: float, settings: TotpSettings) -> str:
    """The code an authenticator shows at `now`."""
    return code_at_step(secret, time_step(now, settings), settings)


def provisioning_uri(secret: str, user: str, settings: TotpSettings) -> str:
    """The `otpauth://totp/Issuer:user?...` URI that authenticator apps scan as a QR code."""
    return str(_totp(secret, settings).provisioning_uri(name=user, issuer_name=settings.issuer))


def normalise_code(code: str, settings: TotpSettings) -> str | None:
    """Digits only, spaces ignored (apps show "123 456"); None when it cannot be a code."""
    return digit_code("".join(code.split()), settings.digits)


def verify(
    secret: str,
    code: str,
    now: float,
    settings: TotpSettings,
    last_step: int | None = None,
) -> int | None:
    """Return the time step `code` matches, or None.

    Steps from now-window to now+window are tried (RFC 6238 section 6 resynchronisation);
    a step at or before `last_step` is refused, which rejects both a replay of the same
    code and a code older than one already used (section 5.2). Every candidate is
    compared, in constant time, so the response time does not tell which step matched.
    The caller must then store the step with `accept_totp_step`, which is the atomic
    check that closes the race between two concurrent requests. A malformed `secret`
    (not base32, or under 112 bits, which pyotp refuses) raises ValueError: stored
    secrets are ours, so that is a bug or a corrupt store, not a wrong code.
    """
    wanted = normalise_code(code, settings)
    if wanted is None:
        return None
    totp = _totp(secret, settings)
    current = time_step(now, settings)
    matched: int | None = None
    for step in range(current - settings.window, current + settings.window + 1):
        if step < 0 or (last_step is not None and step <= last_step):
            continue
        candidate = str(totp.generate_otp(step))
        # Keep the earliest fresh match: it blocks the fewest future codes.
        if hmac.compare_digest(candidate.encode(), wanted.encode()) and matched is None:
            matched = step
    return matched
