"""Prompt profiles: the wording of every challenge prompt, per NAS.

A profile maps each prompt (`totp`, `code_sent`, `retry`...) to a template: text with
`{field}` placeholders (str.format's syntax, nothing else: no positional fields, no
attribute or index access, no conversions or format specs, so a template can neither
reach into Python objects nor blow a prompt up to megabytes). Each prompt has its own
fields (`PROMPTS`), plus the fields every prompt may use (`COMMON_FIELDS`); a template
that names another field is refused at load with its dotted path.

Three profiles are built in (`BUILT_IN`): `default` (the wording mfaproxy always used),
`short` (one line of at most 80 characters, for VPN portals that show one line) and
`openvpn` (the first prompt of a login starts with `OTP`, the word OpenVPN's auth-pam
plugin is told to answer with the static-challenge response; see README "Prompt
profiles"). A named profile (`prompt_profiles:`) or a client's own (`clients[].prompts`
as a mapping) starts from a built-in one (`base`) and replaces some templates.

The words a user types instead of a code (`push`, `backup`, `email`, `reset`) are never
part of a template: mfaproxy fills them in (`{options}`, `{choices}`), so portals that
match words of the prompt see the same words whatever the wording.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mfaproxy.config.base import Strict
from mfaproxy.radius.constants import MAX_STRING_OCTETS

PromptName = Literal[
    "totp",
    "yubikey",
    "otp",
    "code_sent",
    "duo_menu",
    "duo_passcode",
    "duo_sms",
    "duo_verified_push",
    "backup",
    "retry",
    "totp_enrol",
    "yubikey_enrol",
    "options",
]
PROMPT_NAMES: tuple[PromptName, ...] = get_args(PromptName)

# Fields every prompt may use: the login's method, the attempts left in this login.
COMMON_FIELDS = frozenset({"method", "attempts_left"})

# Each prompt's own fields. `options` is the `options` prompt rendered with the words
# the user may type instead (empty where none apply); `keywords` those words.
PROMPTS: Mapping[PromptName, frozenset[str]] = {
    "totp": frozenset({"options"}),
    "yubikey": frozenset({"options"}),
    "otp": frozenset({"options"}),
    "code_sent": frozenset({"destination", "options"}),
    "duo_menu": frozenset({"choices", "options"}),
    "duo_passcode": frozenset({"options"}),
    "duo_sms": frozenset({"options"}),
    "duo_verified_push": frozenset({"code", "options"}),
    "backup": frozenset(),
    "retry": frozenset({"prompt"}),
    "totp_enrol": frozenset({"key", "digits", "period"}),
    "yubikey_enrol": frozenset(),
    "options": frozenset({"keywords"}),
}

# The longest value each field takes (values are cut to it when rendered), for the
# load-time check that every prompt fits its client's max_prompt. `key` depends on the
# TOTP algorithm and `prompt` on the prompt retried: both are given by the caller.
FIELD_LIMITS: Mapping[str, int] = {
    "method": 12,  # backup_codes
    "attempts_left": 2,
    "destination": 48,  # a masked address or number
    "choices": 16,  # push, phone, sms
    "code": 16,  # a Duo Verified Push code
    "keywords": 20,  # backup, email, reset
    "digits": 2,
    "period": 3,
    "key": 129,  # a spaced base32 SHA-512 key
    "prompt": MAX_STRING_OCTETS,
}


def template_fields(template: str) -> list[str]:
    """The placeholder names of `template`; raises ValueError for anything but plain
    `{name}` placeholders (and `{{`, `}}` for braces)."""
    names = []
    for _text, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"{{{name}}} is not a named field: write {{field}}")
        if spec or conversion:
            raise ValueError(f"{{{name}}} has a format spec or conversion: write {{{name}}}")
        names.append(name)
    return names


def template_problem(prompt: PromptName, template: str) -> str | None:
    """Why `template` cannot be the `prompt` prompt, or None."""
    try:
        names = template_fields(template)
    except ValueError as exc:
        return f"not a valid template: {exc}"
    allowed = PROMPTS[prompt] | COMMON_FIELDS
    unknown = sorted(set(names) - allowed)
    if unknown:
        fields = ", ".join(f"{{{f}}}" for f in sorted(allowed))
        return f"unknown field(s) {', '.join(unknown)}; {prompt} takes {fields}"
    literal = "".join(text for text, _n, _s, _c in string.Formatter().parse(template))
    if not all(" " <= c <= "~" for c in literal):
        return "must be printable ASCII on one line (one Reply-Message, RFC 2865 section 5.18)"
    return None


class PromptTemplates(Strict):
    """One template per prompt; an unset one comes from the profile's `base`."""

    totp: str | None = None
    yubikey: str | None = None
    otp: str | None = None
    code_sent: str | None = None
    duo_menu: str | None = None
    duo_passcode: str | None = None
    duo_sms: str | None = None
    duo_verified_push: str | None = None
    backup: str | None = None
    retry: str | None = None
    totp_enrol: str | None = None
    yubikey_enrol: str | None = None
    options: str | None = None

    @field_validator("*")
    @classmethod
    def _check(cls, value: str | None, info: ValidationInfo) -> str | None:
        prompt = cast(PromptName, info.field_name)
        problem = None if value is None else template_problem(prompt, value)
        if problem is not None:
            raise ValueError(problem)
        return value

    def given(self) -> dict[PromptName, str]:
        return {name: value for name in PROMPT_NAMES if (value := getattr(self, name))}


BuiltIn = Literal["default", "short", "openvpn"]
BUILT_IN_NAMES: tuple[BuiltIn, ...] = get_args(BuiltIn)
MaxPrompt = Annotated[int, Field(ge=16, le=MAX_STRING_OCTETS)]


class PromptProfileConfig(Strict):
    """A named profile (`prompt_profiles.NAME`): a built-in one with some templates
    replaced, and the longest prompt its NAS shows."""

    base: BuiltIn = "default"
    # Longest Reply-Message this profile's NAS shows; unset: the base profile's.
    max_prompt: MaxPrompt | None = None
    templates: PromptTemplates = PromptTemplates()


class ClientPromptsConfig(Strict):
    """`clients[].prompts`: a profile (built-in or named), and templates of the client's
    own over it. A plain string is the profile's name: `prompts: short`."""

    profile: str = Field(default="default", min_length=1)
    templates: PromptTemplates = PromptTemplates()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"profile": data} if isinstance(data, str) else data


@dataclass(frozen=True)
class PromptProfile:
    """A resolved profile: every template, and the longest prompt."""

    name: str
    templates: Mapping[PromptName, str]
    max_prompt: int

    def template(self, prompt: PromptName) -> str:
        return self.templates[prompt]


def _profile(name: str, max_prompt: int, templates: Mapping[PromptName, str]) -> PromptProfile:
    missing = set(PROMPT_NAMES) - set(templates)
    assert not missing, f"built-in profile {name} lacks {sorted(missing)}"
    for prompt, template in templates.items():
        problem = template_problem(prompt, template)
        assert problem is None, f"built-in {name}.{prompt}: {problem}"
    return PromptProfile(name, dict(templates), max_prompt)


DEFAULT = _profile(
    "default",
    MAX_STRING_OCTETS,
    {
        "totp": "Enter the code from your authenticator app{options}",
        "yubikey": "Touch your YubiKey{options}",
        "otp": "Enter your one-time code{options}",
        "code_sent": "Enter the code sent to {destination}{options}",
        "duo_menu": "Duo: type {choices}, or a passcode{options}",
        "duo_passcode": "Enter a Duo passcode{options}",
        "duo_sms": "Enter the passcode sent by SMS{options}",
        "duo_verified_push": (
            "Duo Verified Push: enter {code} in Duo Mobile, then press Enter here{options}"
        ),
        "backup": "Enter one of your backup codes",
        "retry": "Wrong code, try again. {prompt}",
        "totp_enrol": (
            "Add this key to your authenticator app ({digits} digits, {period}s): {key}"
            " then enter the code it shows"
        ),
        "yubikey_enrol": "Touch your YubiKey to register it",
        "options": " (or type {keywords})",
    },
)

# For portals that show one line of at most ~80 characters.
SHORT = _profile(
    "short",
    80,
    {
        "totp": "Authenticator code{options}",
        "yubikey": "Touch your YubiKey{options}",
        "otp": "One-time code{options}",
        "code_sent": "Code sent to {destination}{options}",
        "duo_menu": "Duo: {choices} or passcode{options}",
        "duo_passcode": "Duo passcode{options}",
        "duo_sms": "Duo SMS passcode{options}",
        "duo_verified_push": "Enter {code} in Duo Mobile{options}",
        "backup": "Backup code",
        "retry": "Wrong code. {prompt}",
        "totp_enrol": "Add key {key} to your app, then type its code",
        "yubikey_enrol": "Touch your YubiKey to register it",
        "options": " (or {keywords})",
    },
)

# OpenVPN with openvpn-plugin-auth-pam and pam_radius_auth: pam_radius hands the
# Reply-Message of an Access-Challenge to auth-pam as the PAM query, and auth-pam
# answers a query whose first word starts with a configured name (case-insensitive)
# with the value given for it: `otp OTP` answers with the static-challenge response.
# So the prompts a login's first challenge can carry start with "OTP"; every follow-up
# prompt does not, so auth-pam ends the conversation instead of sending the same
# response a second time (a wrong code would count twice).
OPENVPN = _profile(
    "openvpn",
    MAX_STRING_OCTETS,
    {
        "totp": "OTP: code from your authenticator app{options}",
        "yubikey": "OTP: touch your YubiKey{options}",
        "otp": "OTP: one-time code{options}",
        "code_sent": "Code sent to {destination}{options}",
        "duo_menu": "OTP: Duo {choices}, or a passcode{options}",
        "duo_passcode": "OTP: Duo passcode{options}",
        "duo_sms": "Duo SMS passcode sent; connect again and give one{options}",
        "duo_verified_push": "Verified Push: enter {code} in Duo Mobile{options}",
        "backup": "Backup code",
        "retry": "Wrong code. {prompt}",
        "totp_enrol": "Add key {key} to your app, then type its code",
        "yubikey_enrol": "Touch your YubiKey to register it",
        "options": " (or {keywords})",
    },
)

BUILT_IN: Mapping[BuiltIn, PromptProfile] = {"default": DEFAULT, "short": SHORT, "openvpn": OPENVPN}


def resolve(
    client: ClientPromptsConfig,
    named: Mapping[str, PromptProfileConfig],
    max_prompt: int | None,
) -> PromptProfile:
    """A client's profile: the built-in base, the named profile's templates over it,
    the client's own over those; the client's max_prompt, else the named profile's,
    else the base's. A name that is neither named nor built in raises ValueError
    (daemon/preflight.py refuses such a configuration with its dotted path)."""
    chosen = named.get(client.profile)
    if chosen is None and client.profile not in BUILT_IN:
        raise ValueError(f"unknown prompt profile {client.profile!r}")
    base = BUILT_IN[chosen.base if chosen is not None else cast(BuiltIn, client.profile)]
    templates = dict(base.templates)
    if chosen is not None:
        templates.update(chosen.templates.given())
    templates.update(client.templates.given())
    limit = max_prompt or (chosen.max_prompt if chosen is not None else None) or base.max_prompt
    return PromptProfile(client.profile, templates, limit)


def longest(template: str, key_length: int) -> int:
    """The most characters `template` renders to without its `{options}` (which are
    dropped before a prompt is cut): every field at its longest, `{prompt}` empty."""
    limits = {**FIELD_LIMITS, "key": key_length, "prompt": 0, "options": 0}
    return len(template.format_map({name: "x" * size for name, size in limits.items()}))
