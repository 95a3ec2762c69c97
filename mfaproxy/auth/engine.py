"""The authentication engine: one verified request through the login policy, the
primary check, the MFA policy and the second-factor stage; then the audit event.

The daemon's runtime (daemon/runtime.py) gives it decoded requests; it gives back an
`Answer`, which the runtime encodes and sends. Policy and second-factor decisions are
pure (core/policy.py, core/second_factor.py); this module gathers their facts (I/O).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from mfaproxy.auth.login import Login, login_from_session
from mfaproxy.auth.password_guard import MSG_THROTTLED, PasswordGuard, Throttled, source_of
from mfaproxy.auth.second_factor import MSG_UNAVAILABLE, SecondFactorStage
from mfaproxy.auth.sessions import CHALLENGES
from mfaproxy.config.policies import MfaAction
from mfaproxy.config.schema import ClientConfig, Config
from mfaproxy.core import replies
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.groups import in_group
from mfaproxy.core.identity import LoginName, check_login_name
from mfaproxy.core.policy import (
    CountryLookup,
    PolicyContext,
    early_login_denial,
    evaluate,
    is_trusted_reconnect,
)
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.core.responses import decode_scrv1, split_append
from mfaproxy.core.second_factor import APPENDED_MODES
from mfaproxy.core.session import Session, is_well_formed_state, session_key
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.errors import Shed, UpstreamError
from mfaproxy.factors.base import Factor, FactorServices, FactorUser
from mfaproxy.observability import metrics
from mfaproxy.radius.addresses import parse_ip
from mfaproxy.radius.codec import RadiusRequest
from mfaproxy.radius.constants import STATUS_SERVER
from mfaproxy.store.records import UserRecord
from mfaproxy.store.throttle import MemoryThrottle, Throttle

audit_log = structlog.get_logger("mfaproxy.audit")
log = structlog.get_logger(__name__)


@dataclass
class RequestContext:
    request_id: str
    client: ClientConfig
    source_ip: str
    source_port: int
    # Filled in as the request is processed; written as one audit event at the end.
    audit: dict[str, Any] = field(default_factory=dict)
    # Set once the password and the login policy have passed: what the store failmode
    # `safe` may accept on when a store is down. Cleared again as soon as the user has
    # given a second factor (appended, or a response being judged) or a factor said no:
    # from then on a store failure rejects, whatever the failmode.
    admitted: PrimaryResult | None = None
    # The typed User-Name read through the realm rules, once it passed the checks.
    login: LoginName | None = None
    # Who the user is (core/identity.py), once the directory (or the challenge session)
    # said so: the audit event's `user`, and the key of everything user-keyed.
    identity: str | None = None


def request_key(ctx: RequestContext, request: RadiusRequest) -> str:
    """The request's RFC 5080 duplicate key as text: the same datagram retransmitted to
    another instance of a cluster has the same key there."""
    return f"{ctx.source_ip}|{ctx.source_port}|{request.identifier}|{request.authenticator.hex()}"


class Engine:
    def __init__(
        self,
        config: Config,
        checker: PasswordChecker,
        factors: Mapping[str, Factor],
        services: FactorServices,
        country_lookup: CountryLookup | None = None,
        clock: Callable[[], float] = time.time,
        throttle: Throttle | None = None,
    ):
        self.config = config
        # Wall-clock seconds: challenge sessions in a shared store expire by it. Tests
        # pass a virtual clock.
        self.clock = clock
        self.checker = checker
        self.factors = factors
        self.services = services
        self.country_lookup = country_lookup
        self.mfa = SecondFactorStage(config, factors, services)
        # The daemon passes the counters that outlive a reload (daemon/server.py Shared).
        self.guard = PasswordGuard(
            config.password_throttle,
            throttle or MemoryThrottle(),
            services.state,
            config.server.store_failmode,
        )

    async def handle(self, ctx: RequestContext, request: RadiusRequest) -> Answer:
        """Decide; write exactly one audit event whatever happens, a drop included."""
        started = time.monotonic()
        answer: Answer | None = None
        dropped = "internal_error"
        try:
            now = self.clock()
            answer = self._fitted(ctx, await self._decide(ctx, request, now))
            await self.mfa.trust.after(ctx.identity, answer.reason, now)
        except UpstreamError as exc:
            # Factors report their own outages as UNAVAILABLE; what is raised here is
            # the state or user store (Redis, PostgreSQL, SQLite) failing.
            answer = self._fitted(ctx, self._store_failure(ctx, exc))
        except Shed as exc:
            dropped = exc.reason  # overload: no answer, the NAS retransmits or fails over
            raise
        except asyncio.CancelledError:
            dropped = "cancelled"  # the shutdown grace ran out
            raise
        finally:
            self._audit(ctx, request, answer, dropped, time.monotonic() - started)
        return answer

    def _fitted(self, ctx: RequestContext, answer: Answer) -> Answer:
        """Every Reply-Message to this NAS at most its max_prompt long (core/prompts.py)."""
        message = self.mfa.prompts.cut(ctx.client.name, answer.reply_message)
        return answer if message == answer.reply_message else replace(answer, reply_message=message)

    def _store_failure(self, ctx: RequestContext, exc: UpstreamError) -> Answer:
        mode = self.config.server.store_failmode
        log.error("store_unavailable", error=str(exc), failmode=mode)
        if mode == "safe" and ctx.admitted is not None:
            metrics.STORE_FAILMODE.labels(action="accepted").inc()
            return replies.accept(self.config.replies, ctx.admitted, "store_failmode_safe")
        metrics.STORE_FAILMODE.labels(action="rejected").inc()
        return self._reject("store_unavailable", MSG_UNAVAILABLE)

    async def close(self) -> None:
        await self.checker.close()
        for factor in self.factors.values():
            await factor.close()

    def _reject(self, reason: str, message: str | None = None) -> Answer:
        return replies.reject(self.config.replies, reason, message)

    async def _decide(self, ctx: RequestContext, request: RadiusRequest, now: float) -> Answer:
        if request.code == STATUS_SERVER:
            # RFC 5997 section 4.2: answer Status-Server with Access-Accept.
            return Answer(Outcome.ACCEPT, "status_server")
        if request.has_chap or request.has_eap:
            # The second factor and the directory bind need the clear password (PAP).
            return self._reject("unsupported_authentication")
        if request.user_name is None:
            return self._reject("missing_user_name")
        login = check_login_name(request.user_name, self.config.directory.realms)
        if isinstance(login, str):
            # Blank, padded, control characters, undecodable, not NFKC: an alias attempt
            # or a broken NAS, either way never a name to look up (core/identity.py).
            return self._reject(login)
        ctx.login = login
        if request.state is not None:
            return await self._resume(ctx, request, login, now)
        if request.password is None:
            return self._reject("missing_password")
        return await self._first_round(ctx, request, login, request.password, now)

    def _policy_context(self, ctx: RequestContext, request: RadiusRequest) -> PolicyContext:
        """The request's facts before the password check: no identity, no groups yet."""
        address = parse_ip(ctx.source_ip)
        assert address is not None  # the transport only hands over datagrams from an IP
        return PolicyContext(
            user=None,
            client=ctx.client.name,
            client_address=address,
            nas_ip_address=parse_ip(request.nas_ip_address),
            calling_station_id=request.calling_station_id,
            country_lookup=self.country_lookup,
        )

    def _is_administrator(self, primary: PrimaryResult) -> bool | None:
        """In the administrators group; None (unknown) when the backend has no group
        data: "administrators always need MFA" must not silently stop applying."""
        group = self.config.multifactor.administrators.group
        return False if group is None else in_group(primary.groups, group)

    def _split(
        self, ctx: RequestContext, password: str, record: UserRecord | None
    ) -> tuple[str, str | None]:
        if ctx.client.second_factor not in APPENDED_MODES:
            return password, None
        if ctx.client.append_format == "scrv1":
            decoded = decode_scrv1(password)
            if decoded is not None:
                return decoded[0], decoded[1].strip() or None
        method = (record.method if record else None) or self.config.multifactor.default
        factor = self.factors.get(method) if method else None
        backup_codes = "backup_codes" in self.config.multifactor.alternate
        delimiter = ctx.client.append_delimiter
        if factor is None:
            return split_append(password, delimiter, None, frozenset(), backup_codes)
        return split_append(
            password,
            delimiter,
            factor.code_length,
            factor.keywords,
            backup_codes,
            factor.looks_like_code,
        )

    async def _split_appended(
        self, ctx: RequestContext, login: LoginName, typed: str
    ) -> tuple[str, str | None]:
        """Append mode: the password and the appended answer. Which code shape to split
        on comes from the method of the record stored under the typed name's key: a
        guess before the directory says who the user is, used for nothing else."""
        if ctx.client.second_factor not in APPENDED_MODES:
            return typed, None
        try:
            record = await self.mfa.user_record(login.key)
        except UpstreamError:
            record = None  # the store is asked again, by identity, after the password
        return self._split(ctx, typed, record)

    async def _first_round(
        self, ctx: RequestContext, request: RadiusRequest, login: LoginName, typed: str, now: float
    ) -> Answer:
        at = datetime.fromtimestamp(now, UTC)
        policy_ctx = self._policy_context(ctx, request)
        early = early_login_denial(self.config.access_policies.login, policy_ctx, at)
        if early is not None:
            ctx.audit.update(early.log_fields())
            return self._reject("login_policy_denied")
        password, appended = await self._split_appended(ctx, login, typed)
        checked = await self._check_password(ctx, request, login, password, now)
        if isinstance(checked, Answer):
            return checked
        primary = checked
        ctx.audit.update(backend=primary.backend)
        log.debug(
            "primary_checked",
            backend=primary.backend,
            outcome=primary.outcome.value,
            reason=primary.reason,
            groups=None if primary.groups is None else sorted(primary.groups),
        )
        if primary.outcome is PrimaryOutcome.UNAVAILABLE:
            # Fail closed: an outage must never look like a good password.
            return self._reject("directory_unavailable")
        if primary.outcome is PrimaryOutcome.REJECT:
            return self._reject(primary.reason or "bad_password")
        if not primary.identity:
            return self._reject("no_identity")  # a directory bug; never key on the typed name
        identity = ctx.identity = primary.identity
        full = replace(
            policy_ctx,
            user=identity,
            groups=primary.groups,
            backend=primary.backend,
            is_administrator=self._is_administrator(primary),
        )
        login_decision = evaluate(self.config.access_policies.login, full, at)
        ctx.audit.update(login_decision.log_fields())
        if login_decision.action == "access_denied":
            return self._reject("login_policy_denied")
        # Failmodes are for outages, never for answers: a request that carries its
        # second factor (append mode) is never accepted with that factor unchecked.
        ctx.admitted = primary if appended is None else None
        record = await self.mfa.user_record(identity)
        station = request.calling_station_id
        trust = await self.mfa.trust.fact(identity, ctx.client.name, station, record, now)
        mfa_decision = evaluate(self.config.access_policies.mfa, replace(full, trust=trust), at)
        ctx.audit.update(mfa_decision.log_fields())
        if is_trusted_reconnect(mfa_decision):  # the password was checked above
            return self.mfa.trust.accept(self.config.replies, primary)
        factor_user = FactorUser(
            name=identity,
            login_name=login.typed,
            email=primary.email,
            mobile=primary.mobile,
            groups=primary.groups or frozenset(),
            record=record,
            login_key=login.key,
        )
        second = Login(
            ctx.request_id,
            ctx.client.name,
            ctx.source_ip,
            factor_user,
            primary,
            now,
            request.calling_station_id,
            ctx.audit,
            request_key=request_key(ctx, request),
            mode=ctx.client.second_factor,
            # unknown (a backend without group data) counts as one: the stricter outcome
            administrator=full.is_administrator is not False,
        )
        # The mfa target's policies and default only produce MfaAction values.
        action = cast(MfaAction, mfa_decision.action)
        try:
            return await self.mfa.after_primary(second, action, ctx.client.second_factor, appended)
        except UpstreamError:
            if second.responded:
                ctx.admitted = None  # a response was being judged: the failmode rejects
            raise

    async def _check_password(
        self,
        ctx: RequestContext,
        request: RadiusRequest,
        login: LoginName,
        password: str,
        now: float,
    ) -> PrimaryResult | Answer:
        """The directory's answer, unless the password guard refuses the attempt: then
        no password is checked at all (auth/password_guard.py)."""
        source = source_of(ctx.client.name, request.calling_station_id)
        checked = await self.guard.check(self.checker, login, source, password, now)
        return self._throttled(ctx, checked) if isinstance(checked, Throttled) else checked

    def _throttled(self, ctx: RequestContext, throttled: Throttled) -> Answer:
        ctx.audit.update(
            password_throttle=throttled.scope, retry_after_seconds=math.ceil(throttled.retry_after)
        )
        return self._reject("password_throttled", MSG_THROTTLED)

    async def _resume(
        self, ctx: RequestContext, request: RadiusRequest, login: LoginName, now: float
    ) -> Answer:
        assert request.state is not None
        if not is_well_formed_state(request.state):
            # Not one we issued, or one a client cut short: never matched by prefix.
            return self._reject("malformed_state")
        key = request_key(ctx, request)
        state_key = session_key(request.state)
        data = await self.services.state.get(CHALLENGES, state_key, now)
        if data is not None:
            if not self._bound(Session.from_json(data), ctx, login):
                # Read, not taken: whoever saw a State on the wire cannot void the
                # user's login by sending it from elsewhere or under another name.
                return self._reject("state_mismatch")
            # Taken: a State answers one request only (RFC 2865 section 5.24); of two
            # answers racing with it, one finds it gone.
            data = await self.services.state.take(CHALLENGES, state_key, now)
            if data is None:
                return self._reject("unknown_state")
            session = Session.from_json(data)
        else:
            # A retransmission of a request an instance that died was holding (a push
            # pending): that instance took the State; it left the session under the
            # request. Bound like any session below.
            held = await self.mfa.held_session(key, now)
            if held is None:
                return self._reject("unknown_state")
            session = held
        if not self._bound(session, ctx, login):
            return self._reject("state_mismatch")
        ctx.identity = session.user
        record = await self.mfa.user_record(session.user)
        second = login_from_session(
            session, ctx.request_id, request.calling_station_id, now, record, key
        )
        second.audit = ctx.audit
        second.mode = ctx.client.second_factor
        return await self.mfa.resume(second, session, request.password or "")

    @staticmethod
    def _bound(session: Session, ctx: RequestContext, login: LoginName) -> bool:
        """Whether the answer comes from where the challenge went: the name typed in the
        first round (any spelling of it), the NAS entry and the NAS address. A State is
        no bearer token."""
        bound = (session.login_key, session.client, session.nas)
        return bool(session.login_key) and bound == (login.key, ctx.client.name, ctx.source_ip)

    def _audit(
        self,
        ctx: RequestContext,
        request: RadiusRequest,
        answer: Answer | None,
        dropped: str,
        elapsed: float,
    ) -> None:
        """One event per request: the answer, or `outcome: drop` with why there is none."""
        outcome, reason = (
            ("drop", dropped) if answer is None else (answer.outcome.value, answer.reason)
        )
        if answer is not None:
            metrics.DECISIONS.labels(outcome=outcome, reason=reason).inc()
        audit_log.info(
            "auth_decision",
            request_id=ctx.request_id,
            client=ctx.client.name,
            nas_address=ctx.source_ip,
            nas_ip_address=request.nas_ip_address,
            nas_identifier=request.nas_identifier,
            calling_station_id=request.calling_station_id,
            # Who the user is once known (null before: a wrong password, an unknown
            # user); the User-Name as typed, always.
            user=ctx.identity,
            login_name=request.user_name,
            outcome=outcome,
            reason=reason,
            latency_ms=round(elapsed * 1000, 2),
            **ctx.audit,
        )
