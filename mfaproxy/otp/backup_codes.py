"""Backup codes: one-time recovery codes a user keeps on paper.

A code is 16 symbols of Crockford's base32 alphabet (https://www.crockford.com/base32.html),
so 16 x 5 = 80 bits of entropy, printed as ``xxxx-xxxx-xxxx-xxxx``. When typed back,
case, dashes and spaces are ignored and the look-alikes Crockford maps (i and l to 1,
o to 0) are accepted, so a code read off paper is hard to get wrong.

Codes are stored as HMAC-SHA-256 under a server pepper derived from the master key.
DESIGN.md allows this for random codes of 80 bits or more: a slow password hash such as
argon2 exists to protect low-entropy human secrets, and would cost ~150 ms of CPU per
attempt on the event loop, while guessing an 80-bit code is infeasible even with the
pepper. Without the pepper (a stolen database alone) the hashes cannot even be tested.
The user name is part of the MAC input, so a hash copied to another user's rows is
useless there.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
CODE_SYMBOLS = 16  # 16 symbols x log2(32) = 80 bits
GROUP = 4
PEPPER_INFO = b"mfaproxy backup codes"
_CONFUSABLES = str.maketrans({"i": "1", "l": "1", "o": "0"})
_IGNORED = str.maketrans("", "", "- \t\r\n")
_MAC_CONTEXT = b"mfaproxy backup code v1\x00"


class BackupCodeSettings(BaseModel):
    """`multifactor.backup_codes` in the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=10, ge=1, le=100)


def generate_codes(count: int = 10) -> list[str]:
    """`count` distinct fresh codes, formatted for display (``xxxx-xxxx-xxxx-xxxx``)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    codes: set[str] = set()
    while len(codes) < count:  # a repeat has probability ~2**-80; the loop just rules it out
        codes.add("".join(secrets.choice(ALPHABET) for _ in range(CODE_SYMBOLS)))
    return [format_code(code) for code in sorted(codes)]


def format_code(code: str) -> str:
    """Group a canonical code in fours: ``abcd-efgh-jkmn-pqrs``."""
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def normalise_code(text: str) -> str | None:
    """The canonical 16 symbols of a typed code, or None when `text` is not a code."""
    canonical = text.lower().translate(_IGNORED).translate(_CONFUSABLES)
    if len(canonical) != CODE_SYMBOLS or not all(ch in ALPHABET for ch in canonical):
        return None
    return canonical


def looks_like_backup_code(text: str) -> bool:
    """True when `text` has the shape of a backup code (a 6 or 8 digit OTP never does)."""
    return normalise_code(text) is not None


def derive_pepper(master_key: bytes) -> bytes:
    """The backup-code MAC key: HKDF-SHA-256 (RFC 5869) of the master key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PEPPER_INFO)
    return hkdf.derive(master_key)


class BackupCodeHasher:
    """Turns a (user, typed code) pair into the value stored and looked up in the store."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 32:
            raise ValueError("pepper must be at least 32 bytes")
        self._pepper = pepper

    @classmethod
    def from_master_key(cls, master_key: bytes) -> BackupCodeHasher:
        return cls(derive_pepper(master_key))

    def digest(self, user: str, code: str) -> bytes | None:
        """HMAC-SHA-256 of the normalised code for `user`; None if `code` is not a code.

        `user` must already be the normalised user name the store keys rows by.
        """
        canonical = normalise_code(code)
        if canonical is None:
            return None
        message = _MAC_CONTEXT + user.encode("utf-8") + b"\x00" + canonical.encode("ascii")
        return hmac.new(self._pepper, message, hashlib.sha256).digest()
