"""The second-factor stage of a login as a pure, table-driven state machine.

A login that passed the primary check is planned (`plan_second_factor`: skip, use a
method, enrol one, or refuse). From then on it is in one `Stage` (what its challenge
session waits for). Each request that answers a challenge is routed by `ROUTES` to an
`Action` the shell performs (check a code, finish an enrolment, check a backup code,
ask for one, send an email code, file a reset); the factor's `FactorResult` becomes an
`Event` (`event_of`), and `TRANSITIONS` maps (stage, event) to the next `Step`: accept,
challenge again, ask again after a wrong code, or reject.

No I/O and no clock: auth/second_factor.py gathers the facts (the user's record, the
lockout, what the factor said) and executes the steps returned here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mfaproxy.config.policies import MfaAction
from mfaproxy.config.schema import SecondFactorMode
from mfaproxy.core.factor_result import FactorResult, Verdict
from mfaproxy.core.responses import IntentKind

MSG_NOT_SET_UP = (
    "Multifactor authentication is required but not set up for you. Contact your administrator."
)
MSG_NO_METHOD = "Multifactor authentication is required but no method is configured."
MSG_LOCKED = "Too many failed attempts. Try again later."
MSG_THROTTLED = "Too many failed attempts from this network device. Try again later."
MSG_UNAVAILABLE = "The second factor cannot be checked right now. Try again later."
MSG_APPEND = "A second factor is required: append it to your password, e.g. password,123456"
MSG_RESET_EMAILED = (
    "Your request to reset multifactor authentication was sent to the administrators."
)
MSG_RESET_RECORDED = (
    "Your request to reset multifactor authentication is recorded. "
    "Contact your administrator to have it approved."
)
MSG_RESET_PENDING = (
    "Your request to reset multifactor authentication is already recorded "
    "and waits for an administrator."
)
BACKUP_CODES = "backup_codes"


# --------------------------------------------------------------------------- planning


class PlanKind(enum.Enum):
    SKIP = "skip"  # no second factor: Accept after the primary check
    USE = "use"  # challenge (or check the appended code) with `method`
    ENROL = "enrol"  # the user enrols `method` inside the RADIUS flow
    ENROL_AFTER_EMAIL = "enrol_after_email"  # first a code sent to the address on file
    BACKUP = "backup"  # no usable method, but backup codes an operator issued
    REFUSE = "refuse"  # MFA is required but cannot happen: Reject with `message`


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    method: str | None = None
    reason: str = ""
    message: str | None = None


@dataclass(frozen=True)
class UserMfa:
    """What the flow needs to know about a user's second-factor set-up."""

    method: str | None
    configure_later: bool
    # Backup codes left and offered (`backup_codes` in multifactor.alternate).
    backup_codes: bool = False
    # An operator's enrolment window is open for the user (`users allow-enrolment`).
    enrol_window: bool = False


class EnrolmentGate(enum.Enum):
    """What stands between a password holder and binding a new authenticator."""

    WINDOW = "operator_window"  # an operator opened a window for this user: enrol
    EMAIL_CODE = "email_code"  # first type back a code sent to the address on file
    CLOSED = "closed"  # no inline enrolment for this login


@dataclass(frozen=True)
class EnrolmentFacts:
    window_open: bool
    has_email: bool  # an address on file (the directory's) to send a code to
    administrator: bool
    from_allowed_network: bool  # True when no networks are configured


def enrolment_gate(
    allow: Sequence[str], administrators: bool, facts: EnrolmentFacts
) -> tuple[EnrolmentGate, str]:
    """Which proof, if any, lets this login enrol inline; with the audit reason.
    Administrators are refused unless `administrators` is on, then requests from
    outside the configured networks; an operator's window beats an email code."""
    if facts.administrator and not administrators:
        return EnrolmentGate.CLOSED, "enrolment_administrator"
    if not facts.from_allowed_network:
        return EnrolmentGate.CLOSED, "enrolment_network"
    if "operator_window" in allow and facts.window_open:
        return EnrolmentGate.WINDOW, "enrolment_window"
    if "email_code" in allow and facts.has_email:
        return EnrolmentGate.EMAIL_CODE, "enrolment_email_code"
    return EnrolmentGate.CLOSED, "enrolment_closed"


def plan_second_factor(
    action: MfaAction,
    user: UserMfa,
    default: str | None,
    enabled: Sequence[str],
    is_enrolled: Callable[[str], bool],
    can_enrol_inline: Callable[[str], bool],
    enrol_unconfigured: bool,
    gate: EnrolmentGate = EnrolmentGate.CLOSED,
) -> Plan:
    """Map the MFA policy action and the user's set-up to what happens next.

    - mfa_skipped: no second factor.
    - mfa_optional_per_user: a second factor only for users who have a method (or
      whom an operator means to enrol: "configure later", an open enrolment window).
      A method the operator has since disabled still counts as one (fail closed):
      the user is asked as under mfa_required, never waved through on the password.
    - mfa_required: the user's method, else the server default. A method the operator
      has since disabled falls back to the default. A user who is not enrolled yet may
      enrol inline when an operator means them to (configure later, a window) or when
      `enrol_unconfigured` covers users without a method, the method can be enrolled
      through a text prompt, and the `gate` lets this login through (enrolment_gate:
      an operator's window, or a code sent to the address on file first). A user who
      has none of that but holds backup codes an operator issued is asked for one
      (Duo's bypass codes: a new hire whose phone has not come yet). Otherwise the
      login is refused with a message saying why.
    """
    if action == "mfa_skipped":
        return Plan(PlanKind.SKIP, reason="mfa_skipped")
    own = user.method if user.method in enabled else None
    meant = user.configure_later or user.enrol_window
    if action == "mfa_optional_per_user" and user.method is None and not meant:
        return Plan(PlanKind.SKIP, reason="mfa_optional_not_configured")
    method = own or default
    if method is not None and is_enrolled(method):
        return Plan(PlanKind.USE, method, reason="enrolled")
    candidate = method is not None and (meant or (enrol_unconfigured and own is None))
    inline = candidate and method is not None and can_enrol_inline(method)
    if inline and gate is EnrolmentGate.WINDOW:
        return Plan(PlanKind.ENROL, method, reason="inline_enrolment")
    if inline and gate is EnrolmentGate.EMAIL_CODE:
        return Plan(PlanKind.ENROL_AFTER_EMAIL, method, reason="inline_enrolment_email")
    if user.backup_codes:
        return Plan(PlanKind.BACKUP, BACKUP_CODES, reason="backup_codes_only")
    if method is None:
        return Plan(PlanKind.REFUSE, reason="no_method", message=MSG_NO_METHOD)
    if inline:
        return Plan(PlanKind.REFUSE, method, reason="enrolment_not_allowed", message=MSG_NOT_SET_UP)
    return Plan(PlanKind.REFUSE, method, reason="not_enrolled", message=MSG_NOT_SET_UP)


# --------------------------------------------------------------------------- stages


class Stage(enum.StrEnum):
    """What a challenge session waits for (stored in the session as its value)."""

    CODE = "code"  # a code, or a keyword, for the login's method
    ENROL = "enrol"  # the first code of an inline enrolment
    BACKUP = "backup"  # a backup code
    VERIFY = "verify"  # the code sent to the address on file, before an enrolment


class Action(enum.Enum):
    """What the shell does with the user's response to a challenge."""

    CHECK = "check"  # the method's factor checks it
    FINISH_ENROLMENT = "finish_enrolment"  # the factor checks the first code and enrols
    CHECK_BACKUP_CODE = "check_backup_code"  # the user store consumes a backup code
    ASK_BACKUP_CODE = "ask_backup_code"  # challenge for a backup code
    BEGIN_EMAIL = "begin_email"  # the email factor sends a code; then a CODE stage
    RESET = "reset"  # file a reset request, tell the user, reject
    VERIFY_ADDRESS = "verify_address"  # the email factor checks the code it sent


# Only a CODE prompt reads keywords; an enrolment or backup-code prompt takes the text
# as it is (a TOTP code that happens to be "reset" does not exist, a backup code might).
ROUTES: Mapping[tuple[Stage, IntentKind], Action] = {
    (Stage.CODE, IntentKind.RESPONSE): Action.CHECK,
    (Stage.CODE, IntentKind.BACKUP_CODE): Action.CHECK_BACKUP_CODE,
    (Stage.CODE, IntentKind.ASK_BACKUP): Action.ASK_BACKUP_CODE,
    (Stage.CODE, IntentKind.ASK_EMAIL): Action.BEGIN_EMAIL,
    (Stage.CODE, IntentKind.RESET): Action.RESET,
    (Stage.ENROL, IntentKind.RESPONSE): Action.FINISH_ENROLMENT,
    (Stage.BACKUP, IntentKind.RESPONSE): Action.CHECK_BACKUP_CODE,
    (Stage.VERIFY, IntentKind.RESPONSE): Action.VERIFY_ADDRESS,
}

# In append mode the response came with the password: nothing could answer a request
# for another round, so only a backup code is told apart from the method's code.
APPEND_ROUTES: Mapping[IntentKind, Action] = {IntentKind.BACKUP_CODE: Action.CHECK_BACKUP_CODE}

# Whether a NAS in this `second_factor` mode can be sent an Access-Challenge. An `auto`
# NAS cannot show one at all (Duo's radius_server_auto): the method's out-of-band check
# starts on the first request (or the code comes appended), and a factor that would
# need another round ends the login with a reject that says how to append the code.
CAN_CHALLENGE: Mapping[SecondFactorMode, bool] = {
    "challenge": True,
    "append": True,
    "auto": False,
}

# Modes whose first request carries the response with the password (`password,code`,
# `password,push`, or the password alone for the method's out-of-band check).
APPENDED_MODES: frozenset[SecondFactorMode] = frozenset({"append", "auto"})

# Methods whose check may hold the request while the user answers out of band (a Duo
# push or call, an upstream OTP server's own exchange). The session such a check answers
# is recorded under the request while it is held, so the NAS's retransmission to
# another node of a cluster continues it (auth/second_factor.py).
HELD_METHODS: frozenset[str] = frozenset({"duo", "radius"})

# The stage a check's result is judged in (and asked again in, after a wrong code).
CHECK_STAGE: Mapping[Action, Stage] = {
    Action.CHECK: Stage.CODE,
    Action.FINISH_ENROLMENT: Stage.ENROL,
    Action.CHECK_BACKUP_CODE: Stage.BACKUP,
    Action.VERIFY_ADDRESS: Stage.VERIFY,
}


def route(stage: Stage, intent: IntentKind) -> Action:
    """The action for a response read as `intent` at a `stage` prompt."""
    return ROUTES.get((stage, intent)) or ROUTES[(stage, IntentKind.RESPONSE)]


def route_appended(intent: IntentKind) -> Action:
    return APPEND_ROUTES.get(intent, Action.CHECK)


# --------------------------------------------------------------------------- results


class Event(enum.Enum):
    """What a factor's result means for the login."""

    PASSED = "passed"  # ACCEPT
    ASKED = "asked"  # CHALLENGE: the factor wants another round
    WRONG = "wrong"  # a counted failure with attempts left in this login
    EXHAUSTED = "exhausted"  # a counted failure, no retry (last attempt, first round)
    REFUSED = "refused"  # a REJECT with its own message, or not the user's fault
    UNAVAILABLE = "unavailable"  # the service behind the factor did not answer
    LOCKED = "locked"  # counting this failure locked the user out
    UNASKABLE = "unaskable"  # CHALLENGE, but the NAS cannot show one (`auto` mode)


class StepKind(enum.Enum):
    ACCEPT = "accept"
    CHALLENGE = "challenge"  # a new challenge in `Step.stage` with the factor's prompt
    RETRY = "retry"  # "Wrong code, try again." and the same prompt, one attempt spent
    REJECT = "reject"
    BEGIN_ENROLMENT = "begin_enrolment"  # the address is proven: start the enrolment


def _transitions() -> dict[tuple[Stage, Event], tuple[StepKind, bool]]:
    """(stage, event) -> (step, whether the login stays in the stage)."""
    table: dict[tuple[Stage, Event], tuple[StepKind, bool]] = {}
    for stage in Stage:
        table[(stage, Event.PASSED)] = (StepKind.ACCEPT, False)
        table[(stage, Event.ASKED)] = (StepKind.CHALLENGE, True)
        table[(stage, Event.WRONG)] = (StepKind.RETRY, True)
        ends = (Event.EXHAUSTED, Event.REFUSED, Event.UNAVAILABLE, Event.LOCKED, Event.UNASKABLE)
        for end in ends:
            table[(stage, end)] = (StepKind.REJECT, False)
    # The code sent to the address on file proves the mailbox, not the login: passing
    # it opens the enrolment; only the enrolment's own first code accepts.
    table[(Stage.VERIFY, Event.PASSED)] = (StepKind.BEGIN_ENROLMENT, False)
    return table


TRANSITIONS: Mapping[tuple[Stage, Event], tuple[StepKind, bool]] = _transitions()


@dataclass(frozen=True)
class Round:
    """Where a result was produced: the stage it is judged in, the method, and the
    attempts already spent in this login (None on a first round: nothing to retry)."""

    stage: Stage
    method: str
    attempts: int | None


@dataclass(frozen=True)
class Step:
    kind: StepKind
    reason: str  # the audit `reason` of the answer
    message: str | None = None  # Reply-Message of a reject
    stage: Stage | None = None  # where a CHALLENGE or RETRY leaves the login
    attempts: int = 0  # attempts spent, carried by the next challenge session


def event_of(
    result: FactorResult, at: Round, max_attempts: int, locked: bool, can_challenge: bool = True
) -> Event:
    """Classify a factor's result. `locked`: counting it (when it is a failure) put the
    user under lockout; `can_challenge`: the NAS can show an Access-Challenge."""
    if result.verdict is Verdict.ACCEPT:
        return Event.PASSED
    if result.verdict is Verdict.CHALLENGE:
        return Event.ASKED if can_challenge else Event.UNASKABLE
    if result.verdict is Verdict.UNAVAILABLE:
        return Event.UNAVAILABLE
    if result.is_failure and locked:
        return Event.LOCKED
    # A rejection with its own message (a Duo deny, a flood limit, an expired code)
    # ends the login with that message; a wrong code is asked again, a few times.
    if result.prompt is not None or not result.counts_as_failure:
        return Event.REFUSED
    if at.attempts is None or at.attempts + 1 >= max_attempts or not can_challenge:
        return Event.EXHAUSTED  # no retry: none left, or no way to ask again
    return Event.WRONG


def decide(
    result: FactorResult,
    at: Round,
    max_attempts: int,
    locked: bool = False,
    can_challenge: bool = True,
) -> Step:
    """The next step of the login after `result`."""
    event = event_of(result, at, max_attempts, locked, can_challenge)
    kind, stays = TRANSITIONS[(at.stage, event)]
    spent = at.attempts or 0
    stage = at.stage if stays else None
    if kind is StepKind.ACCEPT:
        return Step(kind, f"mfa_{result.reason}")
    if kind is StepKind.BEGIN_ENROLMENT:
        return Step(kind, f"{at.method}_{result.reason}", stage=Stage.ENROL)
    if kind is StepKind.CHALLENGE:
        return Step(kind, f"{at.method}_{result.reason}", stage=stage, attempts=spent)
    if kind is StepKind.RETRY:
        return Step(kind, "retry", stage=stage, attempts=spent + 1)
    if event is Event.LOCKED:
        return Step(kind, "locked_out", MSG_LOCKED)
    if event is Event.UNAVAILABLE:
        return Step(kind, f"{at.method}_unavailable", MSG_UNAVAILABLE)
    if event is Event.UNASKABLE:
        return Step(kind, f"{at.method}_challenge_unsupported", MSG_APPEND)
    return Step(kind, f"{at.method}_{result.reason}", result.prompt)


def blocked(locked: bool, throttled: bool) -> Step | None:
    """Before any code is looked at: a user under lockout, a NAS over its failure rate."""
    if locked:
        return Step(StepKind.REJECT, "locked_out", MSG_LOCKED)
    if throttled:
        return Step(StepKind.REJECT, "client_throttled", MSG_THROTTLED)
    return None
