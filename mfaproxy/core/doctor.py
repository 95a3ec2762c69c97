"""`mfaproxy doctor`'s results: one line per check of a configured dependency.

Each dependency's module knows how to check itself (directory/ldap_doctor.py, the RADIUS
client's Status-Server, the SMTP sender, the Duo, Twilio and YubiCloud clients, the
stores); cli/doctor.py picks the checks a configuration needs and prints them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.Enum):
    PASS = "pass"  # noqa: S105 (a status word, not a password)
    FAIL = "FAIL"
    SKIP = "skip"  # not checked: nothing configured for it, or it needs input not given


@dataclass(frozen=True)
class Check:
    service: str  # what is checked: "ldap ldap://dc1:389", "smtp smtp.example.com:587"
    step: str  # which part of it: "connect", "StartTLS", "service bind", ...
    status: Status
    detail: str  # why it passed, failed or was skipped (never a secret)

    @classmethod
    def passed(cls, service: str, step: str, detail: str) -> Check:
        return cls(service, step, Status.PASS, detail)

    @classmethod
    def failed(cls, service: str, step: str, detail: str) -> Check:
        return cls(service, step, Status.FAIL, detail)

    @classmethod
    def skipped(cls, service: str, step: str, detail: str) -> Check:
        return cls(service, step, Status.SKIP, detail)

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAIL

    def line(self) -> str:
        return f"{self.status.value:<4}  {self.service}: {self.step}: {self.detail}"
