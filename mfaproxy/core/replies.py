"""Reply attributes for an Access-Accept, from configuration and directory groups. Pure."""

from __future__ import annotations

from typing import Any

from mfaproxy.config.schema import AttributeValue, RepliesConfig
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.groups import matching
from mfaproxy.core.primary import PrimaryResult


def _expand(attributes: dict[str, AttributeValue]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, value in attributes.items():
        values = value if isinstance(value, list) else [value]
        out.extend((name, v) for v in values)
    return out


def accept_attributes(config: RepliesConfig, primary: PrimaryResult) -> list[tuple[str, Any]]:
    """Global attributes, then each matching group's in configuration order, then the
    attributes an upstream RADIUS server returned that the operator passes through.

    Groups compare as core/groups.py says (names normalised, DNs as DNs): a mismatch in
    case would silently deny a VPN role. A backend without group data maps none.
    """
    groups = primary.groups or frozenset()
    out = _expand(config.attributes)
    for mapping in config.groups:
        if matching(groups, [mapping.group]):
            out.extend(_expand(mapping.attributes))
    out.extend((attr.name, attr.value) for attr in primary.reply_attributes)
    return out


def accept(config: RepliesConfig, primary: PrimaryResult, reason: str) -> Answer:
    """The Access-Accept for a user whose checks passed, with their reply attributes."""
    attributes = tuple(accept_attributes(config, primary))
    return Answer(Outcome.ACCEPT, reason, config.accept_message, attributes)


def reject(config: RepliesConfig, reason: str, message: str | None = None) -> Answer:
    """An Access-Reject; `message` (shown to the user) defaults to the configured one."""
    return Answer(Outcome.REJECT, reason, message or config.reject_message)
