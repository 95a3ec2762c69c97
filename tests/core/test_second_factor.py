"""The pure second-factor decisions."""

from __future__ import annotations

import pytest

from mfaproxy.config.policies import MfaAction
from mfaproxy.core import second_factor as rules
from mfaproxy.core.second_factor import IntentKind, PlanKind, UserMfa
from mfaproxy.otp.backup_codes import generate_codes

ENABLED = ["totp", "email"]


def plan(
    action: MfaAction,
    method: str | None = None,
    configure_later: bool = False,
    enrolled: tuple[str, ...] = (),
    inline: tuple[str, ...] = ("totp",),
    default: str | None = "totp",
    enrol_unconfigured: bool = False,
) -> rules.Plan:
    return rules.plan_second_factor(
        action,
        UserMfa(method, configure_later),
        default,
        ENABLED,
        lambda m: m in enrolled,
        lambda m: m in inline,
        enrol_unconfigured,
    )


def test_skipped_needs_nothing() -> None:
    assert plan("mfa_skipped", "totp", enrolled=("totp",)).kind is PlanKind.SKIP


def test_optional_per_user_skips_users_without_a_method() -> None:
    assert plan("mfa_optional_per_user").kind is PlanKind.SKIP
    used = plan("mfa_optional_per_user", "totp", enrolled=("totp",))
    assert (used.kind, used.method) == (PlanKind.USE, "totp")


def test_optional_per_user_with_configure_later_enrols() -> None:
    result = plan("mfa_optional_per_user", None, configure_later=True)
    assert (result.kind, result.method) == (PlanKind.ENROL, "totp")


def test_required_uses_the_users_method_over_the_default() -> None:
    result = plan("mfa_required", "email", enrolled=("email", "totp"))
    assert result.method == "email"


def test_required_falls_back_to_the_default_for_a_disabled_method() -> None:
    result = plan("mfa_required", "duo", enrolled=("totp",))
    assert (result.kind, result.method) == (PlanKind.USE, "totp")


def test_required_without_enrolment_is_refused_unless_allowed() -> None:
    refused = plan("mfa_required")
    assert refused.kind is PlanKind.REFUSE and refused.message
    assert plan("mfa_required", enrol_unconfigured=True).kind is PlanKind.ENROL
    assert plan("mfa_required", configure_later=True).kind is PlanKind.ENROL


def test_required_with_a_method_that_cannot_enrol_inline_is_refused() -> None:
    result = plan("mfa_required", configure_later=True, inline=())
    assert result.kind is PlanKind.REFUSE


def test_required_with_no_default_and_no_method_is_refused() -> None:
    result = plan("mfa_required", default=None)
    assert (result.kind, result.reason) == (PlanKind.REFUSE, "no_method")


def test_an_assigned_but_unenrolled_method_is_not_enrolled_silently() -> None:
    # an operator set the method; only "configure later" lets the user enrol it
    assert plan("mfa_required", "totp", enrol_unconfigured=True).kind is PlanKind.REFUSE


@pytest.mark.parametrize(
    ("text", "kind", "method"),
    [
        ("backup", IntentKind.SWITCH, "backup_codes"),
        (" BACKUP ", IntentKind.SWITCH, "backup_codes"),
        ("email", IntentKind.SWITCH, "email"),
        ("reset", IntentKind.RESET, None),
        ("123456", IntentKind.ANSWER, None),
        ("push", IntentKind.ANSWER, None),
    ],
)
def test_classify_answer(text: str, kind: IntentKind, method: str | None) -> None:
    intent = rules.classify_answer(text, "totp", ["backup_codes", "email"], True)
    assert (intent.kind, intent.method) == (kind, method)


def test_keywords_are_plain_answers_when_the_alternate_is_off() -> None:
    assert rules.classify_answer("backup", "totp", [], True).kind is IntentKind.ANSWER
    assert rules.classify_answer("email", "email", ["email"], True).kind is IntentKind.ANSWER
    assert rules.classify_answer("reset", "totp", [], False).kind is IntentKind.ANSWER


def test_a_backup_code_is_recognised_by_its_shape() -> None:
    code = generate_codes(1)[0]
    assert (
        rules.classify_answer(code, "totp", ["backup_codes"], True).kind is IntentKind.BACKUP_CODE
    )
    assert rules.classify_answer(code, "totp", [], True).kind is IntentKind.ANSWER


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("secret,123456", ("secret", "123456")),
        ("se,cret,123456", ("se,cret", "123456")),
        ("secret,push", ("secret", "push")),
        ("pass,word", ("pass,word", None)),  # not a code: the comma is the password's
        ("secret123456", ("secret", "123456")),  # no delimiter, code length known
        ("123456", ("123456", None)),  # too short to hold both
        ("secret", ("secret", None)),
        (",123456", (",", "123456")),  # nothing before the delimiter: length rule
    ],
)
def test_split_append(typed: str, expected: tuple[str, str | None]) -> None:
    assert rules.split_append(typed, ",", 6, frozenset({"push"}), True) == expected


def test_split_append_takes_a_backup_code() -> None:
    code = generate_codes(1)[0]
    assert rules.split_append(f"pw,{code}", ",", 6, frozenset(), True) == ("pw", code)
    assert rules.split_append(f"pw,{code}", ",", 6, frozenset(), False) == (f"pw,{code}", None)


def test_prompts_fit_one_reply_message_and_list_options() -> None:
    prompt = rules.with_options("Enter the code", ["backup_codes", "email"], "totp", True)
    assert prompt == "Enter the code (or type backup, email, reset)"
    long = rules.with_options("x" * 300, ["backup_codes"], "totp", True)
    assert len(long) <= 253
    assert rules.retry_prompt("Enter").startswith("Wrong code")


def test_split_append_uses_the_methods_code_shape() -> None:
    otp = "cccccccfhcbe" + "l" * 32  # 44 modhex characters, a YubiKey OTP
    is_otp = lambda text: len(text) == 44 and set(text) <= set("cbdefghijklnrtuv")  # noqa: E731
    assert rules.split_append(f"pw{otp}", ",", 44, frozenset(), False, is_otp) == ("pw", otp)
    assert rules.split_append(f"pw,{otp}", ",", 44, frozenset(), False, is_otp) == ("pw", otp)
    assert rules.split_append("pw,123456", ",", 44, frozenset(), False, is_otp) == (
        "pw,123456",
        None,
    )
