"""`server.accounting`: the RADIUS accounting listeners (RFC 2866) and the upstream
accounting servers records are forwarded to. No behaviour here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

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


class SpoolConfig(Strict):
    """The durable spool of `answer: at_once` (state_dir/accounting-spool.sqlite3): each
    record is written there before the NAS is answered, and deleted once an upstream
    acknowledged it (FreeRADIUS's detail file and detail reader)."""

    # Beyond this many records waiting, a new record is not taken in: the NAS gets no
    # answer (it retransmits or fails over), as with after_upstream and every server down.
    max_records: int = Field(default=100_000, ge=1, le=100_000_000)
    # A record no upstream took within this long is deleted unforwarded (counted, logged;
    # the audit log still has it). Default: 7 days.
    max_age_seconds: float = Field(default=604_800.0, gt=0, le=31_536_000)
    # Backoff after a failed forward: doubles from the first to the second, per process.
    retry_min_seconds: float = Field(default=1.0, ge=0.05, le=3600)
    retry_max_seconds: float = Field(default=60.0, ge=0.05, le=86_400)

    @model_validator(mode="after")
    def _check_backoff(self) -> SpoolConfig:
        if self.retry_max_seconds < self.retry_min_seconds:
            raise ValueError("retry_max_seconds must be at least retry_min_seconds")
        return self


class AccountingUpstreamConfig(Strict):
    servers: list[AccountingServerConfig] = Field(min_length=1)  # tried in order
    timeout: float = Field(default=3.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    answer: AnswerMode = "after_upstream"
    # Records each process forwards from the spool at once (`answer: at_once`).
    queue: int = Field(default=128, ge=1, le=1_000_000)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)


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
