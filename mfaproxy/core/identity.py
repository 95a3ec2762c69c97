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
