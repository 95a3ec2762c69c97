"""Rendering challenge prompts through a client's prompt profile (config/prompts.py).
Pure: no I/O.

Every prompt goes through radius/text.reply_message, cut at the profile's max_prompt.
A prompt that would be longer with the words the user may type instead (`{options}`)
is rendered without them first, so a cut never ends a prompt in half a keyword.
The words themselves (`backup`, `email`, `reset`, and Duo's `push`, `phone`, `sms`)
are filled in here, never taken from a template: what the user types stays the same
whatever the wording.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mfaproxy.config.prompts import (
    DEFAULT,
    FIELD_LIMITS,
    PromptName,
    PromptProfile,
    resolve,
)
from mfaproxy.config.schema import Config
from mfaproxy.core.responses import KEYWORD_BACKUP, KEYWORD_EMAIL, KEYWORD_RESET
from mfaproxy.radius.text import reply_message

BACKUP_CODES = "backup_codes"
# A limit no rendered prompt reaches: the text flattened, not cut.
UNCUT = 1 << 20


class _Fields(dict[str, str]):
    """Template values; a field a template may name but nobody gave renders empty."""

    def __missing__(self, key: str) -> str:
        return ""


def keywords(alternates: Sequence[str], current: str, reset_allowed: bool) -> list[str]:
    """The words the user can type at a code prompt instead of the code, in the order
    they are offered: `backup`, `email` (unless email is the method), `reset`. None at
    a backup-code prompt: a backup code is the way out already."""
    if current == BACKUP_CODES:
        return []
    words = []
    if BACKUP_CODES in alternates:
        words.append(KEYWORD_BACKUP)
    if "email" in alternates and current != "email":
        words.append(KEYWORD_EMAIL)
    if reset_allowed:
        words.append(KEYWORD_RESET)
    return words


def _values(fields: Mapping[str, object]) -> _Fields:
    """Each value as printable ASCII on one line, cut to its field's limit."""
    return _Fields(
        {name: reply_message(value, FIELD_LIMITS.get(name, 64)) for name, value in fields.items()}
    )


def render(
    profile: PromptProfile,
    prompt: PromptName,
    fields: Mapping[str, object],
    words: Sequence[str] = (),
) -> str:
    """`prompt` in `profile`'s wording, offering `words`, at most max_prompt long."""
    return _fit(profile, profile.template(prompt), _values(fields), words)


def render_text(profile: PromptProfile, text: str, words: Sequence[str] = ()) -> str:
    """A prompt no template covers (an upstream OTP server's, a Duo explanation):
    the text as it is, with the words offered in the profile's wording."""
    return _fit(profile, "{prompt}{options}", _Fields(prompt=reply_message(text)), words)


def _fit(profile: PromptProfile, template: str, values: _Fields, words: Sequence[str]) -> str:
    limit = profile.max_prompt
    if words:
        offered = _values({"keywords": ", ".join(words)})
        offered.update({k: v for k, v in values.items() if k != "options"})
        values["options"] = profile.template("options").format_map(offered)
        whole = reply_message(template.format_map(values), UNCUT)
        if len(whole) <= limit:
            return whole
    values["options"] = ""
    return reply_message(template.format_map(values), limit)


def default_text(prompt: PromptName, fields: Mapping[str, object] | None = None) -> str:
    """The default profile's wording without options: what a factor puts in its
    result as the prompt's text (the engine renders it again for the client)."""
    return render(DEFAULT, prompt, fields or {})


class ClientPrompts:
    """Each client's resolved profile, built once per configuration."""

    def __init__(self, config: Config) -> None:
        named = config.prompt_profiles
        self._profiles = {
            client.name: resolve(client.prompts, named, client.max_prompt)
            for client in config.clients
        }

    def profile(self, client: str) -> PromptProfile:
        return self._profiles.get(client, DEFAULT)

    def cut(self, client: str, message: str | None) -> str | None:
        """Any Reply-Message to `client` (a reject's, an accept's) at its max_prompt."""
        if message is None:
            return None
        return reply_message(message, self.profile(client).max_prompt) or None
