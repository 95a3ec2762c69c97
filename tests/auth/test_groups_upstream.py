"""Groups behind an upstream RADIUS server (a real FreeRADIUS), through the in-process
engine: without group_attribute the upstream gives no group data, so group and
administrator rules are unknown and the stricter outcome applies ("administrators
always need MFA" keeps applying, a group allow-list denies); with it, the Accept's
values are the groups, for the rules and for the reply-attribute mappings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfaproxy.core.answer import Answer, Outcome
from tests.auth.harness import Harness
from tests.support.freeradius import FreeRadiusServer, UserSpec

SECRET = "groups-upstream"
UPSTREAM = {
    "sam": UserSpec("sam-pw", reply={"Filter-Id": "vpn-users"}),
    "root": UserSpec("root-pw", reply={"Filter-Id": ["vpn-users", "mfa-admins"]}),
    "guest": UserSpec("guest-pw"),
}
POLICIES = {
    "login": {
        "policies": [
            {
                "name": "vpn-users-only",
                "rules": [{"type": "user_groups", "groups": ["vpn-users"]}],
                "action_when_matched": "continue",
                "action_when_not_matched": "access_denied",
            }
        ]
    },
    "mfa": {
        "default_action": "mfa_skipped",
        "policies": [
            {
                "name": "administrators-always",
                "rules": [{"type": "administrator"}],
                "action_when_matched": "mfa_required",
            }
        ],
    },
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer(UPSTREAM, secret=SECRET) as server:
        yield server


def overrides(upstream: FreeRadiusServer, **radius: Any) -> dict[str, Any]:
    server = {"host": upstream.host, "port": upstream.port, "secret": SECRET}
    return {
        "directory": {
            "backend": "radius",
            "radius": {"servers": [server], "timeout": 2, "retries": 1, **radius},
        },
        "access_policies": POLICIES,
        "replies": {
            "groups": [
                {"group": "mfa-admins", "attributes": {"Class": "admins"}},
                {"group": "VPN-Users", "attributes": {"Reply-Message": "welcome"}},
            ]
        },
    }


async def login(h: Harness, user: str) -> Answer:
    return await h.send(user, f"{user}-pw")


async def test_without_group_data_the_stricter_outcome_applies(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    async with Harness(tmp_path, overrides(upstream)) as h:
        for user in ("sam", "root", "guest"):
            answer = await login(h, user)
            # The login policy cannot know the groups: allow-list by group denies.
            assert (answer.outcome, answer.reason) == (Outcome.REJECT, "login_policy_denied")
            assert "vpn-users-only#0:user_groups" in h.last_audit["login_unknown_rules"]


async def test_without_group_data_administrators_still_need_mfa(
    tmp_path: Path, upstream: FreeRadiusServer
) -> None:
    only_mfa = overrides(upstream)
    only_mfa["access_policies"] = {"mfa": POLICIES["mfa"]}
    async with Harness(tmp_path, only_mfa) as h:
        h.enrol_totp("sam")
        answer = await login(h, "sam")  # not an administrator, but nobody can tell
        assert answer.outcome is Outcome.CHALLENGE
        assert (h.last_audit["mfa_action"], h.last_audit["mfa_definite"]) == (
            "mfa_required",
            False,
        )
        accepted = await h.send("sam", h.code("sam"), answer.state)
        assert accepted.outcome is Outcome.ACCEPT
        assert dict(accepted.attributes) == {}  # no group: no mapped attributes


async def test_group_attribute_gives_the_groups(tmp_path: Path, upstream: FreeRadiusServer) -> None:
    async with Harness(tmp_path, overrides(upstream, group_attribute="Filter-Id")) as h:
        sam = await login(h, "sam")  # in vpn-users, not an administrator: skipped
        assert (sam.outcome, sam.reason) == (Outcome.ACCEPT, "mfa_skipped")
        assert ("Reply-Message", "welcome") in sam.attributes
        assert ("Class", "admins") not in sam.attributes
        guest = await login(h, "guest")  # known to be in no group
        assert (guest.outcome, guest.reason) == (Outcome.REJECT, "login_policy_denied")
        assert h.last_audit["login_definite"] is True
        h.enrol_totp("root")
        root = await login(h, "root")  # an administrator: MFA
        assert root.outcome is Outcome.CHALLENGE
        done = await h.send("root", h.code("root"), root.state)
        assert done.outcome is Outcome.ACCEPT
        assert ("Class", "admins") in done.attributes
        assert ("Reply-Message", "welcome") in done.attributes
