"""What the user store holds, and its contract (`UserRepository`), independent of the
database behind it (SQLite in store/users.py, PostgreSQL in store/postgres_users.py).

Users are keyed by `core.identity.normalise` of their canonical identity (the one the
directory returned); every method normalises what it is given, so the key never
depends on the caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mfaproxy.config.multifactor import Method

ResetStatus = Literal["pending", "approved", "cleared"]

# Schema versions both stores' code reads (their migrations N are the same step): a store
# opened short of one (a repair before the re-key) reads without its column.
ENROLMENT_WINDOWS_VERSION = 5  # users.enrol_until
TRUST_VERSION = 6  # users.trust_not_before


@dataclass(frozen=True)
class ResetRequest:
    id: int
    user: str
    requested_at: float
    via: str  # who filed it: "radius" (the user at the prompt), "cli" (an operator)...
    status: ResetStatus
    decided_at: float | None


@dataclass(frozen=True)
class LockState:
    failures: int  # consecutive failures counted towards the lockout
    locked_until: float | None  # None unless a lockout is in force at `now`
    locked: bool


@dataclass(frozen=True)
class Reservation:
    """The answer to "may this user try a code now?", given and counted in one step."""

    granted: bool  # False: a lockout is in force, nothing was counted
    lock: LockState  # as left by the reservation (as found, when refused)

    @property
    def last(self) -> bool:
        """A failure of this attempt leaves the user locked out (it took the last try)."""
        return self.granted and self.lock.locked


@dataclass(frozen=True)
class UserRecord:
    """What `users show` prints; secrets are never part of it."""

    name: str
    method: Method | None
    configure_later: bool
    enrolled: frozenset[Method]  # methods with stored enrolment data ("totp": a secret)
    totp_last_step: int | None
    backup_codes_remaining: int
    failures: int
    locked_until: float | None
    last_reset: ResetRequest | None  # the most recent request, whatever its status
    created_at: float
    updated_at: float
    # Until when an operator allows this user to enrol inside the RADIUS flow
    # (`users allow-enrolment`); None when no window was opened or it was closed.
    enrol_until: float | None = None
    # No trusted reconnect rests on a second factor passed before this (core/trust.py):
    # set when the user's MFA is cleared or its method set, at a lockout, and by
    # `users forget-trust`.
    trust_not_before: float | None = None

    def enrolment_open(self, now: float) -> bool:
        return self.enrol_until is not None and now < self.enrol_until


class UserRepository(Protocol):
    """The contract of a durable user store. Every write is atomic and durable."""

    def get_user(self, user: str) -> UserRecord | None: ...
    def list_users(self) -> list[str]: ...
    def delete_user(self, user: str) -> bool: ...
    # Exact stored names, for repairs (`mfaproxy users collisions`): no normalisation.
    def stored_record(self, name: str) -> UserRecord | None: ...
    def delete_stored(self, name: str) -> bool: ...
    def schema_version(self) -> int: ...
    def set_method(
        self, user: str, method: Method | None, now: float, *, configure_later: bool = False
    ) -> None: ...
    def clear_mfa(self, user: str, now: float) -> bool: ...
    def set_totp_secret(self, user: str, secret: str, now: float) -> None: ...
    def get_totp_secret(self, user: str) -> str | None: ...
    def accept_totp_step(self, user: str, step: int) -> bool: ...
    def accept_yubikey_counter(self, user: str, counter: int) -> bool: ...
    def set_enrolment(
        self, user: str, method: Method, data: Mapping[str, Any], now: float
    ) -> None: ...
    def get_enrolment(self, user: str, method: Method) -> dict[str, Any] | None: ...
    def clear_enrolment(self, user: str, method: Method, now: float) -> bool: ...
    def replace_backup_codes(self, user: str, codes: Sequence[str], now: float) -> None: ...
    def consume_backup_code(self, user: str, code: str, now: float) -> bool: ...
    def request_reset(self, user: str, via: str, now: float) -> bool: ...
    def approve_reset(self, user: str, now: float) -> bool: ...
    def clear_reset(self, user: str, now: float) -> bool: ...
    def list_resets(self, status: ResetStatus | None = "pending") -> list[ResetRequest]: ...
    def lock_state(self, user: str, now: float) -> LockState: ...
    def record_failure(
        self, user: str, now: float, max_failures: int, lockout_seconds: float
    ) -> LockState: ...
    def reset_failures(self, user: str) -> None: ...
    def open_enrolment(self, user: str, until: float, now: float) -> None: ...
    def close_enrolment(self, user: str, now: float) -> bool: ...
    def reserve_attempt(
        self, user: str, now: float, max_failures: int, lockout_seconds: float
    ) -> Reservation: ...
    def release_attempt(self, user: str, now: float, max_failures: int) -> None: ...
    def revoke_trust(self, user: str, now: float) -> bool: ...
    def close(self) -> None: ...


def lock_view(failures: int, locked_until: float | None, now: float) -> LockState:
    """The lockout as seen at `now`: an expired lockout starts a fresh count."""
    if locked_until is not None and now >= locked_until:
        return LockState(0, None, False)
    return LockState(failures, locked_until, locked_until is not None)


def check_lockout_arguments(max_failures: int, lockout_seconds: float) -> None:
    if max_failures < 1 or lockout_seconds < 0:
        raise ValueError("max_failures must be >= 1 and lockout_seconds >= 0")


def reserved(
    failures: int,
    locked_until: float | None,
    now: float,
    max_failures: int,
    lockout_seconds: float,
) -> Reservation:
    """Reserve one attempt on a row holding (`failures`, `locked_until`).

    Refused while a lockout is in force. Otherwise the attempt is counted now, before
    any code is looked at, and the lockout starts with the attempt that reaches
    `max_failures` (so at most `max_failures` attempts are in flight or spent per
    lockout period, however many arrive at once). `release_attempt` gives back an
    attempt whose result was not the user's fault; a success resets the count.
    """
    view = lock_view(failures, locked_until, now)
    if view.locked:
        return Reservation(False, view)
    count, until = view.failures + 1, None
    if count >= max_failures and lockout_seconds > 0:
        until = now + lockout_seconds
    return Reservation(True, LockState(count, until, until is not None))


def released(
    failures: int, locked_until: float | None, now: float, max_failures: int
) -> LockState | None:
    """The row after giving back one reserved attempt; None when there is nothing to
    give back (no count, or the lockout it belonged to is over)."""
    view = lock_view(failures, locked_until, now)
    if view.failures == 0:
        return None
    count = view.failures - 1
    until = view.locked_until if count >= max_failures else None
    return LockState(count, until, until is not None)
