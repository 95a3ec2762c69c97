"""Reading what the user typed at a second-factor prompt (the `response`, as opposed to
the `Answer` mfaproxy sends back), splitting `password,code` in append mode, and the
prompt texts. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from mfaproxy.otp.backup_codes import looks_like_backup_code
from mfaproxy.otp.codes import digit_code
from mfaproxy.radius.constants import MAX_STRING_OCTETS
from mfaproxy.radius.text import reply_message

KEYWORD_BACKUP = "backup"
KEYWORD_EMAIL = "email"
KEYWORD_RESET = "reset"


class IntentKind(enum.Enum):
    RESPONSE = "response"  # give the text to the current factor
    BACKUP_CODE = "backup_code"  # the text is a backup code
    ASK_BACKUP = "ask_backup"  # `backup`: the user wants to type a backup code
    ASK_EMAIL = "ask_email"  # `email`: the user wants a code by email
    RESET = "reset"  # `reset`: the user asks for an MFA reset


def classify_response(
    text: str, current: str, alternates: Sequence[str], reset_allowed: bool
) -> IntentKind:
    """Read what the user typed at a second-factor prompt. Keywords are case-insensitive;
    a backup code is recognised by its shape (80+ bits, never mistaken for an OTP)."""
    word = text.strip().lower()
    if word == KEYWORD_BACKUP and "backup_codes" in alternates:
        return IntentKind.ASK_BACKUP
    if word == KEYWORD_EMAIL and "email" in alternates and current != "email":
        return IntentKind.ASK_EMAIL
    if word == KEYWORD_RESET and reset_allowed:
        return IntentKind.RESET
    if "backup_codes" in alternates and looks_like_backup_code(text):
        return IntentKind.BACKUP_CODE
    return IntentKind.RESPONSE


def digits_code(text: str) -> bool:
    """The shape of a typical OTP when no method says otherwise: 4 to 10 digits."""
    return digit_code(text, 4, 10) is not None


def split_append(
    password: str,
    delimiter: str,
    code_length: int | None,
    keywords: frozenset[str],
    backup_codes: bool,
    is_code: Callable[[str], bool] = digits_code,
) -> tuple[str, str | None]:
    """Split `password<delimiter>response`, or `password` + a code of known length.

    The split happens at the last delimiter and only when what follows looks like a
    response (`is_code`: the method's code shape, a factor keyword, a backup code), so a
    password that itself contains the delimiter still works. Without a delimiter, the
    last `code_length` characters are taken when they have the code's shape (digits for
    TOTP, 44 modhex letters for a YubiKey). The primary check is never retried with
    another split: a second bind would count twice against directory lockout.
    """
    head, sep, tail = password.rpartition(delimiter)
    if sep and head:
        response = tail.strip()
        if (
            is_code(response)
            or response.lower() in keywords
            or (backup_codes and looks_like_backup_code(response))
        ):
            return head, response
    if code_length and len(password) > code_length:
        tail = password[-code_length:]
        if is_code(tail):
            return password[:-code_length], tail
    return password, None


def with_options(prompt: str, alternates: Sequence[str], current: str, reset_allowed: bool) -> str:
    """Append the words the user can type instead: `backup`, `email`, `reset`."""
    words = []
    if "backup_codes" in alternates:
        words.append(KEYWORD_BACKUP)
    if "email" in alternates and current != "email":
        words.append(KEYWORD_EMAIL)
    if reset_allowed:
        words.append(KEYWORD_RESET)
    if not words or current == "backup_codes":
        return reply_message(prompt)
    suffix = f" (or type {', '.join(words)})"
    if len(prompt) + len(suffix) > MAX_STRING_OCTETS:
        return reply_message(prompt)
    return reply_message(prompt + suffix)


def retry_prompt(prompt: str) -> str:
    return reply_message("Wrong code, try again. " + prompt)
