"""The shape of a one-time code: the one digits check every method uses."""

from __future__ import annotations


def digit_code(text: str, min_length: int, max_length: int | None = None) -> str | None:
    """`text` without surrounding space when it is `min_length` to `max_length` ASCII
    digits (exactly `min_length` when no maximum is given), else None.

    isascii() first: str.isdigit() also accepts other scripts' digits ("١٢٣").
    """
    typed = text.strip()
    upper = min_length if max_length is None else max_length
    if min_length <= len(typed) <= upper and typed.isascii() and typed.isdigit():
        return typed
    return None
