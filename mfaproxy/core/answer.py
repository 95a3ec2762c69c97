"""What the flow decides to send back: pure values, no packet encoding."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    # Short machine-readable reason: a metric label and the audit `reason` field.
    reason: str
    reply_message: str | None = None
    attributes: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    state: bytes | None = None
