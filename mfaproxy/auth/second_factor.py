"""The second-factor stage of a login, driven by the pure state machine of
core/second_factor.py: this module gathers its facts and performs its steps (one
handler per `Action`), each check of what the user typed as an atomic attempt
(auth/attempts.py). Around it: the login context (auth/login.py), challenge sessions
(auth/sessions.py), the enrolment gate (auth/enrolment.py), resets (auth/resets.py).

A challenge session lives in the state store under its State (RFC 2865 section 5.24),
is bound to the user, the NAS entry and the NAS address, expires, and is taken (removed)
by the first answer that names it, so a State is single use. Wrong answers re-challenge
with a fresh State until `multifactor.challenge.attempts` is spent.

While a check of a held method (a Duo push, an upstream OTP exchange) holds the request
that answered a challenge, the session it took is kept under that request (its RFC 5080
key) in the state store: if this instance dies, the NAS's retransmission reaching
another instance of the cluster finds the session there (`held_session`) and continues
the same check instead of failing with `unknown_state`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

import structlog

from mfaproxy.auth.attempts import (
    CLIENT_FAILURES,
    LEASES,
    NAS_WINDOW,
    USER_FAILURES,
    USER_WINDOW,
    Attempt,
    AttemptGate,
)
from mfaproxy.auth.enrolment import gate_for
from mfaproxy.auth.login import (
    BACKUP_CODES,
    EMAIL,
    Enrolling,
    Login,
    address_on_file,
    alternates,
)
from mfaproxy.auth.resets import ResetAsked, Resets
from mfaproxy.auth.sessions import challenge, new_session, retry_session
from mfaproxy.auth.trust import TrustedReconnects
from mfaproxy.config.policies import MfaAction
from mfaproxy.config.schema import Config, SecondFactorMode
from mfaproxy.core import replies
from mfaproxy.core import second_factor as rules
from mfaproxy.core.answer import Answer
from mfaproxy.core.factor_result import FactorResult, Verdict
from mfaproxy.core.prompts import ClientPrompts, keywords, render, render_text
from mfaproxy.core.responses import IntentKind, classify_response
from mfaproxy.core.second_factor import Action, Round, Stage, Step, StepKind
from mfaproxy.core.session import Session
from mfaproxy.factors.base import Factor, FactorServices
from mfaproxy.observability import metrics
from mfaproxy.store.records import LockState, UserRecord, lock_view

log = structlog.get_logger(__name__)

# What an attempt refused before its check cost: nothing (auth/attempts.py settle).
NOT_CHECKED = FactorResult.reject("not_checked", counts_as_failure=False)
HELD = "held_session"  # request key -> the session a held check answers
HELD_LEASE = "held_lease"  # request key -> the user lease a held check runs under

MSG_UNAVAILABLE = rules.MSG_UNAVAILABLE
UNLOCKED = LockState(0, None, False)  # a user the store has no record of
PROMPT_VERIFY = "To set up your second factor, first confirm your address. "
ENROLMENT_PLANS = (rules.PlanKind.ENROL, rules.PlanKind.ENROL_AFTER_EMAIL)
WINDOW, MAILED = "operator_window", "email_code"  # what let an inline enrolment start


# What performs one `Action`: (login, the user's response, method, session answered).
Handler = Callable[[Login, str, str, Session | None], Awaitable[Answer]]


def _round(stage: Stage, method: str, previous: Session | None) -> Round:
    return Round(stage, method, previous.attempts if previous is not None else None)


class SecondFactorStage:
    def __init__(self, config: Config, factors: Mapping[str, Factor], services: FactorServices):
        self.config = config
        self.mfa = config.multifactor
        self.factors = factors
        self.services = services
        self.gate = AttemptGate(config.multifactor, services)
        self.resets = Resets(config.multifactor, services)
        # Each NAS's wording of the prompts (config/prompts.py, core/prompts.py).
        self.prompts = ClientPrompts(config)
        # Passes that let a reconnect skip the second factor (auth/trust.py).
        self.trust = TrustedReconnects(config, services.state, services.users, services.master_key)
        # One handler per `Action` of the machine.
        self._handlers: Mapping[Action, Handler] = {
            Action.CHECK: self._check,
            Action.FINISH_ENROLMENT: self._finish_enrolment,
            Action.CHECK_BACKUP_CODE: self._check_backup_code,
            Action.ASK_BACKUP_CODE: self._ask_backup_code,
            Action.BEGIN_EMAIL: self._begin_email,
            Action.RESET: self._reset,
            Action.VERIFY_ADDRESS: self._verify_address,
        }

    # ------------------------------------------------------------------ helpers

    async def user_record(self, identity: str) -> UserRecord | None:
        return await self.services.users.get_user(identity)

    def _accept(self, login: Login, reason: str) -> Answer:
        return replies.accept(self.config.replies, login.primary, reason)

    def _reject(self, reason: str, message: str | None = None) -> Answer:
        return replies.reject(self.config.replies, reason, message)

    def _alternates(self, login: Login) -> list[str]:
        return alternates(self.mfa, login)

    async def _challenge(self, login: Login, session: Session, prompt: str, reason: str) -> Answer:
        settings = self.mfa.challenge
        return await challenge(self.services.state, settings, login, session, prompt, reason)

    def _prompt(self, login: Login, result: FactorResult, method: str, step: Step) -> str:
        """The factor's prompt in the NAS's wording; at a code prompt, with the words
        the user may type instead."""
        profile = self.prompts.profile(login.client)
        words = keywords(self._alternates(login), method, True) if step.stage is Stage.CODE else []
        if result.template is None:
            return render_text(profile, result.prompt or "Enter your code", words)
        fields = {**result.fields, **self._common_fields(method, step.attempts)}
        return render(profile, result.template, fields, words)

    def _common_fields(self, method: str, spent: int) -> dict[str, str]:
        left = max(self.mfa.challenge.attempts - spent, 0)
        return {"method": method, "attempts_left": str(left)}

    def _backup_prompt(self, login: Login, spent: int = 0) -> str:
        profile = self.prompts.profile(login.client)
        return render(profile, "backup", self._common_fields(BACKUP_CODES, spent))

    def _retry_prompt(self, login: Login, retry: Session) -> str:
        profile = self.prompts.profile(login.client)
        fields = {"prompt": retry.prompt, **self._common_fields(retry.method, retry.attempts)}
        return render(profile, "retry", fields)

    async def _blocked(self, login: Login) -> Step | None:
        """Lockout per user, throttle per NAS: checked before any code is looked at.

        The lockout is read from the user's record, which this request has just read
        (no second trip to the store): a lockout set since by another process is still
        refused by the attempt's reservation (auth/attempts.py), which decides."""
        user, now = login.user.name, login.now
        record = login.user.record
        lock = lock_view(record.failures, record.locked_until, now) if record else UNLOCKED
        day = await self.services.state.count(USER_FAILURES, user, now, USER_WINDOW)
        if lock.locked or day >= self.mfa.lockout.max_failures_per_day:
            return rules.blocked(locked=True, throttled=False)
        limit = self.mfa.lockout.client_failures_per_minute
        failures = await self.services.state.count(CLIENT_FAILURES, login.client, now, NAS_WINDOW)
        return rules.blocked(locked=False, throttled=failures >= limit)

    async def _succeeded(self, login: Login, method: str, step: Step) -> Answer:
        metrics.SECOND_FACTOR_ATTEMPTS.labels(method=method, result="accepted").inc()
        user, client, station = login.user.name, login.client, login.client_ip
        await self.trust.remember(user, client, station, step.reason, method, login.now)
        return self._accept(login, step.reason)

    async def _attempt(
        self,
        login: Login,
        at: Round,
        previous: Session | None,
        check: Callable[[], Awaitable[FactorResult]],
        admit: Callable[[], Awaitable[Answer | None]] | None = None,
    ) -> Answer:
        """Run one check of what the user typed as an atomic attempt (auth/attempts.py):
        under the user's lease, with the attempt reserved before and settled after.
        `admit`, run under the lease before the check, may refuse it (an Answer): the
        attempt is then given back."""
        held = bool(login.request_key) and at.method in rules.HELD_METHODS
        if held:
            await self._inherit_lease(login)
        # A held method's check waits on its user, and no NAS budget is reserved for it
        # (auth/attempts.py): pending pushes must not throttle a NAS's other logins.
        opened = await self.gate.open(login.user.name, login.client, login.now, nas_budget=not held)
        if isinstance(opened, Step):
            return self._reject(opened.reason, opened.message)
        if held:
            # Where a retransmission taken over by another instance finds it (above).
            record = {"user": login.user.name, "token": opened.lease}
            ttl = self.mfa.check_lease()
            await self.services.state.put(HELD_LEASE, login.request_key, record, ttl, login.now)
        try:
            refused = await admit() if admit is not None else None
            if refused is not None:
                await self.gate.settle(opened, NOT_CHECKED, login.now)
                return refused
            result = await check()
            return await self._judge(login, at, result, previous, opened)
        finally:
            await self.gate.close(opened)
            if held:
                await self.services.state.delete(HELD_LEASE, login.request_key)

    async def _inherit_lease(self, login: Login) -> None:
        """A held check (a push) keeps its user's lease while it waits. When its
        instance died, the NAS's retransmission of that same request, taken over here,
        would be refused `user_busy` until the lease expired: the lease the dead
        instance recorded under this very request is given back first. Any other
        request of the user stays refused while a check runs."""
        record = await self.services.state.take(HELD_LEASE, login.request_key, login.now)
        token = record.get("token") if record is not None else None
        if record is None or record.get("user") != login.user.name or not isinstance(token, str):
            return
        await self.services.state.release(LEASES, login.user.name, token)

    # ------------------------------------------------------------------ first round

    async def after_primary(
        self, login: Login, action: MfaAction, mode: SecondFactorMode, appended: str | None
    ) -> Answer:
        """The primary check passed and the MFA policy said `action`."""
        record = login.user.record
        gate, why = gate_for(
            self.mfa.inline_enrolment,
            record,
            login.now,
            email_on_file=EMAIL in self.factors and address_on_file(login),
            administrator=login.administrator,
            calling_station_id=login.client_ip,
            nas_address=login.nas,
        )
        plan = rules.plan_second_factor(
            action,
            rules.UserMfa(
                record.method if record else None,
                bool(record and record.configure_later),
                BACKUP_CODES in self._alternates(login),
                bool(record and record.enrolment_open(login.now)),
            ),
            self.mfa.default,
            self.mfa.enabled,
            lambda m: m in self.factors and self.factors[m].is_enrolled(login.user),
            lambda m: m in self.factors and self.factors[m].can_enrol_inline(login.user),
            self.mfa.enrol_unconfigured_users,
            gate,
        )
        login.audit.update(mfa_action=action, mfa_plan=plan.kind.value, method=plan.method)
        if plan.kind in ENROLMENT_PLANS or plan.reason == "enrolment_not_allowed":
            login.audit.update(enrolment_gate=why)
        if plan.kind is rules.PlanKind.SKIP:
            return self._accept(login, plan.reason)
        if plan.kind is rules.PlanKind.REFUSE:
            return self._reject(plan.reason, plan.message)
        blocked = await self._blocked(login)
        if blocked is not None:
            return self._reject(blocked.reason, blocked.message)
        assert plan.method is not None
        if plan.kind is rules.PlanKind.BACKUP:
            return await self._backup_codes_only(login, mode, appended)
        factor = self.factors[plan.method]
        if plan.kind is rules.PlanKind.ENROL:
            result = await factor.begin_enrolment(login.factor_request())
            at = Round(Stage.ENROL, plan.method, None)
            return await self._judge(login, at, result, enrolling=Enrolling(plan.method, WINDOW))
        if plan.kind is rules.PlanKind.ENROL_AFTER_EMAIL:
            result = await self.factors[EMAIL].begin(login.factor_request())
            at = Round(Stage.VERIFY, EMAIL, None)
            return await self._judge(login, at, result, enrolling=Enrolling(plan.method, MAILED))
        if mode in rules.APPENDED_MODES:
            return await self._append(login, factor, appended)
        result = await factor.begin(login.factor_request())
        return await self._judge(login, Round(Stage.CODE, plan.method, None), result)

    async def _append(self, login: Login, factor: Factor, appended: str | None) -> Answer:
        login.responded = True  # the request is the response (or asks for a push)
        if appended is None and not factor.keywords:
            return self._reject("code_missing", rules.MSG_APPEND)
        response = appended or ""
        intent = classify_response(response, factor.name, self._alternates(login), False)
        handler = self._handlers[rules.route_appended(intent)]
        return await handler(login, response, factor.name, None)

    async def _backup_codes_only(
        self, login: Login, mode: SecondFactorMode, appended: str | None
    ) -> Answer:
        """No usable method, backup codes issued: they are the second factor."""
        if mode not in rules.APPENDED_MODES:
            return await self._ask_backup_code(login, "", BACKUP_CODES, None)
        if appended is None:
            return self._reject("code_missing", rules.MSG_APPEND)
        login.responded = True
        return await self._check_backup_code(login, appended, BACKUP_CODES, None)

    # ------------------------------------------------------------------ later rounds

    async def resume(self, login: Login, session: Session, response: str) -> Answer:
        """A response to one of our challenges (the session is already taken)."""
        login.responded = True
        blocked = await self._blocked(login)
        if blocked is not None:
            return self._reject(blocked.reason, blocked.message)
        login.audit.update(method=session.method, stage=session.stage.value)
        intent = IntentKind.RESPONSE
        if session.stage is Stage.CODE:
            intent = classify_response(response, session.method, self._alternates(login), True)
        handler = self._handlers[rules.route(session.stage, intent)]
        return await handler(login, response, session.method, session)

    async def _check(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        factor = self.factors.get(method)
        if factor is None:  # the method was disabled by a reload since the challenge
            return self._reject("method_disabled")
        pending = previous.pending if previous is not None else {}
        at = _round(Stage.CODE, method, previous)
        held = previous is not None and bool(login.request_key) and method in rules.HELD_METHODS
        if held:
            assert previous is not None
            await self._hold(login, previous)
        answer = await self._attempt(
            login, at, previous, lambda: factor.check(login.factor_request(), response, pending)
        )
        if held:
            # Not on cancellation (a stopping instance): the record lets the NAS's
            # retransmission to another instance continue this check.
            await self.services.state.delete(HELD, login.request_key)
        return answer

    async def _hold(self, login: Login, session: Session) -> None:
        ttl = self.mfa.challenge.timeout_seconds + self._longest_hold()
        await self.services.state.put(HELD, login.request_key, session.to_json(), ttl, login.now)

    def _longest_hold(self) -> float:
        """Seconds a held check may take: a Duo push, an upstream OTP exchange."""
        duo, otp = self.mfa.duo, self.mfa.radius
        waits = [duo.timeout if duo else 0.0]
        if otp is not None:
            waits.append(otp.timeout * (otp.retries + 1) * (2 if otp.failover else 1))
        return max(waits)

    async def held_session(self, request_key: str, now: float) -> Session | None:
        """The session a held check of this very request answers, recorded by an
        instance that no longer answers (taken: one instance continues it)."""
        if not request_key:
            return None
        data = await self.services.state.take(HELD, request_key, now)
        if data is None:
            return None
        metrics.DUPLICATES.labels(action="held_session_continued").inc()
        return Session.from_json(data)

    async def _finish_enrolment(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        factor = self.factors.get(method)
        if factor is None:
            return self._reject("method_disabled")
        user, now = login.user.name, login.now
        by_mail = previous is not None and previous.enrol_proof == MAILED

        async def window_closed(fresh: bool) -> Answer | None:
            record = login.user.record
            if fresh:
                # Read under the lease, past the record cache: an enrolment that used
                # the window up closed it before it gave the lease back, so of two
                # enrolments racing in one window the second sees it closed and cannot
                # replace the first one's key.
                record = await self.services.users.run(lambda s: s.get_user(user))
            if by_mail or (record is not None and record.enrolment_open(now)):
                return None
            # the operator closed the window (or it ran out) since the key was shown
            return self._reject("enrolment_window_closed", rules.MSG_NOT_SET_UP)

        closed = await window_closed(fresh=False)
        if closed is not None:
            return closed
        pending = previous.pending if previous is not None else {}
        at = _round(Stage.ENROL, method, previous)
        return await self._attempt(
            login,
            at,
            previous,
            lambda: factor.finish_enrolment(login.factor_request(), response, pending),
            admit=None if by_mail else lambda: window_closed(fresh=True),
        )

    async def _check_backup_code(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        user, now = login.user.name, login.now

        async def consume() -> FactorResult:
            used = await self.services.users.run(
                lambda s: s.consume_backup_code(user, response, now)
            )
            return (
                FactorResult.accept("backup_code_ok") if used else FactorResult.reject("bad_code")
            )

        at = _round(Stage.BACKUP, BACKUP_CODES, previous)
        return await self._attempt(login, at, previous, consume)

    async def _verify_address(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        """The code sent to the address on file, before an inline enrolment."""
        email = self.factors.get(EMAIL)
        if email is None:
            return self._reject("method_disabled")
        pending = previous.pending if previous is not None else {}
        at = _round(Stage.VERIFY, EMAIL, previous)
        return await self._attempt(
            login, at, previous, lambda: email.check(login.factor_request(), response, pending)
        )

    async def _ask_backup_code(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        prompt = self._backup_prompt(login)
        backup = new_session(login, Stage.BACKUP, BACKUP_CODES, {}, prompt)
        return await self._challenge(login, backup, prompt, "backup_prompt")

    async def _begin_email(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        result = await self.factors["email"].begin(login.factor_request())
        return await self._judge(login, Round(Stage.CODE, "email", None), result)

    # ------------------------------------------------------------------ steps

    async def _judge(
        self,
        login: Login,
        at: Round,
        result: FactorResult,
        previous: Session | None = None,
        attempt: Attempt | None = None,
        enrolling: Enrolling | None = None,
    ) -> Answer:
        """Settle what `result` costs, ask the machine for the next step, perform it.
        `previous` is the session being answered (None on a first round); `attempt` the
        reservation the result was checked under (None for a factor's `begin`);
        `enrolling` what an inline enrolment binds and what let it."""
        login.audit.update(method=at.method, mfa_result=result.reason)
        if result.verdict not in (Verdict.ACCEPT, Verdict.CHALLENGE):
            login.responded = True  # a no (or an outage) is never undone by a failmode
            metrics.SECOND_FACTOR_ATTEMPTS.labels(method=at.method, result=result.reason).inc()
        if result.verdict is Verdict.UNAVAILABLE:
            log.warning("factor_unavailable", method=at.method, reason=result.reason)
        locked = await self._settle(login, result, attempt)
        can_challenge = rules.CAN_CHALLENGE[login.mode]
        step = rules.decide(result, at, self.mfa.challenge.attempts, locked, can_challenge)
        if step.kind is StepKind.ACCEPT:
            if at.stage is Stage.ENROL:  # the operator's window is used up
                await self.services.users.run(
                    lambda s: s.close_enrolment(login.user.name, login.now)
                )
            return await self._succeeded(login, at.method, step)
        if step.kind is StepKind.BEGIN_ENROLMENT:
            return await self._begin_enrolment(login, previous)
        if step.kind is StepKind.CHALLENGE:
            assert step.stage is not None
            prompt = self._prompt(login, result, at.method, step)
            if step.stage is Stage.VERIFY:
                prompt = self.prompts.cut(login.client, PROMPT_VERIFY + prompt) or prompt
            session = new_session(login, step.stage, at.method, result.pending, prompt)
            session = replace(session, attempts=step.attempts)
            if enrolling is not None:
                session = replace(
                    session, enrol_method=enrolling.method, enrol_proof=enrolling.proof
                )
            return await self._challenge(login, session, prompt, step.reason)
        if step.kind is StepKind.RETRY:
            retry = retry_session(login, step, at, previous, self._backup_prompt(login))
            prompt = self._retry_prompt(login, retry)
            return await self._challenge(login, retry, prompt, step.reason)
        return self._reject(step.reason, step.message)

    async def _begin_enrolment(self, login: Login, previous: Session | None) -> Answer:
        """The address on file is proven: show the enrolment of the method it was for."""
        method = previous.enrol_method if previous is not None else None
        factor = self.factors.get(method) if method is not None else None
        if method is None or factor is None:
            return self._reject("method_disabled")
        result = await factor.begin_enrolment(login.factor_request())
        at = Round(Stage.ENROL, method, None)
        return await self._judge(login, at, result, enrolling=Enrolling(method, MAILED))

    async def _settle(self, login: Login, result: FactorResult, attempt: Attempt | None) -> bool:
        """Count or give back what `result` cost; True when a failure locked the user."""
        if attempt is not None:
            await self.gate.settle(attempt, result, login.now)
            return result.is_failure and attempt.reservation.last
        user = login.user.name
        if result.verdict is Verdict.ACCEPT:
            await self.services.users.run(lambda s: s.reset_failures(user))
        if not result.is_failure:
            return False
        return await self.gate.count_failure(user, login.client, login.now)

    # ------------------------------------------------------------------ alternates

    async def _reset(
        self, login: Login, response: str, method: str, previous: Session | None
    ) -> Answer:
        """File a reset request and say truthfully what became of it."""
        user = login.user
        asked = ResetAsked(
            user.name, user.login_name, login.client, login.nas, login.request_id, login.now
        )
        outcome, message = await self.resets.request(asked)
        login.audit.update(mfa_result=outcome)
        return self._reject("reset_requested", message)
