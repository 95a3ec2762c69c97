"""The facts the enrolment gate (core/second_factor.enrolment_gate) is decided on, read
from the login: the operator's window, the address on file, the administrator flag, and
where the request comes from (multifactor.inline_enrolment)."""

from __future__ import annotations

from mfaproxy.config.enrolment import InlineEnrolmentConfig
from mfaproxy.core.second_factor import EnrolmentFacts, EnrolmentGate, enrolment_gate
from mfaproxy.radius.addresses import parse_ip
from mfaproxy.store.records import UserRecord


def from_allowed_network(
    settings: InlineEnrolmentConfig, calling_station_id: str | None, nas_address: str
) -> bool:
    """True without configured networks; else the address named by `network_source`
    must be an IP inside one of them (a MAC address or no attribute: no match)."""
    if not settings.networks:
        return True
    text = calling_station_id if settings.network_source == "calling_station_id" else nas_address
    address = parse_ip(text)
    return address is not None and any(address in network for network in settings.networks)


def gate_for(
    settings: InlineEnrolmentConfig,
    record: UserRecord | None,
    now: float,
    *,
    email_on_file: bool,
    administrator: bool,
    calling_station_id: str | None,
    nas_address: str,
) -> tuple[EnrolmentGate, str]:
    facts = EnrolmentFacts(
        window_open=record is not None and record.enrolment_open(now),
        has_email=email_on_file,
        administrator=administrator,
        from_allowed_network=from_allowed_network(settings, calling_station_id, nas_address),
    )
    return enrolment_gate(settings.allow, settings.administrators, facts)
