"""The `multifactor` and `smtp` sections: second-factor methods and how mail is sent.

Kept apart from config.py (which embeds these models) to keep each module readable.
Secrets accept the `<name>_file` / `<name>_env` forms, as everywhere in the schema.
"""

from __future__ import annotations

import base64
import binascii
import string
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, SecretStr, ValidationInfo, model_validator

from mfaproxy.config.base import (
    AttributeString,
    ConfigPath,
    RadiusServerConfig,
    Strict,
    take_secrets,
)
from mfaproxy.config.enrolment import InlineEnrolmentConfig
from mfaproxy.otp.backup_codes import BackupCodeSettings
from mfaproxy.otp.totp import TotpSettings

# The second-factor methods: the one definition (the stores and the CLI use it too).
Method = Literal["totp", "yubikey", "email", "sms", "duo", "radius"]
METHODS: tuple[Method, ...] = get_args(Method)
Alternate = Literal["email", "backup_codes"]

YUBICLOUD_URLS = [
    "https://api.yubico.com/wsapi/2.0/verify",
    "https://api2.yubico.com/wsapi/2.0/verify",
    "https://api3.yubico.com/wsapi/2.0/verify",
    "https://api4.yubico.com/wsapi/2.0/verify",
    "https://api5.yubico.com/wsapi/2.0/verify",
]


# The placeholders a code message may use: no attribute or index access, so an
# operator's template cannot reach into Python objects through str.format.
TEMPLATE_FIELDS = frozenset({"code", "minutes"})


def template_problem(template: str) -> str | None:
    """Why a code message template would fail at send time or never show the code."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return f"not a valid template: {exc}"
    unknown = sorted(fields - TEMPLATE_FIELDS)
    if unknown:
        return f"unknown placeholder(s) {unknown}; use {{code}}, {{minutes}}"
    if "code" not in fields:
        return "the template must contain {code}"
    return None


def _check_template(template: str) -> str:
    problem = template_problem(template)
    if problem is not None:
        raise ValueError(problem)
    return template


CodeTemplate = Annotated[str, AfterValidator(_check_template)]


class SmtpConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    # none: plain; starttls: upgrade after connect; tls: TLS from the first byte (465).
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = Field(default="mfaproxy@localhost", alias="from")
    timeout: float = Field(default=10.0, gt=0, le=120)
    ca_file: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("password",), info)


class CodeDelivery(Strict):
    """Shared by the methods that send a one-time code (email, SMS)."""

    code_length: int = Field(default=6, ge=6, le=10)
    code_lifetime_seconds: int = Field(default=300, ge=30, le=3600)
    # Anti-flood, per destination address or number: at most one send per interval,
    # and at most `max_sends_per_hour` in any hour.
    resend_interval_seconds: int = Field(default=30, ge=0, le=3600)
    max_sends_per_hour: int = Field(default=10, ge=1, le=1000)


class EmailMethodConfig(CodeDelivery):
    subject: str = "Your sign-in code"
    body: CodeTemplate = "Your sign-in code is {code}. It expires in {minutes} minutes."


class TwilioConfig(Strict):
    account_sid: str = Field(min_length=1)
    auth_token: SecretStr
    from_number: str | None = None
    messaging_service_sid: str | None = None
    # Only for tests and regional edges: where the Messages API lives.
    base_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("auth_token",), info)

    @model_validator(mode="after")
    def _sender(self) -> TwilioConfig:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        return self


class EmailGatewayConfig(Strict):
    # The SMS goes as an email to <number>@<domain> (a carrier's email-to-SMS gateway).
    domain: str = Field(min_length=3)


class SmsMethodConfig(CodeDelivery):
    provider: Literal["twilio", "email_gateway"]
    twilio: TwilioConfig | None = None
    email_gateway: EmailGatewayConfig | None = None
    message: CodeTemplate = "Your sign-in code is {code}"

    @model_validator(mode="after")
    def _provider_present(self) -> SmsMethodConfig:
        if getattr(self, self.provider) is None:
            raise ValueError(f"provider is {self.provider!r} but its section is missing")
        return self


class YubikeyMethodConfig(Strict):
    # local: the key's AES secret is in the user store; yubicloud: verify-v2 web service.
    validation: Literal["local", "yubicloud"] = "yubicloud"
    client_id: str | None = None
    api_key: SecretStr | None = None  # base64, from the Yubico API key page
    api_urls: list[str] = Field(default_factory=lambda: list(YUBICLOUD_URLS), min_length=1)
    timeout: float = Field(default=5.0, gt=0, le=60)
    ca_file: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("api_key",), info)

    @model_validator(mode="after")
    def _cloud_credentials(self) -> YubikeyMethodConfig:
        if self.validation == "yubicloud" and (self.client_id is None or self.api_key is None):
            raise ValueError("yubicloud validation needs client_id and api_key")
        if self.api_key is not None:
            try:
                base64.b64decode(self.api_key.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    "api_key is not base64 (copy it from the Yubico API key page)"
                ) from None
        return self


class PushLimitConfig(Strict):
    """Push fatigue (push bombing): how many pushes or calls one user may be sent."""

    max_pushes: int = Field(default=5, ge=1, le=1000)
    window_seconds: int = Field(default=600, ge=1, le=86400)


class DuoMethodConfig(Strict):
    integration_key: str = Field(min_length=1)
    secret_key: SecretStr
    api_hostname: str = Field(min_length=1)
    # auto: push unless the user typed a passcode.
    factor: Literal["auto", "push", "phone", "passcode"] = "auto"
    # secure: reject when Duo cannot be reached at preauth; safe: accept on the primary
    # alone then. Never applies once the user was asked (push sent, passcode typed).
    failmode: Literal["secure", "safe"] = "secure"
    # How long an out-of-band push or phone call may take (keep the NAS timeout longer).
    timeout: float = Field(default=60.0, gt=0, le=300)
    # Concurrent preauth/auth requests to Duo.
    pool_size: int = Field(default=16, ge=1, le=256)
    # Concurrent auth_status long polls (pushes waiting on their users); a separate
    # bound, so waiting pushes never delay another user's passcode or push.
    max_pending_pushes: int = Field(default=1000, ge=1, le=100000)
    push_limit: PushLimitConfig = PushLimitConfig()
    # Declare Verified Duo Push support at preauth: in challenge mode the code to type
    # into Duo Mobile is shown in an Access-Challenge while the push waits.
    verified_push: bool = False
    ca_file: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("secret_key",), info)


# The OTP server's settings are those of any upstream RADIUS server.
OtpRadiusServer = RadiusServerConfig


class RadiusMethodConfig(Strict):
    """A second RADIUS server (an OTP server) checks the second factor."""

    server: OtpRadiusServer
    failover: OtpRadiusServer | None = None
    timeout: float = Field(default=5.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    nas_identifier: AttributeString | None = None
    strip_domain: bool = False
    require_message_authenticator: bool = True


class AdministratorsConfig(Strict):
    # Members of this directory group match the `administrator` policy rule (and enrol
    # inline only with inline_enrolment.administrators). Reset requests are mailed to
    # `emails` (send_reset_email_to: administrators), not to the group's members.
    group: str | None = None
    emails: list[str] = Field(default_factory=list)


class ChallengeConfig(Strict):
    # RFC 2865 section 5.24 State lifetime: a challenge unanswered this long is void.
    timeout_seconds: int = Field(default=120, ge=10, le=900)
    # Wrong answers allowed inside one login before Access-Reject.
    attempts: int = Field(default=3, ge=1, le=10)
    # Open challenge sessions one user may have; a new one retires the oldest, so a
    # password holder cannot stock up States to answer all at once.
    max_open_per_user: int = Field(default=3, ge=1, le=100)


class LockoutConfig(Strict):
    max_failures: int = Field(default=5, ge=1, le=100)
    lockout_seconds: int = Field(default=900, ge=1, le=86400)
    # Second-factor failures of one user in any 24 hours, across lockouts: past it no
    # code is checked until the oldest leaves the day. Without it a password holder gets
    # `max_failures` guesses every `lockout_seconds` forever (480 a day by default).
    # NIST SP 800-63B section 5.2.2: at most 100 consecutive failed attempts.
    max_failures_per_day: int = Field(default=100, ge=1, le=100)
    # Second-factor failures accepted from one NAS per minute before it is throttled.
    client_failures_per_minute: int = Field(default=60, ge=1, le=100000)
    # How long one user's second-factor check may hold that user's lease (checks for
    # one user run one at a time, across nodes). Unset: derived from the longest
    # method wait (Duo `timeout`, the RADIUS method's timeout and retries) plus margin.
    check_lease_seconds: int | None = Field(default=None, ge=5, le=900)


class MultifactorConfig(Strict):
    enabled: list[Method] = Field(default_factory=lambda: list[Method](["totp"]))
    default: Method | None = "totp"
    alternate: list[Alternate] = Field(default_factory=lambda: list[Alternate](["backup_codes"]))
    # Users with no method under mfa_required may enrol the default method inside the
    # RADIUS flow, given what inline_enrolment.allow asks for (an operator's window,
    # or a code sent to their address): the password alone never enrols a device.
    enrol_unconfigured_users: bool = False
    inline_enrolment: InlineEnrolmentConfig = InlineEnrolmentConfig()
    send_reset_email_to: Literal["administrators", "specific_email"] = "administrators"
    specific_email: str | None = None
    administrators: AdministratorsConfig = AdministratorsConfig()
    challenge: ChallengeConfig = ChallengeConfig()
    lockout: LockoutConfig = LockoutConfig()
    totp: TotpSettings = TotpSettings()
    backup_codes: BackupCodeSettings = BackupCodeSettings()
    yubikey: YubikeyMethodConfig | None = None
    email: EmailMethodConfig | None = None
    sms: SmsMethodConfig | None = None
    duo: DuoMethodConfig | None = None
    radius: RadiusMethodConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MultifactorConfig:
        if self.default is not None and self.default not in self.enabled:
            raise ValueError(f"default {self.default!r} is not in enabled")
        for method in ("yubikey", "sms", "duo", "radius"):
            if method in self.enabled and getattr(self, method) is None:
                raise ValueError(f"{method} is enabled but the {method!r} section is missing")
        if self.send_reset_email_to == "specific_email" and not self.specific_email:
            raise ValueError("send_reset_email_to is specific_email but specific_email is unset")
        return self

    def check_lease(self) -> float:
        """Seconds a second-factor check holds its user's lease (see LockoutConfig)."""
        if self.lockout.check_lease_seconds is not None:
            return float(self.lockout.check_lease_seconds)
        waits = [15.0]
        if self.duo is not None:
            waits.append(self.duo.timeout + 10.0)
        if self.radius is not None:
            waits.append(self.radius.timeout * (self.radius.retries + 1) + 5.0)
        return max(waits)

    def email_settings(self) -> EmailMethodConfig:
        """Email codes work with defaults (as a method or as an alternate way)."""
        return self.email or EmailMethodConfig()
