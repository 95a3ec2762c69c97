"""The pure second-factor decisions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.config.policies import MfaAction
from mfaproxy.core import second_factor as rules
from mfaproxy.core.factor_result import FactorResult, Verdict
from mfaproxy.core.responses import IntentKind
from mfaproxy.core.second_factor import (
    MSG_LOCKED,
    MSG_UNAVAILABLE,
    ROUTES,
    TRANSITIONS,
    Action,
    EnrolmentFacts,
    EnrolmentGate,
    Event,
    PlanKind,
    Round,
    Stage,
    StepKind,
    UserMfa,
    blocked,
    decide,
    enrolment_gate,
    route,
    route_appended,
)

ENABLED = ["totp", "email"]


def plan(
    action: MfaAction,
    method: str | None = None,
    configure_later: bool = False,
    backup_codes: bool = False,
    enrolled: tuple[str, ...] = (),
    inline: tuple[str, ...] = ("totp",),
    default: str | None = "totp",
    enrol_unconfigured: bool = False,
    gate: EnrolmentGate = EnrolmentGate.CLOSED,
    window: bool = False,
) -> rules.Plan:
    return rules.plan_second_factor(
        action,
        UserMfa(method, configure_later, backup_codes, window),
        default,
        ENABLED,
        lambda m: m in enrolled,
        lambda m: m in inline,
        enrol_unconfigured,
        gate,
    )


WINDOW, EMAIL_CODE = EnrolmentGate.WINDOW, EnrolmentGate.EMAIL_CODE


def test_skipped_needs_nothing() -> None:
    assert plan("mfa_skipped", "totp", enrolled=("totp",)).kind is PlanKind.SKIP


def test_optional_per_user_skips_users_without_a_method() -> None:
    assert plan("mfa_optional_per_user").kind is PlanKind.SKIP
    used = plan("mfa_optional_per_user", "totp", enrolled=("totp",))
    assert (used.kind, used.method) == (PlanKind.USE, "totp")


def test_optional_per_user_asks_a_user_whose_method_was_disabled() -> None:
    # a method taken out of `enabled` is still a method: the default is asked for,
    # the user is never waved through on the password alone
    used = plan("mfa_optional_per_user", "duo", enrolled=("totp",))
    assert (used.kind, used.method) == (PlanKind.USE, "totp")
    assert plan("mfa_optional_per_user", "duo").kind is PlanKind.REFUSE


def test_optional_per_user_with_configure_later_enrols_through_the_gate() -> None:
    result = plan("mfa_optional_per_user", None, configure_later=True, gate=WINDOW)
    assert (result.kind, result.method) == (PlanKind.ENROL, "totp")
    # an open window alone means the operator wants the user enrolled
    opened = plan("mfa_optional_per_user", None, window=True, gate=WINDOW)
    assert opened.kind is PlanKind.ENROL
    # marked, but the gate is closed: refused, never skipped into a password-only login
    closed = plan("mfa_optional_per_user", None, configure_later=True)
    assert (closed.kind, closed.reason) == (PlanKind.REFUSE, "enrolment_not_allowed")


def test_required_uses_the_users_method_over_the_default() -> None:
    result = plan("mfa_required", "email", enrolled=("email", "totp"))
    assert result.method == "email"


def test_required_falls_back_to_the_default_for_a_disabled_method() -> None:
    result = plan("mfa_required", "duo", enrolled=("totp",))
    assert (result.kind, result.method) == (PlanKind.USE, "totp")


def test_required_without_enrolment_is_refused_unless_allowed() -> None:
    refused = plan("mfa_required")
    assert refused.kind is PlanKind.REFUSE and refused.message
    # enrol_unconfigured_users alone no longer lets a password holder enrol
    alone = plan("mfa_required", enrol_unconfigured=True)
    assert (alone.kind, alone.reason) == (PlanKind.REFUSE, "enrolment_not_allowed")
    assert plan("mfa_required", configure_later=True).kind is PlanKind.REFUSE
    assert plan("mfa_required", enrol_unconfigured=True, gate=WINDOW).kind is PlanKind.ENROL
    assert plan("mfa_required", configure_later=True, gate=WINDOW).kind is PlanKind.ENROL
    by_mail = plan("mfa_required", enrol_unconfigured=True, gate=EMAIL_CODE)
    assert (by_mail.kind, by_mail.method) == (PlanKind.ENROL_AFTER_EMAIL, "totp")


def test_a_gate_alone_enrols_nobody_the_operator_did_not_mean() -> None:
    # not configure later, no window, enrol_unconfigured off: the gate is not enough
    for gate in EnrolmentGate:
        assert plan("mfa_required", gate=gate).kind is PlanKind.REFUSE


def test_enrolment_gate_order() -> None:
    def gate(
        allow: tuple[str, ...] = ("operator_window", "email_code"),
        admins: bool = False,
        window: bool = False,
        email: bool = False,
        admin: bool = False,
        network: bool = True,
    ) -> tuple[EnrolmentGate, str]:
        facts = EnrolmentFacts(window, email, admin, network)
        return enrolment_gate(allow, admins, facts)

    assert gate(window=True) == (WINDOW, "enrolment_window")
    assert gate(email=True) == (EMAIL_CODE, "enrolment_email_code")
    assert gate(window=True, email=True) == (WINDOW, "enrolment_window")
    assert gate() == (EnrolmentGate.CLOSED, "enrolment_closed")
    assert gate(allow=("operator_window",), email=True)[0] is EnrolmentGate.CLOSED
    assert gate(allow=(), window=True)[0] is EnrolmentGate.CLOSED
    assert gate(window=True, admin=True) == (EnrolmentGate.CLOSED, "enrolment_administrator")
    assert gate(window=True, admin=True, admins=True)[0] is WINDOW
    assert gate(window=True, network=False) == (EnrolmentGate.CLOSED, "enrolment_network")


def test_required_with_a_method_that_cannot_enrol_inline_is_refused() -> None:
    result = plan("mfa_required", configure_later=True, inline=())
    assert result.kind is PlanKind.REFUSE


def test_required_with_no_default_and_no_method_is_refused() -> None:
    result = plan("mfa_required", default=None)
    assert (result.kind, result.reason) == (PlanKind.REFUSE, "no_method")


def test_an_assigned_but_unenrolled_method_is_not_enrolled_silently() -> None:
    # an operator set the method; only "configure later" lets the user enrol it
    assert plan("mfa_required", "totp", enrol_unconfigured=True).kind is PlanKind.REFUSE


def test_required_without_a_method_but_with_backup_codes_asks_for_one() -> None:
    result = plan("mfa_required", backup_codes=True)
    assert (result.kind, result.method) == (PlanKind.BACKUP, "backup_codes")
    assert plan("mfa_required", default=None, backup_codes=True).kind is PlanKind.BACKUP
    # an assigned method that is not enrolled yet: the codes are the way in
    assert plan("mfa_required", "totp", backup_codes=True).kind is PlanKind.BACKUP


def test_backup_codes_do_not_shadow_a_method_or_an_enrolment() -> None:
    assert plan("mfa_required", "totp", enrolled=("totp",), backup_codes=True).kind is (
        PlanKind.USE
    )
    assert plan("mfa_required", configure_later=True, backup_codes=True).kind is PlanKind.BACKUP
    enrol = plan("mfa_required", configure_later=True, backup_codes=True, gate=WINDOW)
    assert enrol.kind is PlanKind.ENROL
    # optional per user: no method means no second factor, codes or not
    assert plan("mfa_optional_per_user", backup_codes=True).kind is PlanKind.SKIP


# --------------------------------------------------------------------------- the machine

CODE, ENROL, BACKUP = Stage.CODE, Stage.ENROL, Stage.BACKUP
WRONG = FactorResult.reject("bad_code")


def test_every_stage_has_a_transition_for_every_event() -> None:
    assert set(TRANSITIONS) == {(stage, event) for stage in Stage for event in Event}


def test_every_stage_routes_a_plain_response_and_only_code_prompts_read_keywords() -> None:
    for stage in Stage:
        assert (stage, IntentKind.RESPONSE) in ROUTES
    assert route(ENROL, IntentKind.RESET) is Action.FINISH_ENROLMENT
    assert route(BACKUP, IntentKind.ASK_EMAIL) is Action.CHECK_BACKUP_CODE
    assert route(CODE, IntentKind.RESET) is Action.RESET
    assert route(CODE, IntentKind.BACKUP_CODE) is Action.CHECK_BACKUP_CODE
    assert route(Stage.VERIFY, IntentKind.RESET) is Action.VERIFY_ADDRESS


def test_proving_the_address_opens_the_enrolment_and_never_accepts() -> None:
    step = decide(FactorResult.accept("code_ok"), Round(Stage.VERIFY, "email", 0), 3)
    assert (step.kind, step.stage, step.reason) == (
        StepKind.BEGIN_ENROLMENT,
        ENROL,
        "email_code_ok",
    )
    wrong = decide(WRONG, Round(Stage.VERIFY, "email", 0), 3)
    assert (wrong.kind, wrong.stage) == (StepKind.RETRY, Stage.VERIFY)


def test_append_mode_routes_only_backup_codes_apart() -> None:
    assert route_appended(IntentKind.BACKUP_CODE) is Action.CHECK_BACKUP_CODE
    for intent in (IntentKind.RESPONSE, IntentKind.ASK_BACKUP, IntentKind.RESET):
        assert route_appended(intent) is Action.CHECK


def test_accept_ends_in_accept() -> None:
    step = decide(FactorResult.accept("code_ok"), Round(CODE, "totp", 1), 3)
    assert (step.kind, step.reason) == (StepKind.ACCEPT, "mfa_code_ok")


def test_a_challenge_stays_in_the_stage_and_carries_the_attempts() -> None:
    step = decide(FactorResult.challenge("Enter"), Round(ENROL, "totp", 2), 3)
    assert (step.kind, step.stage, step.attempts) == (StepKind.CHALLENGE, ENROL, 2)
    assert step.reason == "totp_challenge"


def test_a_wrong_code_is_asked_again_until_the_attempts_are_spent() -> None:
    first = decide(WRONG, Round(CODE, "totp", 0), 3)
    assert (first.kind, first.stage, first.attempts) == (StepKind.RETRY, CODE, 1)
    second = decide(WRONG, Round(CODE, "totp", 1), 3)
    assert second.kind is StepKind.RETRY and second.attempts == 2
    last = decide(WRONG, Round(CODE, "totp", 2), 3)
    assert (last.kind, last.reason, last.message) == (StepKind.REJECT, "totp_bad_code", None)


def test_a_first_round_failure_cannot_be_retried() -> None:
    step = decide(WRONG, Round(CODE, "totp", None), 3)
    assert (step.kind, step.reason) == (StepKind.REJECT, "totp_bad_code")


def test_a_failure_that_locks_rejects_with_the_lockout_message() -> None:
    step = decide(WRONG, Round(BACKUP, "backup_codes", 0), 3, locked=True)
    assert (step.kind, step.reason, step.message) == (StepKind.REJECT, "locked_out", MSG_LOCKED)


def test_a_reject_with_its_own_message_or_not_counted_ends_the_login() -> None:
    denied = FactorResult(Verdict.REJECT, "push_denied", prompt="Denied by Duo")
    step = decide(denied, Round(CODE, "duo", 0), 3)
    assert (step.kind, step.message) == (StepKind.REJECT, "Denied by Duo")
    expired = FactorResult.reject("expired", counts_as_failure=False)
    # not counted, so never a lockout even when the caller says the user is locked
    assert decide(expired, Round(CODE, "email", 0), 3, locked=True).reason == "email_expired"


def test_an_unavailable_factor_rejects_with_the_outage_message() -> None:
    step = decide(FactorResult.unavailable(), Round(CODE, "duo", 0), 3)
    assert (step.kind, step.reason, step.message) == (
        StepKind.REJECT,
        "duo_unavailable",
        MSG_UNAVAILABLE,
    )


def test_blocked_before_any_check() -> None:
    assert blocked(False, False) is None
    locked = blocked(True, True)
    assert locked is not None and locked.reason == "locked_out"
    throttled = blocked(False, True)
    assert throttled is not None and throttled.reason == "client_throttled"


results = st.builds(
    FactorResult,
    verdict=st.sampled_from(Verdict),
    reason=st.sampled_from(["code_ok", "bad_code", "expired", "denied"]),
    prompt=st.none() | st.just("message"),
    counts_as_failure=st.booleans(),
)


@given(
    result=results,
    stage=st.sampled_from(Stage),
    attempts=st.none() | st.integers(0, 9),
    max_attempts=st.integers(1, 10),
    locked=st.booleans(),
)
def test_the_machine_never_accepts_a_non_accept_nor_retries_past_the_budget(
    result: FactorResult, stage: Stage, attempts: int | None, max_attempts: int, locked: bool
) -> None:
    step = decide(result, Round(stage, "totp", attempts), max_attempts, locked)
    if step.kind is StepKind.ACCEPT:
        assert result.verdict is Verdict.ACCEPT and stage is not Stage.VERIFY
    if result.verdict is Verdict.ACCEPT:
        # proving the address only opens the enrolment; it never accepts the login
        expected = StepKind.BEGIN_ENROLMENT if stage is Stage.VERIFY else StepKind.ACCEPT
        assert step.kind is expected
    if step.kind is StepKind.RETRY:
        assert attempts is not None and step.attempts == attempts + 1 < max_attempts
        assert result.is_failure and not locked and step.stage is stage
    if step.kind is StepKind.REJECT and result.is_failure and locked:
        assert step.reason == "locked_out"
    if step.kind in (StepKind.CHALLENGE, StepKind.RETRY):
        assert step.attempts >= (attempts or 0)


# ------------------------------------------------------------------ auto mode


def test_only_auto_mode_cannot_challenge() -> None:
    assert rules.CAN_CHALLENGE == {"challenge": True, "append": True, "auto": False}
    assert frozenset({"append", "auto"}) == rules.APPENDED_MODES


def test_a_challenge_a_nas_cannot_show_ends_in_a_reject_that_says_how_to_append() -> None:
    asked = FactorResult.challenge("Enter a Duo passcode", {"devices": []})
    for stage in Stage:
        assert TRANSITIONS[(stage, Event.UNASKABLE)] == (StepKind.REJECT, False)
        step = decide(asked, Round(stage, "duo", None), 3, can_challenge=False)
        assert (step.kind, step.reason) == (StepKind.REJECT, "duo_challenge_unsupported")
        assert step.message == rules.MSG_APPEND


def test_a_wrong_code_in_auto_mode_is_not_asked_again() -> None:
    step = decide(FactorResult.reject("bad_code"), Round(Stage.CODE, "duo", 0), 3, False, False)
    assert (step.kind, step.reason) == (StepKind.REJECT, "duo_bad_code")


@given(result=results, attempts=st.none() | st.integers(0, 9), locked=st.booleans())
def test_auto_mode_never_challenges_nor_retries(
    result: FactorResult, attempts: int | None, locked: bool
) -> None:
    """A NAS that cannot show a challenge is never sent one: not for another round,
    not to ask again after a wrong code."""
    step = decide(result, Round(Stage.CODE, "duo", attempts), 3, locked, can_challenge=False)
    assert step.kind in (StepKind.ACCEPT, StepKind.REJECT)
    assert (step.kind is StepKind.ACCEPT) == (result.verdict is Verdict.ACCEPT)
