"""The authentication engine: runs one verified request through the directory and the
decision rules, and writes the audit event. The transport gives it requests; it gives
back an `Answer` (the transport encodes and sends it)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from mfaproxy.config import ClientConfig, Config
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.replies import accept_attributes
from mfaproxy.directory.base import PasswordChecker, PrimaryOutcome, PrimaryResult
from mfaproxy.observability import metrics
from mfaproxy.radius.codec import STATUS_SERVER, RadiusRequest

audit = structlog.get_logger("mfaproxy.audit")
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    client: ClientConfig
    source_ip: str
    source_port: int


class Engine:
    def __init__(self, config: Config, checker: PasswordChecker):
        self.config = config
        self.checker = checker

    async def handle(self, ctx: RequestContext, request: RadiusRequest) -> Answer:
        started = time.monotonic()
        answer, primary = await self._decide(request)
        self._audit(ctx, request, answer, primary, time.monotonic() - started)
        return answer

    def _reject(self, reason: str) -> Answer:
        return Answer(Outcome.REJECT, reason, reply_message=self.config.replies.reject_message)

    async def _decide(self, request: RadiusRequest) -> tuple[Answer, PrimaryResult | None]:
        if request.code == STATUS_SERVER:
            # RFC 5997 section 4.2: answer Status-Server with Access-Accept.
            return Answer(Outcome.ACCEPT, "status_server"), None
        if request.has_chap or request.has_eap:
            # The second factor and the directory bind need the clear password (PAP).
            return self._reject("unsupported_authentication"), None
        if not request.user_name:
            return self._reject("missing_user_name"), None
        if request.state is not None:
            # No challenge was issued by this server for that State.
            return self._reject("unknown_state"), None
        if request.password is None:
            return self._reject("missing_password"), None
        primary = await self.checker.authenticate(request.user_name, request.password)
        log.debug(
            "primary_checked",
            backend=primary.backend,
            outcome=primary.outcome.value,
            reason=primary.reason,
            groups=sorted(primary.groups),
        )
        return self._after_primary(primary), primary

    def _after_primary(self, primary: PrimaryResult) -> Answer:
        if primary.outcome is PrimaryOutcome.UNAVAILABLE:
            # Fail closed: an outage must never look like a good password.
            return self._reject("directory_unavailable")
        if primary.outcome is PrimaryOutcome.REJECT:
            return self._reject(primary.reason or "bad_password")
        attributes = tuple(accept_attributes(self.config.replies, primary))
        return Answer(
            Outcome.ACCEPT,
            "primary_only",
            reply_message=self.config.replies.accept_message,
            attributes=attributes,
        )

    def _audit(
        self,
        ctx: RequestContext,
        request: RadiusRequest,
        answer: Answer,
        primary: PrimaryResult | None,
        elapsed: float,
    ) -> None:
        metrics.DECISIONS.labels(outcome=answer.outcome.value, reason=answer.reason).inc()
        audit.info(
            "auth_decision",
            request_id=ctx.request_id,
            client=ctx.client.name,
            nas_address=ctx.source_ip,
            nas_ip_address=request.nas_ip_address,
            nas_identifier=request.nas_identifier,
            calling_station_id=request.calling_station_id,
            user=request.user_name,
            outcome=answer.outcome.value,
            reason=answer.reason,
            backend=primary.backend if primary else None,
            latency_ms=round(elapsed * 1000, 2),
        )
