"""Rendering prompts through a profile (core/prompts.py): the default wording is the
one mfaproxy always used, the words offered are filled in by mfaproxy, and a prompt
too long for its NAS loses its options before it is cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.config.prompts import BUILT_IN, PROMPT_NAMES, PromptProfile
from mfaproxy.core.prompts import keywords, render, render_text

DEFAULT = BUILT_IN["default"]


def test_the_default_profile_words_prompts_as_before() -> None:
    words = ["backup", "email", "reset"]
    assert (
        render(DEFAULT, "totp", {}, words)
        == "Enter the code from your authenticator app (or type backup, email, reset)"
    )
    assert render(DEFAULT, "code_sent", {"destination": "a***@example.com"}) == (
        "Enter the code sent to a***@example.com"
    )
    assert render(DEFAULT, "duo_menu", {"choices": "push, phone"}) == (
        "Duo: type push, phone, or a passcode"
    )
    assert render(DEFAULT, "retry", {"prompt": "Touch your YubiKey"}) == (
        "Wrong code, try again. Touch your YubiKey"
    )


def test_keywords_follow_the_alternates_the_user_can_use() -> None:
    assert keywords(["backup_codes", "email"], "totp", True) == ["backup", "email", "reset"]
    assert keywords(["backup_codes", "email"], "email", False) == ["backup"]
    assert keywords(["backup_codes"], "backup_codes", True) == []


def test_field_values_are_made_one_printable_line_and_bounded() -> None:
    text = render(DEFAULT, "code_sent", {"destination": "a\nb\u00e9" + "x" * 200})
    assert text.startswith("Enter the code sent to a b?") and len(text) < 90


def test_text_without_a_template_gets_the_options_in_the_profiles_wording() -> None:
    short = BUILT_IN["short"]
    assert render_text(short, "Next token code", ["reset"]) == "Next token code (or reset)"
    assert render_text(short, "x" * 100, ["reset"]) == "x" * 77 + "..."


@given(
    st.sampled_from([name for name in PROMPT_NAMES if name != "options"]),
    st.sampled_from(list(BUILT_IN.values())),
    st.lists(st.sampled_from(["backup", "email", "reset"]), unique=True),
    st.integers(16, 253),
)
def test_the_words_offered_appear_whole_or_not_at_all(
    name: str, profile: PromptProfile, words: list[str], limit: int
) -> None:
    narrow = PromptProfile(profile.name, profile.templates, limit)
    fields = {"choices": "push, phone", "code": "123456", "key": "ABCD EFGH"}
    text = render(narrow, name, fields, words)  # type: ignore[arg-type]
    assert len(text) <= limit
    offered = profile.template("options").split("{")[0].strip()
    if offered and offered in text:
        assert all(word in text for word in words)
