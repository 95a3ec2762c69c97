"""The `multifactor.inline_enrolment` section: who may bind a new authenticator inside
the RADIUS flow, where knowing the password is otherwise all it takes (issue 10, item 8).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mfaproxy.config.base import Strict
from mfaproxy.config.policies import RangeItem

# operator_window: an operator opened a window for this user (`users allow-enrolment`).
# email_code: a one-time code sent to the address on file was typed back first.
EnrolmentProof = Literal["operator_window", "email_code"]


class InlineEnrolmentConfig(Strict):
    # What lets a user enrol inside the RADIUS flow (any one of them); empty: nobody,
    # users are enrolled with the CLI only.
    allow: list[EnrolmentProof] = Field(
        default_factory=lambda: list[EnrolmentProof](["operator_window"])
    )
    # When set, inline enrolment only from these networks, matched on `network_source`
    # (the end user's address as the NAS reports it, or the NAS's own address). A
    # request without a usable address does not match.
    networks: list[RangeItem] = Field(default_factory=list)
    network_source: Literal["calling_station_id", "client_address"] = "calling_station_id"
    # Members of multifactor.administrators.group never enrol inline unless this is on.
    administrators: bool = False
