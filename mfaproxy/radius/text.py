"""The one rule for text mfaproxy puts in a Reply-Message (RFC 2865 section 5.18).

Every prompt and message a NAS shows comes through `reply_message`: our own prompts,
what a directory value, Duo or an upstream OTP server contributed, and the configured
accept and reject messages (checked at load). Plain printable ASCII, because NAS
firmware and C clients display anything else unpredictably; one line, because many
VPN portals show only one; at most one attribute (253 octets).
"""

from __future__ import annotations

from mfaproxy.radius.constants import MAX_STRING_OCTETS

ELLIPSIS = "..."


def reply_message(text: object, limit: int = MAX_STRING_OCTETS) -> str:
    """`text` as printable ASCII on one line, at most `limit` characters.

    Control characters (line breaks and tabs included) become spaces and runs of
    whitespace one space; any other non-ASCII character becomes `?`. A longer text is
    cut and ends in `...`, so a reader can tell it was cut.
    """
    cleaned = "".join(
        c if " " <= c <= "~" else (" " if c.isspace() or not c.isprintable() else "?")
        for c in str(text)
    )
    flat = " ".join(cleaned.split())
    if len(flat) <= limit:
        return flat
    if limit <= len(ELLIPSIS):
        return flat[:limit].rstrip()  # a cut may end on the space between two words
    return flat[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def fits_reply_message(text: str) -> bool:
    """True when `reply_message` would send `text` unchanged."""
    return reply_message(text) == text
