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

from mfaproxy.config.prompts import PromptName
from mfaproxy.core.prompts import default_text


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
    # Which prompt of a prompt profile (config/prompts.py) `prompt` is, and its fields,
    # so the engine words it for the client's NAS; None: `prompt` is shown as it is.
    template: PromptName | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def accept(reason: str = "ok") -> FactorResult:
        return FactorResult(Verdict.ACCEPT, reason)

    @staticmethod
    def reject(reason: str, counts_as_failure: bool = True) -> FactorResult:
        return FactorResult(Verdict.REJECT, reason, counts_as_failure=counts_as_failure)

    @staticmethod
    def challenge(
        prompt: str,
        pending: Mapping[str, Any] | None = None,
        reason: str = "challenge",
        *,
        template: PromptName | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> FactorResult:
        return FactorResult(
            Verdict.CHALLENGE,
            reason,
            prompt=prompt,
            pending=dict(pending or {}),
            template=template,
            fields=dict(fields or {}),
        )

    @staticmethod
    def prompted(
        template: PromptName,
        fields: Mapping[str, str] | None = None,
        pending: Mapping[str, Any] | None = None,
        reason: str = "challenge",
    ) -> FactorResult:
        """A CHALLENGE with the profile prompt `template`; the text is the default
        profile's wording (core/prompts.py words it for the client)."""
        text = default_text(template, fields)
        return FactorResult.challenge(text, pending, reason, template=template, fields=fields)

    @staticmethod
    def unavailable(reason: str = "unreachable") -> FactorResult:
        return FactorResult(Verdict.UNAVAILABLE, reason, counts_as_failure=False)

    @property
    def is_failure(self) -> bool:
        """Whether this result counts against the user's lockout budget."""
        return self.verdict is Verdict.REJECT and self.counts_as_failure
