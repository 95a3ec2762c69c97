"""A reset asked for at the prompt (`reset`): recorded, mailed to the administrators,
and the user told truthfully which of the two happened (issue 12)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import structlog

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.core import second_factor as rules
from mfaproxy.errors import UpstreamError
from mfaproxy.factors.base import FactorServices

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ResetAsked:
    """Who asked, from where: what the administrators' email says."""

    user: str  # the store key
    login_name: str  # as typed
    client: str
    nas: str
    request_id: str
    now: float


class Resets:
    def __init__(self, config: MultifactorConfig, services: FactorServices) -> None:
        self.config = config
        self.services = services

    def recipients(self) -> list[str]:
        if self.config.send_reset_email_to == "specific_email":
            return [self.config.specific_email] if self.config.specific_email else []
        return list(self.config.administrators.emails)

    async def request(self, asked: ResetAsked) -> tuple[str, str]:
        """File the request; (audit outcome, what to tell the user)."""
        user, now = asked.user, asked.now
        created = await self.services.users.run(lambda s: s.request_reset(user, "radius", now))
        if not created:
            return "reset_pending", rules.MSG_RESET_PENDING
        if await self._mail(asked):
            return "reset_emailed", rules.MSG_RESET_EMAILED
        return "reset_recorded", rules.MSG_RESET_RECORDED

    async def _mail(self, asked: ResetAsked) -> bool:
        """Mail the request to the administrators; True when the mail server took it."""
        recipients = self.recipients()
        if self.services.mail is None or not recipients:
            log.warning("reset_email_not_sent", user=asked.user, reason="no smtp or recipients")
            return False
        body = (
            f"User {asked.login_name} asked for a reset of their multifactor "
            f"authentication from network device {asked.client} ({asked.nas}).\n\n"
            f"Approve it (this clears the user's second factor; they enrol again):\n"
            f"    mfaproxy users resets approve {shell_word(asked.user)}\n"
            f"Or dismiss it:\n    mfaproxy users resets clear {shell_word(asked.user)}\n\n"
            f"Request id: {asked.request_id}\n"
        )
        try:
            await self.services.mail.send(recipients, f"MFA reset requested by {asked.user}", body)
        except UpstreamError:
            log.error("reset_email_failed", user=asked.user)
            return False
        return True


def shell_word(name: str) -> str:
    """`name` as one argument of a command an administrator pastes into a shell: the
    name comes from the directory (or, for an upstream RADIUS server, from what the
    user typed), so `x;echo pwned` or `$(id)` must stay a name, and an apostrophe must not
    break the line; after `--` when it would read as an option (`-rf`)."""
    quoted = shlex.quote(name)
    return f"-- {quoted}" if name.startswith("-") else quoted
