"""Reading the user's response at a prompt, append-mode splitting, prompt texts."""

from __future__ import annotations

import pytest

from mfaproxy.core import responses as rules
from mfaproxy.core.responses import IntentKind
from mfaproxy.otp.backup_codes import generate_codes


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("backup", IntentKind.ASK_BACKUP),
        (" BACKUP ", IntentKind.ASK_BACKUP),
        ("email", IntentKind.ASK_EMAIL),
        ("reset", IntentKind.RESET),
        ("123456", IntentKind.RESPONSE),
        ("push", IntentKind.RESPONSE),
    ],
)
def test_classify_response(text: str, kind: IntentKind) -> None:
    assert rules.classify_response(text, "totp", ["backup_codes", "email"], True) is kind


def test_keywords_are_plain_answers_when_the_alternate_is_off() -> None:
    assert rules.classify_response("backup", "totp", [], True) is IntentKind.RESPONSE
    assert rules.classify_response("email", "email", ["email"], True) is IntentKind.RESPONSE
    assert rules.classify_response("reset", "totp", [], False) is IntentKind.RESPONSE


def test_a_backup_code_is_recognised_by_its_shape() -> None:
    code = generate_codes(1)[0]
    assert rules.classify_response(code, "totp", ["backup_codes"], True) is IntentKind.BACKUP_CODE
    assert rules.classify_response(code, "totp", [], True) is IntentKind.RESPONSE


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
