"""The one Reply-Message rule (radius/text.py): printable ASCII, one line, 253 octets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.radius.text import fits_reply_message, reply_message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Enter your code", "Enter your code"),
        ("café", "caf?"),
        ("Caf\u00e9\n\tok", "Caf? ok"),
        ("  two  spaces\r\n", "two spaces"),
        ("bell\x07and\x00nul", "bell and nul"),
        ("", ""),
        (404, "404"),
    ],
)
def test_reply_message_cases(text: object, expected: str) -> None:
    assert reply_message(text) == expected


def test_long_text_is_cut_and_marked() -> None:
    cut = reply_message("x" * 1000)
    assert len(cut) == 253
    assert cut.endswith("...")
    assert reply_message("word " * 10, limit=12) == "word word..."


@given(st.text(), st.integers(min_value=0, max_value=300))
def test_reply_message_always_fits_and_is_idempotent(text: str, limit: int) -> None:
    fitted = reply_message(text, limit)
    assert len(fitted.encode("ascii")) <= limit  # ASCII: characters are octets
    assert all(" " <= c <= "~" for c in fitted)
    assert "  " not in fitted and fitted == fitted.strip()
    assert reply_message(fitted, limit) == fitted


def test_fits_reply_message() -> None:
    assert fits_reply_message("Authentication failed")
    assert not fits_reply_message("Échec")
    assert not fits_reply_message("two\nlines")
    assert not fits_reply_message("x" * 254)
