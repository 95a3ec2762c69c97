"""One user identity: the one user-name normaliser, the checks a typed User-Name must
pass, and the realm rules that map `EXAMPLE\\sam`, `sam@example.org` and `sam` to one
user. Pure: no I/O.

Every place that compares user names (the user store, the users file, policy `users`
rules, challenge binding, the CLI) compares `normalise(name)`; nothing else.

Why strip, NFKC, casefold: directories match names more loosely than byte equality.
OpenLDAP's caseIgnoreMatch prepares both sides (RFC 4518: compatibility forms, case,
insignificant spaces) and the users file compares casefolded keys, so `sam` spelt with
a full-width s (U+FF53) or a long s (U+017F), and `STRASSE` for `Stra\u00dfe`, name
the same user as `sam` and `strasse` there. A key that kept those apart would give
one user several MFA records. NFKC runs again after the fold because folding can leave
a string that is not in NFKC (Unicode's "NFKC_Casefold" is the same idea, UAX #31
section 5). Unicode's stability policies keep NFKC and case folding of assigned
characters fixed across versions, so a stored key stays the key of its user after a
Python upgrade; typed names with unassigned code points are refused (below), so no key
depends on a future version.

A typed User-Name is refused before anything else looks at it when it is blank, has
leading or trailing white space, control or format characters (category C, line and
paragraph separators, including zero-width characters that LDAP matching drops), the
replacement character of an undecodable octet, or is not in NFKC. A NAS sends what the
user typed; such names are either mistakes or attempts at an alias, and a reason of
their own in the audit log tells them apart from a wrong password.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mfaproxy.config.directory import RealmRule

NameProblem = Literal[
    "user_name_blank",
    "user_name_whitespace",
    "user_name_control_characters",
    "user_name_not_utf8",
    "user_name_not_canonical",
]

# The codec decodes User-Name with errors="replace": this marks octets that were no UTF-8.
REPLACEMENT_CHARACTER = "\ufffd"
_SEPARATORS = frozenset({"Zl", "Zp"})


def normalise(name: str) -> str:
    """The key a user name is compared and stored by: strip, NFKC, casefold (then NFKC
    again, and strip, since the fold and NFKC can each undo the other's form)."""
    text = unicodedata.normalize("NFKC", name.strip())
    return unicodedata.normalize("NFKC", text.casefold()).strip()


def _is_control(char: str) -> bool:
    category = unicodedata.category(char)
    # Cc control, Cf format (zero-width, bidi overrides), Cs surrogates, Co private use,
    # Cn unassigned; Zl and Zp break lines.
    return category[0] == "C" or category in _SEPARATORS


def name_problem(typed: str) -> NameProblem | None:
    """Why a typed User-Name is refused, or None when it may be used."""
    if not typed.strip():
        return "user_name_blank"
    if typed != typed.strip():
        return "user_name_whitespace"
    if any(_is_control(char) for char in typed):
        return "user_name_control_characters"
    if REPLACEMENT_CHARACTER in typed:
        return "user_name_not_utf8"
    if unicodedata.normalize("NFKC", typed) != typed:
        return "user_name_not_canonical"
    return None


def identity_key(name: str) -> str:
    """`normalise(name)`, refusing what no user can be keyed by (an empty result)."""
    key = normalise(name)
    if not key:
        raise ValueError("user name is empty")
    return key


# --------------------------------------------------------------------------- realms


@dataclass(frozen=True)
class LoginName:
    """A typed User-Name read through the realm rules (FreeRADIUS's realm module)."""

    typed: str  # as the NAS sent it
    user: str  # without a configured realm, as typed otherwise
    realm: str | None  # the configured realm it named, as typed; None without one
    # What the directory is asked about: `user` when the matching rule strips the realm
    # (the default), the name as typed otherwise.
    directory_name: str

    @property
    def key(self) -> str:
        """The normalised typed name: `sam` for `EXAMPLE\\sam`, `sam@example.org` and
        `SAM` alike. Before the directory answered, the only key there is."""
        return normalise(self.user)


def _split(name: str, rule: RealmRule) -> tuple[str, str] | None:
    """(user, realm) when `name` is in `rule`'s form with one of its realms."""
    if rule.format == "prefix":
        realm, sep, user = name.partition(rule.separator)
    else:
        user, sep, realm = name.rpartition(rule.separator)
    if not sep or not user or normalise(realm) not in {normalise(r) for r in rule.realms}:
        return None
    return user, realm


def read_login_name(typed: str, rules: Sequence[RealmRule]) -> LoginName:
    """Apply the first realm rule whose form and realm match; names in any other realm
    (or none) are kept whole, so the directory decides about them."""
    for rule in rules:
        parts = _split(typed, rule)
        if parts is not None:
            user, realm = parts
            return LoginName(typed, user, realm, user if rule.strip else typed)
    return LoginName(typed, typed, None, typed)


def check_login_name(typed: str, rules: Sequence[RealmRule]) -> LoginName | NameProblem:
    """The typed User-Name read through the realm rules, or why it is refused. The
    user part must pass the checks too: `EXAMPLE\\ sam` hides a space behind a realm."""
    problem = name_problem(typed)
    if problem is not None:
        return problem
    login = read_login_name(typed, rules)
    return name_problem(login.user) or login


def directory_identity(name: str, rules: Sequence[RealmRule]) -> str | None:
    """The identity a directory answered with (an upstream RADIUS server's User-Name),
    read like a typed name: None when it is no usable name (blank, control characters,
    undecodable). Padding and compatibility forms are the directory's own spelling and
    are normalised away: the directory is the authority on who the user is."""
    problem = name_problem(name.strip())
    if problem in ("user_name_blank", "user_name_control_characters", "user_name_not_utf8"):
        return None
    return normalise(read_login_name(name.strip(), rules).user) or None


# --------------------------------------------------------------------------- DNs

_DN_SPECIAL = frozenset(',+"\\<>;=')


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split at `separator` where it is not escaped by a backslash (RFC 4514 2.4)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    """RFC 4514 section 3: `\\` then a special character, or two hex digits (UTF-8)."""
    raw, index = bytearray(), 0
    while index < len(value):
        char = value[index]
        pair = value[index + 1 : index + 3]
        if char == "\\" and len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            raw += bytes.fromhex(pair)
            index += 3
        elif char == "\\" and index + 1 < len(value):
            raw += value[index + 1].encode()
            index += 2
        else:
            raw += char.encode()
            index += 1
    return raw.decode("utf-8", errors="replace")


def _escape(value: str) -> str:
    escaped = "".join(f"\\{c}" if c in _DN_SPECIAL else c for c in value)
    return "\\" + escaped if escaped.startswith("#") else escaped


def normalise_dn(dn: str) -> str:
    """One spelling of a distinguished name, for comparing DNs: attribute types and
    values case-folded like names, the AVAs of a multi-valued RDN sorted, escapes and
    spaces made canonical (`CN=VPN Users, OU=Groups,dc=Example` and
    `cn=vpn users,ou=groups,dc=example` are one DN). Types are compared by name, not by
    OID. A string that is not a DN is normalised as a name."""
    rdns = []
    for rdn in _split_unescaped(dn, ","):
        avas = []
        for ava in _split_unescaped(rdn, "+"):
            kind, sep, value = ava.partition("=")
            if not sep or not kind.strip():
                return normalise(dn)
            avas.append(f"{kind.strip().casefold()}={_escape(normalise(_unescape(value)))}")
        rdns.append("+".join(sorted(avas)))
    return ",".join(rdns)
