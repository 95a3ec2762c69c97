from __future__ import annotations

import pytest

from mfaproxy.otp.codes import digit_code


@pytest.mark.parametrize(
    ("text", "low", "high", "expected"),
    [
        ("123456", 6, None, "123456"),
        (" 123456 ", 6, None, "123456"),
        ("12345", 6, None, None),
        ("1234567", 6, None, None),
        ("1234", 4, 10, "1234"),
        ("12 34", 4, 10, None),
        ("١٢٣٤٥٦", 6, None, None),  # Arabic-Indic digits are digits, not ASCII
        ("12345a", 6, None, None),
        ("", 1, None, None),
    ],
)
def test_digit_code(text: str, low: int, high: int | None, expected: str | None) -> None:
    assert digit_code(text, low, high) == expected
