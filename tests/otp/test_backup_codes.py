"""Backup codes: format, entropy, normalisation, peppered hashing."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from mfaproxy.otp.backup_codes import (
    ALPHABET,
    CODE_SYMBOLS,
    BackupCodeHasher,
    BackupCodeSettings,
    derive_pepper,
    generate_codes,
    looks_like_backup_code,
    normalise_code,
)

FORMAT = re.compile(r"^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$")
KEY = bytes(range(32))


def test_generates_ten_distinct_formatted_codes_by_default() -> None:
    codes = generate_codes()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(FORMAT.match(code) for code in codes)


def test_count_is_honoured_and_checked() -> None:
    assert len(generate_codes(3)) == 3
    with pytest.raises(ValueError, match="at least 1"):
        generate_codes(0)


def test_entropy_is_at_least_80_bits() -> None:
    assert len(set(ALPHABET)) == 32
    assert CODE_SYMBOLS * math.log2(len(ALPHABET)) >= 80


def test_generated_codes_use_the_whole_alphabet() -> None:
    # 100 codes = 1600 symbols: every one of the 32 symbols appears (miss chance ~1e-20)
    seen = set("".join(generate_codes(100)).replace("-", ""))
    assert seen == set(ALPHABET)


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("abcd-efgh-jkmn-pqrs", "abcdefghjkmnpqrs"),
        ("ABCD-EFGH-JKMN-PQRS", "abcdefghjkmnpqrs"),
        ("abcd efgh jkmn pqrs", "abcdefghjkmnpqrs"),
        ("  abcdefghjkmnpqrs\n", "abcdefghjkmnpqrs"),
        ("0123-IL0O-vwxy-z999", "0123110" + "0vwxyz999"),
        ("ab-cd-ef-gh-jk-mn-pq-rs", "abcdefghjkmnpqrs"),
    ],
)
def test_normalisation(typed: str, canonical: str) -> None:
    assert normalise_code(typed) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "123456",
        "12345678",
        "",
        "abcd-efgh-jkmn-pqr",
        "abcd-efgh-jkmn-pqrst",
        "abcd-efgh-jkmn-pqru",
        "abcd_efgh_jkmn_pqrs",
        "push",
        "reset",
        "\uff41\uff42\uff43\uff44-efgh-jkmn-pqrs",
    ],
)
def test_non_codes_are_recognised(text: str) -> None:
    assert not looks_like_backup_code(text)
    assert normalise_code(text) is None


def test_generated_codes_look_like_codes() -> None:
    assert all(looks_like_backup_code(code) for code in generate_codes())
    assert looks_like_backup_code(generate_codes(1)[0].upper().replace("-", " "))


def test_digest_ignores_formatting_and_binds_the_user() -> None:
    hasher = BackupCodeHasher.from_master_key(KEY)
    code = generate_codes(1)[0]
    digest = hasher.digest("alice", code)
    assert digest is not None and len(digest) == 32
    assert hasher.digest("alice", code.upper().replace("-", " ")) == digest
    assert hasher.digest("bob", code) != digest
    assert hasher.digest("alice", "123456") is None


def test_digest_depends_on_the_master_key() -> None:
    code = generate_codes(1)[0]
    first = BackupCodeHasher.from_master_key(KEY).digest("alice", code)
    other = BackupCodeHasher.from_master_key(bytes(32)).digest("alice", code)
    assert first != other


def test_pepper_is_not_the_master_key() -> None:
    pepper = derive_pepper(KEY)
    assert len(pepper) == 32
    assert pepper != KEY
    assert derive_pepper(KEY) == pepper


def test_short_pepper_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BackupCodeHasher(b"short")


def test_settings() -> None:
    assert BackupCodeSettings().count == 10
    with pytest.raises(ValidationError):
        BackupCodeSettings.model_validate({"count": 0})
    with pytest.raises(ValidationError):
        BackupCodeSettings.model_validate({"count": 10, "length": 8})
