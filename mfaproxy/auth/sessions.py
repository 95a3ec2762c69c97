"""Challenge sessions in the state store: built from a login, stored under a new State
(RFC 2865 section 5.24) with the user's oldest open one beyond
`multifactor.challenge.max_open_per_user` retired, and the session that asks again
after a wrong code."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mfaproxy.auth.login import Login
from mfaproxy.config.multifactor import ChallengeConfig
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.second_factor import Round, Stage, Step
from mfaproxy.core.session import (
    STATE_RANDOM_BYTES,
    Session,
    primary_to_json,
    session_key,
    state_from_random,
)
from mfaproxy.observability import metrics
from mfaproxy.radius.text import reply_message
from mfaproxy.store.state import StateStore

CHALLENGES = "challenge"


def new_session(
    login: Login, stage: Stage, method: str, pending: Mapping[str, Any], prompt: str
) -> Session:
    return Session(
        user=login.user.name,
        login_name=login.user.login_name,
        client=login.client,
        nas=login.nas,
        stage=stage,
        method=method,
        pending=dict(pending),
        attempts=0,
        primary=primary_to_json(login.primary),
        email=login.user.email,
        mobile=login.user.mobile,
        prompt=prompt,
        login_key=login.user.login_key,
    )


async def challenge(
    state: StateStore,
    settings: ChallengeConfig,
    login: Login,
    session: Session,
    prompt: str,
    reason: str,
) -> Answer:
    """Store the session under a new State; the user's oldest open session beyond
    `max_open_per_user` is retired (its State becomes unknown)."""
    issued = state_from_random(secrets.token_bytes(STATE_RANDOM_BYTES))
    retired = await state.put_bounded(
        CHALLENGES,
        session_key(issued),
        session.to_json(),
        settings.timeout_seconds,
        login.now,
        group=login.user.name,
        limit=settings.max_open_per_user,
    )
    if retired:
        metrics.CHALLENGES_RETIRED.inc(len(retired))
    return Answer(Outcome.CHALLENGE, reason, reply_message=reply_message(prompt), state=issued)


def retry_session(
    login: Login, step: Step, at: Round, previous: Session | None, backup_prompt: str
) -> Session:
    """The session that asks again: the one answered, unless the response moved the
    login to another stage (a backup code typed at a code prompt: `backup_prompt`, in
    the NAS's wording)."""
    if previous is not None and previous.stage is step.stage:
        return replace(previous, attempts=step.attempts)
    assert step.stage is Stage.BACKUP  # the only check judged outside its session
    backup = new_session(login, Stage.BACKUP, at.method, {}, backup_prompt)
    return replace(backup, attempts=step.attempts)
