"""`server.accounting`: the RADIUS accounting listeners (RFC 2866) and the upstream
accounting servers records are forwarded to. No behaviour here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mfaproxy.config.base import RadiusServerConfig, Strict, parse_host_port

# RFC 2866: the officially assigned accounting port.
ACCOUNTING_PORT = 1813

# When the NAS gets its Accounting-Response: after an upstream server acknowledged the
# record (RFC 2866 section 2: answer only once the record is safe), or at once, with the
# record forwarded in the background (a NAS that must not wait, an upstream that is slow).
AnswerMode = Literal["after_upstream", "at_once"]


class AccountingServerConfig(RadiusServerConfig):
    """An upstream accounting server; the port defaults to 1813."""

    port: int = Field(default=ACCOUNTING_PORT, ge=1, le=65535)


class AccountingUpstreamConfig(Strict):
    servers: list[AccountingServerConfig] = Field(min_length=1)  # tried in order
    timeout: float = Field(default=3.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    answer: AnswerMode = "after_upstream"
    # Records being forwarded in the background (`answer: at_once`); beyond this a record
    # is logged and answered but not forwarded, and counted.
    queue: int = Field(default=1024, ge=1, le=1_000_000)


class AccountingConfig(Strict):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:1813"], min_length=1)
    upstream: AccountingUpstreamConfig | None = None
    # Datagrams waiting for a worker, and records processed at once.
    intake_queue: int = Field(default=1024, ge=1, le=1_000_000)
    concurrency: int = Field(default=64, ge=1, le=100_000)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_host_port(item, ACCOUNTING_PORT)
        return value

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_host_port(item, ACCOUNTING_PORT) for item in self.listen]
