"""Challenge sessions as JSON-compatible values, so any state store can keep them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult, ReplyAttribute
from mfaproxy.core.second_factor import Stage


@dataclass(frozen=True)
class Session:
    user: str  # normalised user name
    login_name: str  # User-Name as the NAS sent it
    client: str  # the NAS entry that received the challenge
    nas: str  # the NAS source address
    stage: Stage  # what the session waits for (core/second_factor.py)
    method: str
    pending: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    primary: dict[str, Any] = field(default_factory=dict)
    email: str | None = None
    mobile: str | None = None
    prompt: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "stage": self.stage.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(**{**data, "stage": Stage(data["stage"])})


def _value_to_json(value: str | int | bytes) -> Any:
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def _value_from_json(value: Any) -> str | int | bytes:
    if isinstance(value, dict):
        return bytes.fromhex(str(value["hex"]))
    if isinstance(value, str | int):
        return value
    raise ValueError(f"bad attribute value {value!r}")


def primary_to_json(primary: PrimaryResult) -> dict[str, Any]:
    """What the final Access-Accept needs from the primary check, kept across rounds."""
    return {
        "backend": primary.backend,
        "reason": primary.reason,
        "groups": sorted(primary.groups),
        "email": primary.email,
        "mobile": primary.mobile,
        "user_id": primary.user_id,
        "reply_attributes": [[a.name, _value_to_json(a.value)] for a in primary.reply_attributes],
    }


def primary_from_json(data: dict[str, Any]) -> PrimaryResult:
    return PrimaryResult(
        PrimaryOutcome.ACCEPT,
        backend=str(data["backend"]),
        reason=str(data.get("reason", "")),
        groups=frozenset(data.get("groups", [])),
        email=data.get("email"),
        mobile=data.get("mobile"),
        user_id=data.get("user_id"),
        reply_attributes=tuple(
            ReplyAttribute(str(name), _value_from_json(value))
            for name, value in data.get("reply_attributes", [])
        ),
    )
