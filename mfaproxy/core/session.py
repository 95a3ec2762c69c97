"""Challenge sessions as JSON-compatible values, so any state store can keep them, and
the State attribute that names one (RFC 2865 section 5.24).

A State is the unpadded base64url text of `STATE_RANDOM_BYTES` random octets: 256 bits
of entropy (192 or more is the project's floor, RFC 5080 section 2.1.1 asks for
unpredictable State), printable ASCII with no 0x00 octet, because C clients (radcli,
pam_radius) keep attributes as C strings and would cut it at the first NUL. Lookups
are exact: a State a client trimmed is refused, never matched by prefix.
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult, ReplyAttribute
from mfaproxy.core.second_factor import Stage

STATE_RANDOM_BYTES = 32
STATE_LENGTH = 43  # base64 of 32 octets, without the "=" padding
_STATE_SHAPE = re.compile(rb"[A-Za-z0-9_-]{%d}" % STATE_LENGTH)


def state_from_random(random: bytes) -> bytes:
    """The State for `random` (the caller draws it from `secrets`): one-to-one, so it
    carries all of the random octets' entropy."""
    if len(random) != STATE_RANDOM_BYTES:
        raise ValueError(f"a State needs {STATE_RANDOM_BYTES} random octets")
    return base64.urlsafe_b64encode(random).rstrip(b"=")


def is_well_formed_state(state: bytes) -> bool:
    """Whether `state` has the shape of a State we issue (length and alphabet)."""
    return _STATE_SHAPE.fullmatch(state) is not None


def session_key(state: bytes) -> str:
    """The state-store key of the session a State names."""
    return state.decode("ascii")


@dataclass(frozen=True)
class Session:
    user: str  # the user's identity (core/identity.py): what the MFA record is keyed on
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
    # The normalised typed name of the first round (realm removed): an answer must name
    # the same (an empty one, from an older version, matches nothing).
    login_key: str = ""
    # Inline enrolment: the method being enrolled (at VERIFY: once the address is
    # proven) and what let this login enrol (operator_window | email_code).
    enrol_method: str | None = None
    enrol_proof: str | None = None

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
        "groups": None if primary.groups is None else sorted(primary.groups),
        "email": primary.email,
        "mobile": primary.mobile,
        "identity": primary.identity,
        "reply_attributes": [[a.name, _value_to_json(a.value)] for a in primary.reply_attributes],
    }


def primary_from_json(data: dict[str, Any]) -> PrimaryResult:
    return PrimaryResult(
        PrimaryOutcome.ACCEPT,
        backend=str(data["backend"]),
        reason=str(data.get("reason", "")),
        groups=None if data.get("groups") is None else frozenset(data["groups"]),
        email=data.get("email"),
        mobile=data.get("mobile"),
        identity=data.get("identity"),
        reply_attributes=tuple(
            ReplyAttribute(str(name), _value_from_json(value))
            for name, value in data.get("reply_attributes", [])
        ),
    )
