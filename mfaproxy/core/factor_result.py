"""What a second-factor method answers for one round: pure values, so the decisions on
them (core/second_factor.py) need nothing from the factors' I/O.

The factors (factors/base.py re-exports these) produce a `FactorResult`; the state
machine turns it into the next step of the login.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Verdict(enum.Enum):
    ACCEPT = "accept"  # the factor passed
    REJECT = "reject"  # wrong code, denied push, replay...
    CHALLENGE = "challenge"  # ask the user (again): `prompt` is shown, `pending` kept
    UNAVAILABLE = "unavailable"  # the service behind the factor did not answer


@dataclass(frozen=True)
class FactorResult:
    verdict: Verdict
    # Short, bounded label for metrics and the audit log (`code_ok`, `bad_code`,
    # `replayed`, `push_denied`, `unreachable`...). Never contains the code itself.
    reason: str
    prompt: str | None = None
    pending: Mapping[str, Any] = field(default_factory=dict)
    # A REJECT that is not the user's fault (an expired code, a flood limit) does not
    # count towards the lockout.
    counts_as_failure: bool = True

    @staticmethod
    def accept(reason: str = "ok") -> FactorResult:
        return FactorResult(Verdict.ACCEPT, reason)

    @staticmethod
    def reject(reason: str, counts_as_failure: bool = True) -> FactorResult:
        return FactorResult(Verdict.REJECT, reason, counts_as_failure=counts_as_failure)

    @staticmethod
    def challenge(
        prompt: str, pending: Mapping[str, Any] | None = None, reason: str = "challenge"
    ) -> FactorResult:
        return FactorResult(Verdict.CHALLENGE, reason, prompt=prompt, pending=dict(pending or {}))

    @staticmethod
    def unavailable(reason: str = "unreachable") -> FactorResult:
        return FactorResult(Verdict.UNAVAILABLE, reason, counts_as_failure=False)

    @property
    def is_failure(self) -> bool:
        """Whether this result counts against the user's lockout budget."""
        return self.verdict is Verdict.REJECT and self.counts_as_failure
