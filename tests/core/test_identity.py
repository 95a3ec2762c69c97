"""The one user-name normaliser, the typed-name checks and the realm rules (pure).

The property that matters: every spelling of a name that the checks let through, and
that a directory would take for the same user (case, compatibility forms, long s, sharp
s, a configured realm), has one key; and every spelling the checks refuse is refused
with its own reason, never looked up.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaproxy.config.directory import RealmRule
from mfaproxy.core.identity import (
    LoginName,
    check_login_name,
    identity_key,
    name_problem,
    normalise,
    read_login_name,
)

REALMS = [
    RealmRule(format="prefix", realms=["EXAMPLE"]),
    RealmRule(format="suffix", realms=["example.org", "corp.example.org"]),
]

# Spellings a directory treats as the base name: full-width and other compatibility
# forms (OpenLDAP's caseIgnoreMatch prepares with NFKC), long s, sharp s against "ss".
COMPATIBILITY: dict[str, list[str]] = {
    "s": ["\uff53", "\u017f", "S", "\uff33"],
    "a": ["\uff41", "A", "\u00aa"],
    "m": ["\uff4d", "M", "\u2098"],
    "i": ["\u2170", "I", "\uff49"],
    "1": ["\u00b9", "\u2460", "\uff11"],
}


def spell(name: str, choices: list[int]) -> str:
    out = []
    for index, char in enumerate(name):
        forms = [char, *COMPATIBILITY.get(char, [])]
        out.append(forms[choices[index % len(choices)] % len(forms)] if choices else char)
    return "".join(out)


# --------------------------------------------------------------------------- normalise


@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert unicodedata.normalize("NFKC", once) == once
    assert once == once.strip()


@pytest.mark.parametrize(
    ("variants", "key"),
    [
        (["sam", "SAM", "Sam", " sam", "sam ", "sam\t", "\uff53am", "\u017fam"], "sam"),
        (["Stra\u00dfe", "STRASSE", "strasse", "STRA\u1e9eE"], "strasse"),
        (["\u2160\u2161", "III", "iii", "\u2162"], "iii"),  # roman numerals
    ],
)
def test_spellings_a_directory_merges_share_one_key(variants: list[str], key: str) -> None:
    assert {normalise(v) for v in variants} == {key}


@settings(max_examples=300)
@given(st.sampled_from(["sam", "samuel", "miss", "ali1"]), st.lists(st.integers(0, 9)))
def test_every_accepted_spelling_of_a_name_has_its_key(name: str, choices: list[int]) -> None:
    variant = spell(name, choices)
    assert normalise(variant) == name
    # Compatibility forms are refused as typed names; case is the one freedom left.
    if name_problem(variant) is None:
        assert variant.casefold() == name


def test_identity_key_refuses_an_empty_name() -> None:
    with pytest.raises(ValueError, match="empty"):
        identity_key(" \t ")
    assert identity_key(" Alice ") == "alice"


# --------------------------------------------------------------------------- typed checks


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "user_name_blank"),
        ("   ", "user_name_blank"),
        ("\t", "user_name_blank"),
        (" sam", "user_name_whitespace"),
        ("sam ", "user_name_whitespace"),
        ("sam\t", "user_name_whitespace"),
        ("sam\n", "user_name_whitespace"),
        ("sam\u3000", "user_name_whitespace"),
        ("sa\x00m", "user_name_control_characters"),
        ("sa\x7fm", "user_name_control_characters"),
        ("sam\u200b", "user_name_control_characters"),  # zero width: LDAP drops it
        ("s\u00adam", "user_name_control_characters"),  # soft hyphen
        ("\u202esam", "user_name_control_characters"),  # right-to-left override
        ("sa\u2028m", "user_name_control_characters"),  # line separator
        ("sa\ue000m", "user_name_control_characters"),  # private use
        ("sa\U000e0001m", "user_name_control_characters"),  # language tag
        ("sam\ufffd", "user_name_not_utf8"),
        ("\uff53am", "user_name_not_canonical"),
        ("\u017fam", "user_name_not_canonical"),
        ("sa\u00a0m", "user_name_not_canonical"),  # no-break space becomes a space
        ("e\u0301", "user_name_not_canonical"),  # decomposed
        ("\u2160", "user_name_not_canonical"),  # roman numeral one
    ],
)
def test_typed_names_refused_with_their_reason(typed: str, reason: str) -> None:
    assert name_problem(typed) == reason


@pytest.mark.parametrize(
    "typed", ["sam", "SAM", "Stra\u00dfe", "\u00e9lodie", "dave (ops), jr+1", "a b", "\u5f20\u4f1f"]
)
def test_ordinary_names_pass(typed: str) -> None:
    assert name_problem(typed) is None


@given(st.text(st.characters(codec="utf-8"), min_size=1))
def test_an_accepted_name_is_its_own_nfkc_form_without_padding(text: str) -> None:
    if name_problem(text) is not None:
        return  # an implication, not a filter: most random text is refused
    assert text == text.strip() == unicodedata.normalize("NFKC", text)
    assert all(unicodedata.category(c)[0] != "C" for c in text)
    assert normalise(text) == unicodedata.normalize("NFKC", text.casefold())


@given(st.text(), st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "\u3000"]))
def test_padding_is_always_refused(text: str, pad: str) -> None:
    assert name_problem(pad + text) is not None
    assert name_problem(text + pad) is not None


# --------------------------------------------------------------------------- realms


@pytest.mark.parametrize(
    "typed",
    ["sam", "SAM", "EXAMPLE\\sam", "example\\Sam", "sam@example.org", "sam@EXAMPLE.ORG",
     "Sam@corp.example.org"],
)  # fmt: skip
def test_realm_forms_name_one_user(typed: str) -> None:
    login = check_login_name(typed, REALMS)
    assert isinstance(login, LoginName)
    assert login.key == "sam"
    assert login.directory_name.casefold() == "sam"


@pytest.mark.parametrize("typed", ["OTHER\\sam", "sam@evil.example", "sam@example.org.evil"])
def test_other_realms_are_left_whole(typed: str) -> None:
    login = read_login_name(typed, REALMS)
    assert login.realm is None and login.user == typed and login.key == normalise(typed)


def test_a_rule_that_does_not_strip_asks_the_directory_as_typed() -> None:
    rules = [RealmRule(format="prefix", realms=["EXAMPLE"], strip=False)]
    login = read_login_name("EXAMPLE\\sam", rules)
    assert (login.directory_name, login.key, login.realm) == ("EXAMPLE\\sam", "sam", "EXAMPLE")


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("EXAMPLE\\ sam", "user_name_whitespace"),
        ("sam @example.org", "user_name_whitespace"),
        ("EXAMPLE\\\uff53am", "user_name_not_canonical"),
    ],
)
def test_the_user_part_of_a_realm_form_is_checked_too(typed: str, reason: str) -> None:
    assert check_login_name(typed, REALMS) == reason


def test_a_bare_realm_is_not_a_user() -> None:
    assert read_login_name("EXAMPLE\\", REALMS).realm is None
    assert read_login_name("@example.org", REALMS).realm is None


def test_default_delimiters_follow_the_format() -> None:
    assert RealmRule(format="prefix", realms=["X"]).separator == "\\"
    assert RealmRule(format="suffix", realms=["x"]).separator == "@"
    assert RealmRule(format="suffix", delimiter="%", realms=["x"]).separator == "%"
