"""The interface every second-factor method implements, and what it may use.

A factor never talks RADIUS and never decides policy. The engine asks it to `begin` a
challenge (send an email, ask Duo who the user is), to `check` what the user typed (a
code, or a word such as `push`), and, for users who may enrol inside the RADIUS flow,
to `begin_enrolment` and `finish_enrolment`. Each answer is a `FactorResult`; the
engine turns it into Access-Accept, Access-Challenge or Access-Reject and counts
failures. Whatever a factor must remember between two rounds goes into `pending`
(kept by the engine in the challenge session, never sent to the NAS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mfaproxy.core.factor_result import FactorResult, Verdict
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.records import UserRecord
from mfaproxy.store.state import StateStore

__all__ = [
    "Factor",
    "FactorRequest",
    "FactorResult",
    "FactorServices",
    "FactorUser",
    "MailSender",
    "Verdict",
]


@dataclass(frozen=True)
class FactorUser:
    # The user's identity (core/identity.py), as the directory returned it: the user
    # store key, and the name sent to Duo and to an OTP server.
    name: str
    # The User-Name as the NAS sent it (for messages to people only).
    login_name: str
    email: str | None = None
    mobile: str | None = None
    groups: frozenset[str] = frozenset()
    # The user's MFA record; None when the store has never seen the user.
    record: UserRecord | None = None
    # The typed name normalised (realm removed), which a challenge answer must repeat.
    login_key: str = ""


@dataclass(frozen=True)
class FactorRequest:
    user: FactorUser
    # The NAS's configured name.
    client: str
    # The end user's address as the NAS reports it (Calling-Station-Id), if any.
    client_ip: str | None
    # Unix time; factors read no clock of their own.
    now: float
    # The RADIUS request this check answers (RFC 5080 key: NAS address and port,
    # Identifier, Request Authenticator), so that a retransmission that reaches another
    # node of a cluster continues a pending out-of-band check instead of starting a
    # second one. Empty when unknown: such a request never continues anything.
    request_key: str = ""


class MailSender(Protocol):
    """Sends one plain-text email; raises mfaproxy.errors.UpstreamUnavailable on failure."""

    async def send(self, to: list[str], subject: str, body: str) -> None: ...


@dataclass(frozen=True)
class FactorServices:
    """What a factor may use. Built once per configuration by the server."""

    users: AsyncUserStore
    state: StateStore
    mail: MailSender | None
    # pyrad Dictionary, for factors that speak RADIUS upstream.
    dictionary: Any
    # 32-byte master key (store/crypto.py); derive sub-keys with crypto.derive_key.
    master_key: bytes


class Factor(Protocol):
    # The configuration name: totp, yubikey, email, sms, duo, radius.
    name: str
    # Length of a typed code when fixed (TOTP digits, 44 for a YubiKey OTP), so append
    # mode can split `password123456` without a delimiter; None when it varies.
    code_length: int | None
    # Words the user may type instead of a code (`push`, `phone` for Duo).
    keywords: frozenset[str]

    def is_enrolled(self, user: FactorUser) -> bool:
        """Whether the factor can be used for this user now, without enrolment."""
        ...

    def looks_like_code(self, text: str) -> bool:
        """Whether `text` has the shape of this method's code, so append mode can split
        `password,code` (or `password` + code of `code_length`) without guessing."""
        ...

    def can_enrol_inline(self, user: FactorUser) -> bool:
        """Whether `begin_enrolment` can work for this user (a text prompt can carry it)."""
        ...

    async def begin(self, request: FactorRequest) -> FactorResult:
        """Start a challenge: usually CHALLENGE with the prompt (after sending a code);
        ACCEPT or REJECT when the factor decides at once (a Duo bypass or deny)."""
        ...

    async def check(
        self, request: FactorRequest, response: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        """Verify what the user typed (`response`). `pending` is from `begin` (empty in append mode,
        where `begin` is not called). Another CHALLENGE asks for another round."""
        ...

    async def begin_enrolment(self, request: FactorRequest) -> FactorResult:
        """First step of inline enrolment: CHALLENGE with instructions, or REJECT."""
        ...

    async def finish_enrolment(
        self, request: FactorRequest, response: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        """Check the user's first code and store the enrolment on ACCEPT."""
        ...

    async def close(self) -> None: ...
