"""The second-factor decisions, pure: which method a login needs, how to read what the
user typed at the prompt, how to split `password,code` in append mode, what to say.

No I/O and no clock: the engine gathers the facts (policy action, the user's record,
the factors' capabilities) and acts on the values returned here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mfaproxy.config.policies import MfaAction
from mfaproxy.otp.backup_codes import looks_like_backup_code
from mfaproxy.otp.codes import digit_code
from mfaproxy.radius.constants import MAX_STRING_OCTETS
from mfaproxy.radius.text import reply_message

KEYWORD_BACKUP = "backup"
KEYWORD_EMAIL = "email"
KEYWORD_RESET = "reset"


class PlanKind(enum.Enum):
    SKIP = "skip"  # no second factor: Accept after the primary check
    USE = "use"  # challenge (or check the appended code) with `method`
    ENROL = "enrol"  # the user enrols `method` inside the RADIUS flow
    REFUSE = "refuse"  # MFA is required but cannot happen: Reject with `message`


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    method: str | None = None
    reason: str = ""
    message: str | None = None


@dataclass(frozen=True)
class UserMfa:
    """What the flow needs to know about a user's second-factor set-up."""

    method: str | None
    configure_later: bool


MSG_NOT_SET_UP = (
    "Multifactor authentication is required but not set up for you. Contact your administrator."
)
MSG_NO_METHOD = "Multifactor authentication is required but no method is configured."


def plan_second_factor(
    action: MfaAction,
    user: UserMfa,
    default: str | None,
    enabled: Sequence[str],
    is_enrolled: Callable[[str], bool],
    can_enrol_inline: Callable[[str], bool],
    enrol_unconfigured: bool,
) -> Plan:
    """Map the MFA policy action and the user's set-up to what happens next.

    - mfa_skipped: no second factor.
    - mfa_optional_per_user: a second factor only for users who have a method.
    - mfa_required: the user's method, else the server default. A method the operator
      has since disabled falls back to the default. A user who is not enrolled yet
      enrols inline when an operator marked them "configure later" (or the operator
      allows enrolment of unconfigured users) and the method can be enrolled through a
      text prompt; otherwise the login is refused with a message saying why.
    """
    if action == "mfa_skipped":
        return Plan(PlanKind.SKIP, reason="mfa_skipped")
    own = user.method if user.method in enabled else None
    if action == "mfa_optional_per_user" and own is None and not user.configure_later:
        return Plan(PlanKind.SKIP, reason="mfa_optional_not_configured")
    method = own or default
    if method is None:
        return Plan(PlanKind.REFUSE, reason="no_method", message=MSG_NO_METHOD)
    if is_enrolled(method):
        return Plan(PlanKind.USE, method, reason="enrolled")
    may_enrol = user.configure_later or (enrol_unconfigured and own is None)
    if may_enrol and can_enrol_inline(method):
        return Plan(PlanKind.ENROL, method, reason="inline_enrolment")
    return Plan(PlanKind.REFUSE, method, reason="not_enrolled", message=MSG_NOT_SET_UP)


class IntentKind(enum.Enum):
    ANSWER = "answer"  # give the text to the current factor
    BACKUP_CODE = "backup_code"  # the text is a backup code
    SWITCH = "switch"  # use another way (`method`): backup codes or email
    RESET = "reset"  # the user asks for an MFA reset


@dataclass(frozen=True)
class Intent:
    kind: IntentKind
    method: str | None = None


def classify_answer(
    text: str, current: str, alternates: Sequence[str], reset_allowed: bool
) -> Intent:
    """Read what the user typed at a second-factor prompt. Keywords are case-insensitive;
    a backup code is recognised by its shape (80+ bits, never mistaken for an OTP)."""
    word = text.strip().lower()
    if word == KEYWORD_BACKUP and "backup_codes" in alternates:
        return Intent(IntentKind.SWITCH, "backup_codes")
    if word == KEYWORD_EMAIL and "email" in alternates and current != "email":
        return Intent(IntentKind.SWITCH, "email")
    if word == KEYWORD_RESET and reset_allowed:
        return Intent(IntentKind.RESET)
    if "backup_codes" in alternates and looks_like_backup_code(text):
        return Intent(IntentKind.BACKUP_CODE)
    return Intent(IntentKind.ANSWER)


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
    """Split `password<delimiter>answer`, or `password` + a code of known length.

    The split happens at the last delimiter and only when what follows looks like an
    answer (`is_code`: the method's code shape, a factor keyword, a backup code), so a
    password that itself contains the delimiter still works. Without a delimiter, the
    last `code_length` characters are taken when they have the code's shape (digits for
    TOTP, 44 modhex letters for a YubiKey). The primary check is never retried with
    another split: a second bind would count twice against directory lockout.
    """
    head, sep, tail = password.rpartition(delimiter)
    if sep and head:
        answer = tail.strip()
        if (
            is_code(answer)
            or answer.lower() in keywords
            or (backup_codes and looks_like_backup_code(answer))
        ):
            return head, answer
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
