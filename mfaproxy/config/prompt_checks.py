"""Load-time checks of the prompt profiles against each client's max_prompt.

The schema already refused unknown templates, fields and profile names. What it cannot
see alone is whether a prompt a client will be sent fits that client's max_prompt:
that depends on the methods enabled (a Duo prompt matters only with Duo), on the TOTP
algorithm (the length of an enrolment key) and on the configured reply messages. A
prompt longer than max_prompt would be cut with "...", and what is cut may be what the
user needs (a Verified Push code, an enrolment key), so it is refused here, with the
dotted path of the client and the prompt. `{options}` is left out of the measure: a
prompt too long with them is sent without them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.config.problems import Problem
from mfaproxy.config.prompts import (
    BUILT_IN_NAMES,
    PromptName,
    PromptProfileConfig,
    longest,
    resolve,
)
from mfaproxy.config.schema import ClientConfig, RepliesConfig

# Raw key octets per TOTP algorithm (otp/totp.py draws secrets this long).
TOTP_KEY_OCTETS = {"sha1": 20, "sha256": 32, "sha512": 64}


def spaced_key_length(octets: int) -> int:
    """Characters of a base32 key (no padding) written in groups of four."""
    chars = len(base64.b32encode(bytes(octets)).rstrip(b"="))
    return chars + (chars - 1) // 4


def prompts_in_use(mfa: MultifactorConfig) -> list[PromptName]:
    """The prompts logins can be sent with this multifactor section."""
    enabled, alternates = set(mfa.enabled), set(mfa.alternate)
    used: list[PromptName] = ["retry"]
    if "totp" in enabled:
        used += ["totp", "totp_enrol"]
    if "yubikey" in enabled:
        used += ["yubikey", "yubikey_enrol"]
    if "radius" in enabled:
        used.append("otp")
    if enabled & {"email", "sms"} or "email" in alternates:
        used.append("code_sent")
    if "duo" in enabled:
        used += ["duo_menu", "duo_passcode", "duo_sms"]
        if mfa.duo is not None and mfa.duo.verified_push:
            used.append("duo_verified_push")
    if "backup_codes" in alternates:
        used.append("backup")
    return used


def prompt_problems(
    clients: Sequence[ClientConfig],
    named: Mapping[str, PromptProfileConfig],
    mfa: MultifactorConfig | None,
    replies: RepliesConfig | None,
) -> Iterator[Problem]:
    for name in named:
        if name in BUILT_IN_NAMES:
            yield Problem(
                ("prompt_profiles", name),
                f"{name!r} is a built-in prompt profile; name yours otherwise, base: {name}",
            )
    known = {*BUILT_IN_NAMES, *named}
    used = prompts_in_use(mfa) if mfa is not None else []
    key = spaced_key_length(TOTP_KEY_OCTETS[mfa.totp.algorithm] if mfa is not None else 20)
    messages = _reply_messages(replies)
    for index, client in enumerate(clients):
        if client.prompts.profile not in known:
            yield Problem(
                ("clients", index, "prompts"),
                f"unknown prompt profile {client.prompts.profile!r}; use one of"
                f" {', '.join(sorted(known))} (prompt_profiles defines more)",
            )
            continue
        profile = resolve(client.prompts, named, client.max_prompt)
        where = ("clients", index, "max_prompt" if client.max_prompt else "prompts")
        # A NAS in `auto` mode is never sent a challenge: only its messages matter.
        for name in used if client.second_factor != "auto" else []:
            size = longest(profile.template(name), key)
            if size > profile.max_prompt:
                yield Problem(
                    where,
                    f"the {name} prompt of profile {profile.name} is up to {size} characters"
                    f" long, more than max_prompt {profile.max_prompt}: set a shorter"
                    f" prompts.templates.{name} or raise max_prompt",
                )
        for setting, text in messages:
            if len(text) > profile.max_prompt:
                yield Problem(
                    where,
                    f"replies.{setting} is {len(text)} characters long, more than max_prompt"
                    f" {profile.max_prompt} of client {client.name}",
                )


def _reply_messages(replies: RepliesConfig | None) -> list[tuple[str, str]]:
    if replies is None:
        return []
    found = [("reject_message", replies.reject_message)]
    if replies.accept_message is not None:
        found.append(("accept_message", replies.accept_message))
    return found
