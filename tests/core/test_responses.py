"""Reading the user's response at a prompt, append-mode splitting, OpenVPN's SCRV1."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_split_append_uses_the_methods_code_shape() -> None:
    otp = "cccccccfhcbe" + "l" * 32  # 44 modhex characters, a YubiKey OTP
    is_otp = lambda text: len(text) == 44 and set(text) <= set("cbdefghijklnrtuv")  # noqa: E731
    assert rules.split_append(f"pw{otp}", ",", 44, frozenset(), False, is_otp) == ("pw", otp)
    assert rules.split_append(f"pw,{otp}", ",", 44, frozenset(), False, is_otp) == ("pw", otp)
    assert rules.split_append("pw,123456", ",", 44, frozenset(), False, is_otp) == (
        "pw,123456",
        None,
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def scrv1(password: str, response: str) -> str:
    return f"SCRV1:{b64(password)}:{b64(response)}"


@given(st.text(max_size=40), st.text(max_size=20))
def test_scrv1_decodes_what_openvpn_encodes(password: str, response: str) -> None:
    decoded = rules.decode_scrv1(scrv1(password, response))
    if "\x00" in password + response:
        assert decoded is None  # never a NUL into a directory bind
    else:
        assert decoded == (password, response)


@pytest.mark.parametrize(
    "text",
    [
        "SCRV1:",
        "SCRV1:cGFzcw==",  # no response part
        "SCRV1:cGFzcw==:MTIz:MTIz",  # one part too many
        "SCRV1:not base64!:MTIz",
        "scrv1:cGFzcw==:MTIz",  # the prefix is exact
        "SCRV1:/w==:MTIz",  # not UTF-8
        "password,123456",
    ],
)
def test_text_not_in_scrv1_form_is_not_decoded(text: str) -> None:
    assert rules.decode_scrv1(text) is None
