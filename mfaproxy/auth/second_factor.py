"""The second-factor stage of a login: challenge sessions, factors, backup codes,
resets, lockout. The decisions come from core/second_factor.py; this module does the I/O.

A challenge session lives in the state store under its State (RFC 2865 section 5.24),
is bound to the user, the NAS entry and the NAS address, expires, and is taken (removed)
by the first answer that names it, so a State is single use. Wrong answers re-challenge
with a fresh State until `multifactor.challenge.attempts` is spent.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from mfaproxy.config.policies import MfaAction
from mfaproxy.config.schema import Config, SecondFactorMode
from mfaproxy.core import replies
from mfaproxy.core import second_factor as rules
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.primary import PrimaryResult
from mfaproxy.core.session import Session, Stage, primary_from_json, primary_to_json
from mfaproxy.errors import UpstreamError
from mfaproxy.factors.base import (
    Factor,
    FactorRequest,
    FactorResult,
    FactorServices,
    FactorUser,
    Verdict,
)
from mfaproxy.observability import metrics
from mfaproxy.radius.text import reply_message
from mfaproxy.store.records import UserRecord, normalise_user

log = structlog.get_logger(__name__)

CHALLENGES = "challenge"
CLIENT_FAILURES = "client_failures"
STATE_BYTES = 24  # 192 bits, random (RFC 5080 section 2.1.1 asks for unpredictable State)

MSG_LOCKED = "Too many failed attempts. Try again later."
MSG_THROTTLED = "Too many failed attempts from this network device. Try again later."
MSG_RESET = "Your request to reset multifactor authentication was sent to the administrators."
MSG_UNAVAILABLE = "The second factor cannot be checked right now. Try again later."
MSG_APPEND = "A second factor is required: append it to your password, e.g. password,123456"
PROMPT_BACKUP = "Enter one of your backup codes"


@dataclass
class Login:
    """One request's second-factor context, as the flow fills it in."""

    request_id: str
    client: str
    nas: str
    user: FactorUser
    primary: PrimaryResult
    now: float
    client_ip: str | None
    audit: dict[str, Any] = field(default_factory=dict)

    def factor_request(self) -> FactorRequest:
        return FactorRequest(self.user, self.client, self.client_ip, self.now)


class SecondFactorStage:
    def __init__(self, config: Config, factors: Mapping[str, Factor], services: FactorServices):
        self.config = config
        self.mfa = config.multifactor
        self.factors = factors
        self.services = services

    # ------------------------------------------------------------------ helpers

    async def user_record(self, login_name: str) -> UserRecord | None:
        name = normalise_user(login_name)
        return await self.services.users.run(lambda s: s.get_user(name))

    def _accept(self, login: Login, reason: str) -> Answer:
        return replies.accept(self.config.replies, login.primary, reason)

    def _reject(self, reason: str, message: str | None = None) -> Answer:
        return replies.reject(self.config.replies, reason, message)

    async def _challenge(self, login: Login, session: Session, prompt: str, reason: str) -> Answer:
        state = secrets.token_bytes(STATE_BYTES)
        ttl = self.mfa.challenge.timeout_seconds
        await self.services.state.put(CHALLENGES, state.hex(), session.to_json(), ttl, login.now)
        return Answer(Outcome.CHALLENGE, reason, reply_message=reply_message(prompt), state=state)

    def _session(
        self, login: Login, stage: Stage, method: str, pending: Mapping[str, Any], prompt: str
    ) -> Session:
        return Session(
            user=login.user.name,
            login_name=login.user.login_name,
            client=login.client,
            nas=login.nas,
            stage=stage,
            method=method,
            pending=dict(pending),
            attempts=0,
            primary=primary_to_json(login.primary),
            email=login.user.email,
            mobile=login.user.mobile,
            prompt=prompt,
        )

    def _alternates(self, login: Login) -> list[str]:
        """The alternate ways this user can actually use: email only with an address on
        file, backup codes only while some are left (the prompt lists no dead ends)."""
        record = login.user.record
        usable: list[str] = []
        for way in self.mfa.alternate:
            if way == "email" and (login.user.email or (record and "email" in record.enrolled)):
                usable.append(way)
            if way == "backup_codes" and record is not None and record.backup_codes_remaining > 0:
                usable.append(way)
        return usable

    def _prompt(self, login: Login, prompt: str | None, method: str) -> str:
        return rules.with_options(
            prompt or "Enter your code", self._alternates(login), method, True
        )

    async def _blocked(self, login: Login) -> Answer | None:
        """Lockout per user, throttle per NAS: checked before any code is looked at."""
        user, now = login.user.name, login.now
        lock = await self.services.users.run(lambda s: s.lock_state(user, now))
        if lock.locked:
            return self._reject("locked_out", MSG_LOCKED)
        limit = self.mfa.lockout.client_failures_per_minute
        if await self.services.state.count(CLIENT_FAILURES, login.client, now, 60) >= limit:
            return self._reject("client_throttled", MSG_THROTTLED)
        return None

    async def _count_failure(self, login: Login) -> bool:
        """Count one second-factor failure; True when the user is now locked out."""
        user, now, lockout = login.user.name, login.now, self.mfa.lockout
        limit = lockout.client_failures_per_minute
        await self.services.state.rate_limit(
            CLIENT_FAILURES, login.client, now, max_events=limit + 1, window=60
        )
        state = await self.services.users.run(
            lambda s: s.record_failure(user, now, lockout.max_failures, lockout.lockout_seconds)
        )
        return state.locked

    async def _succeeded(self, login: Login, method: str, reason: str) -> Answer:
        user = login.user.name
        await self.services.users.run(lambda s: s.reset_failures(user))
        metrics.SECOND_FACTOR_ATTEMPTS.labels(method=method, result="accepted").inc()
        login.audit.update(method=method, mfa_result=reason)
        return self._accept(login, f"mfa_{reason}")

    # ------------------------------------------------------------------ first round

    async def after_primary(
        self, login: Login, action: MfaAction, mode: SecondFactorMode, appended: str | None
    ) -> Answer:
        """The primary check passed and the MFA policy said `action`."""
        record = login.user.record
        plan = rules.plan_second_factor(
            action,
            rules.UserMfa(
                record.method if record else None, bool(record and record.configure_later)
            ),
            self.mfa.default,
            self.mfa.enabled,
            lambda m: m in self.factors and self.factors[m].is_enrolled(login.user),
            lambda m: m in self.factors and self.factors[m].can_enrol_inline(login.user),
            self.mfa.enrol_unconfigured_users,
        )
        login.audit.update(mfa_action=action, mfa_plan=plan.kind.value, method=plan.method)
        if plan.kind is rules.PlanKind.SKIP:
            return self._accept(login, plan.reason)
        if plan.kind is rules.PlanKind.REFUSE:
            return self._reject(plan.reason, plan.message)
        blocked = await self._blocked(login)
        if blocked is not None:
            return blocked
        assert plan.method is not None
        factor = self.factors[plan.method]
        if plan.kind is rules.PlanKind.ENROL:
            result = await factor.begin_enrolment(login.factor_request())
            return await self._after_result(login, plan.method, "enrol", result)
        if mode == "append":
            return await self._append(login, factor, appended)
        result = await factor.begin(login.factor_request())
        return await self._after_result(login, plan.method, "code", result)

    async def _append(self, login: Login, factor: Factor, appended: str | None) -> Answer:
        if appended is None and not factor.keywords:
            return self._reject("code_missing", MSG_APPEND)
        answer = appended or ""
        intent = rules.classify_answer(answer, factor.name, self._alternates(login), False)
        if intent.kind is rules.IntentKind.BACKUP_CODE:
            return await self._backup_code(login, answer, None)
        result = await factor.check(login.factor_request(), answer, {})
        return await self._after_result(login, factor.name, "code", result)

    # ------------------------------------------------------------------ later rounds

    async def resume(self, login: Login, session: Session, answer: str) -> Answer:
        """An answer to one of our challenges (the session is already taken)."""
        blocked = await self._blocked(login)
        if blocked is not None:
            return blocked
        login.audit.update(method=session.method, stage=session.stage)
        if session.stage == "enrol":
            factor = self.factors[session.method]
            result = await factor.finish_enrolment(login.factor_request(), answer, session.pending)
            return await self._after_result(login, session.method, "enrol", result, session)
        if session.stage == "backup":
            return await self._backup_code(login, answer, session)
        intent = rules.classify_answer(answer, session.method, self._alternates(login), True)
        if intent.kind is rules.IntentKind.RESET:
            return await self._reset(login)
        if intent.kind is rules.IntentKind.BACKUP_CODE:
            return await self._backup_code(login, answer, session)
        if intent.kind is rules.IntentKind.SWITCH and intent.method == "backup_codes":
            backup = self._session(login, "backup", "backup_codes", {}, PROMPT_BACKUP)
            return await self._challenge(login, backup, PROMPT_BACKUP, "backup_prompt")
        if intent.kind is rules.IntentKind.SWITCH and intent.method == "email":
            result = await self.factors["email"].begin(login.factor_request())
            return await self._after_result(login, "email", "code", result)
        current = self.factors.get(session.method)
        if current is None:  # the method was disabled by a reload since the challenge
            return self._reject("method_disabled")
        result = await current.check(login.factor_request(), answer, session.pending)
        return await self._after_result(login, session.method, "code", result, session)

    async def _after_result(
        self,
        login: Login,
        method: str,
        stage: Stage,
        result: FactorResult,
        previous: Session | None = None,
    ) -> Answer:
        """Turn a factor's verdict into the reply. `previous` is the session being
        answered (None on a first round, where a failure cannot be retried)."""
        login.audit.update(mfa_result=result.reason)
        if result.verdict is Verdict.ACCEPT:
            return await self._succeeded(login, method, result.reason)
        if result.verdict is Verdict.CHALLENGE:
            prompt = (
                self._prompt(login, result.prompt, method)
                if stage == "code"
                else result.prompt or ""
            )
            session = self._session(login, stage, method, result.pending, prompt)
            if previous is not None:
                session = replace(session, attempts=previous.attempts)
            return await self._challenge(login, session, prompt, f"{method}_{result.reason}")
        metrics.SECOND_FACTOR_ATTEMPTS.labels(method=method, result=result.reason).inc()
        if result.verdict is Verdict.UNAVAILABLE:
            log.warning("factor_unavailable", method=method, reason=result.reason)
            return self._reject(f"{method}_unavailable", MSG_UNAVAILABLE)
        if result.counts_as_failure and await self._count_failure(login):
            return self._reject("locked_out", MSG_LOCKED)
        # A rejection with its own message (a Duo deny, a flood limit, an expired code)
        # ends the login with that message; a wrong code is asked again, a few times.
        if (
            previous is None
            or result.prompt is not None
            or not result.counts_as_failure
            or previous.attempts + 1 >= self.mfa.challenge.attempts
        ):
            return self._reject(f"{method}_{result.reason}", result.prompt)
        retry = replace(previous, attempts=previous.attempts + 1)
        return await self._challenge(login, retry, rules.retry_prompt(previous.prompt), "retry")

    # ------------------------------------------------------------------ alternates

    async def _backup_code(self, login: Login, answer: str, previous: Session | None) -> Answer:
        user, now = login.user.name, login.now
        used = await self.services.users.run(lambda s: s.consume_backup_code(user, answer, now))
        if used:
            return await self._succeeded(login, "backup_codes", "backup_code_ok")
        metrics.SECOND_FACTOR_ATTEMPTS.labels(method="backup_codes", result="bad_code").inc()
        login.audit.update(method="backup_codes", mfa_result="bad_code")
        if await self._count_failure(login):
            return self._reject("locked_out", MSG_LOCKED)
        attempts = previous.attempts if previous is not None else 0
        if previous is None or attempts + 1 >= self.mfa.challenge.attempts:
            return self._reject("backup_codes_bad_code")
        retry = replace(
            self._session(login, "backup", "backup_codes", {}, PROMPT_BACKUP), attempts=attempts + 1
        )
        return await self._challenge(login, retry, rules.retry_prompt(PROMPT_BACKUP), "retry")

    async def _reset(self, login: Login) -> Answer:
        user, now = login.user.name, login.now
        created = await self.services.users.run(lambda s: s.request_reset(user, "radius", now))
        login.audit.update(mfa_result="reset_requested")
        if created:
            await self._send_reset_email(login)
        return self._reject("reset_requested", MSG_RESET)

    def reset_recipients(self) -> list[str]:
        if self.mfa.send_reset_email_to == "specific_email":
            return [self.mfa.specific_email] if self.mfa.specific_email else []
        return list(self.mfa.administrators.emails)

    async def _send_reset_email(self, login: Login) -> None:
        recipients = self.reset_recipients()
        if self.services.mail is None or not recipients:
            log.warning(
                "reset_email_not_sent", user=login.user.name, reason="no smtp or recipients"
            )
            return
        body = (
            f"User {login.user.login_name} asked for a reset of their multifactor "
            f"authentication from network device {login.client} ({login.nas}).\n\n"
            f"Approve it (this clears the user's second factor; they enrol again):\n"
            f"    mfaproxy users resets approve {login.user.name}\n"
            f"Or dismiss it:\n    mfaproxy users resets clear {login.user.name}\n\n"
            f"Request id: {login.request_id}\n"
        )
        try:
            await self.services.mail.send(
                recipients, f"MFA reset requested by {login.user.name}", body
            )
        except UpstreamError:
            log.error("reset_email_failed", user=login.user.name)


def login_from_session(
    session: Session, request_id: str, client_ip: str | None, now: float, record: UserRecord | None
) -> Login:
    primary = primary_from_json(session.primary)
    user = FactorUser(
        name=session.user,
        login_name=session.login_name,
        email=session.email,
        mobile=session.mobile,
        groups=primary.groups,
        record=record,
    )
    return Login(request_id, session.client, session.nas, user, primary, now, client_ip)
