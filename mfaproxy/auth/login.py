"""One login's second-factor context (`Login`), as the engine builds it after the primary
check or from the challenge session a later round answers, and what follows from it
alone: the address on file, the alternate ways the user can use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.config.schema import SecondFactorMode
from mfaproxy.core import second_factor as rules
from mfaproxy.core.primary import PrimaryResult
from mfaproxy.core.session import Session, primary_from_json
from mfaproxy.factors.base import FactorRequest, FactorUser
from mfaproxy.store.records import UserRecord

BACKUP_CODES = rules.BACKUP_CODES
EMAIL = "email"


@dataclass
class Login:
    """One request's second-factor context, as the flow fills it in."""

    request_id: str
    client: str
    nas: str
    user: FactorUser
    primary: PrimaryResult
    now: float
    client_ip: str | None
    audit: dict[str, Any] = field(default_factory=dict)
    # True once the user's response is being judged or a factor has said no: a store
    # failure after that is never turned into an Accept by `store_failmode: safe`.
    responded: bool = False
    # The RFC 5080 key of the request (see FactorRequest.request_key).
    request_key: str = ""
    # How the NAS takes the second factor: whether it can be sent a challenge.
    mode: SecondFactorMode = "challenge"
    # A member of multifactor.administrators.group (inline enrolment is refused them
    # unless configured).
    administrator: bool = False

    def factor_request(self) -> FactorRequest:
        return FactorRequest(self.user, self.client, self.client_ip, self.now, self.request_key)


@dataclass(frozen=True)
class Enrolling:
    """An inline enrolment in progress: the method it binds, what let it start."""

    method: str
    proof: str


def address_on_file(login: Login) -> bool:
    record = login.user.record
    return bool(login.user.email or (record and EMAIL in record.enrolled))


def alternates(config: MultifactorConfig, login: Login) -> list[str]:
    """The alternate ways this user can actually use: email only with an address on
    file, backup codes only while some are left (the prompt lists no dead ends)."""
    record = login.user.record
    usable: list[str] = []
    for way in config.alternate:
        if way == EMAIL and address_on_file(login):
            usable.append(way)
        if way == BACKUP_CODES and record is not None and record.backup_codes_remaining > 0:
            usable.append(way)
    return usable


def login_from_session(
    session: Session,
    request_id: str,
    client_ip: str | None,
    now: float,
    record: UserRecord | None,
    request_key: str = "",
) -> Login:
    primary = primary_from_json(session.primary)
    user = FactorUser(
        name=session.user,
        login_name=session.login_name,
        email=session.email,
        mobile=session.mobile,
        groups=primary.groups or frozenset(),
        record=record,
        login_key=session.login_key,
    )
    return Login(
        request_id,
        session.client,
        session.nas,
        user,
        primary,
        now,
        client_ip,
        request_key=request_key,
    )
