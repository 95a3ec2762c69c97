"""Reading what the user typed at a second-factor prompt (the `response`, as opposed to
the `Answer` mfaproxy sends back) and splitting `password,code` in append mode (the
prompts themselves: core/prompts.py). Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Sequence

from mfaproxy.otp.backup_codes import looks_like_backup_code
from mfaproxy.otp.codes import digit_code

KEYWORD_BACKUP = "backup"
KEYWORD_EMAIL = "email"
KEYWORD_RESET = "reset"
SCRV1_PREFIX = "SCRV1:"


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


def decode_scrv1(text: str) -> tuple[str, str] | None:
    """OpenVPN's static-challenge encoding of a password and its response,
    `SCRV1:<base64 password>:<base64 response>` (OpenVPN management-notes.txt, "Static
    challenge"): what radiusplugin (openvpn-auth-radius) sends as User-Password, since
    it does not take the encoding apart. (password, response), or None when `text` is
    not in that form: both parts strict base64 of UTF-8 text without NUL."""
    if not text.startswith(SCRV1_PREFIX):
        return None
    parts = text[len(SCRV1_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    decoded = []
    for part in parts:
        try:
            value = base64.b64decode(part, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        if "\x00" in value:
            return None
        decoded.append(value)
    return decoded[0], decoded[1]
