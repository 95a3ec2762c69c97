"""One second-factor check as an atomic attempt (issue 10, finding 3).

Before any factor looks at what a user typed, `AttemptGate.open`:

1. takes the user's lease: a reservation of one in the shared state store (memory, or
   Redis across nodes) for `multifactor.lockout.check_lease_seconds`. Checks for one
   user are serialised across workers and nodes; a second check while one runs is
   refused (`user_busy`), never queued, so a burst cannot tie up workers either.
   Why a lease in the state store and not the user store's row lock: SQLite has no row
   locks (BEGIN IMMEDIATE locks the whole file for every user), and a PostgreSQL row
   lock would hold a transaction and a pooled connection open across the factor's
   network wait (a Duo push: up to a minute).
2. reserves one event in the NAS's failure budget (`client_failures_per_minute`),
   checked and counted in one state-store call;
3. reserves one event in the user's daily budget (`max_failures_per_day`, a sliding
   day in the state store, checked and counted in one call): lockouts end, this does
   not, so a password holder cannot guess codes at `max_failures` per lockout forever;
4. reserves one attempt in the user's lockout budget, answered and counted in one
   user-store transaction (records.reserved): refused while a lockout is in force,
   and the attempt that reaches `max_failures` starts the lockout.

An out-of-band check (a Duo push: `nas_budget=False`) reserves no NAS event up front:
it cannot be guessed, and while it waits on its user it is no failure yet, so 60
pushes pending behind one VPN gateway must not throttle every other login behind it;
its failure (denied, ignored) is counted in the NAS budget when it happens. The user's
lease and lockout budget are reserved as for any check.

`settle` then gives back what the result did not cost: on success the user's count is
reset and the NAS event released; a result that is not the user's fault (an
unavailable service, an expired code, another round) gives both back; a failure keeps
both. `close` drops the lease. So however many answers arrive at once, at most
`max_failures` codes are checked per lockout period.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.core import second_factor as rules
from mfaproxy.core.factor_result import FactorResult, Verdict
from mfaproxy.core.second_factor import Step, StepKind
from mfaproxy.errors import UpstreamError
from mfaproxy.factors.base import FactorServices
from mfaproxy.store.records import Reservation

CLIENT_FAILURES = "client_failures"
USER_FAILURES = "user_failures"  # the daily budget of a user (max_failures_per_day)
LEASES = "check_lease"
NAS_WINDOW = 60.0  # client_failures_per_minute
USER_WINDOW = 86400.0  # max_failures_per_day
UNRESERVED = ""  # the NAS event of an attempt that reserved none (nas_budget=False)
MSG_BUSY = "Another sign-in of yours is being checked. Try again in a moment."


@dataclass(frozen=True)
class Attempt:
    user: str
    client: str
    lease: str
    nas_event: str
    reservation: Reservation
    day_event: str = UNRESERVED


class AttemptGate:
    def __init__(self, config: MultifactorConfig, services: FactorServices) -> None:
        self.config = config
        self.lockout = config.lockout
        self.services = services

    async def open(
        self, user: str, client: str, now: float, nas_budget: bool = True
    ) -> Attempt | Step:
        """Lease, NAS budget (unless `nas_budget` is False: see the module docstring),
        user budget; or the step that refuses the attempt."""
        state, lockout = self.services.state, self.lockout
        lease = await state.reserve(
            LEASES, user, now, max_events=1, window=self.config.check_lease()
        )
        if lease is None:
            return Step(StepKind.REJECT, "user_busy", MSG_BUSY)
        nas_event: str | None = None
        day_event: str | None = None

        async def give_back() -> None:
            if day_event is not None:
                await state.release(USER_FAILURES, user, day_event)
            if nas_event is not None:
                await state.release(CLIENT_FAILURES, client, nas_event)
            await state.release(LEASES, user, lease)

        try:
            nas_event = UNRESERVED
            if nas_budget:
                nas_event = await state.reserve(
                    CLIENT_FAILURES,
                    client,
                    now,
                    max_events=lockout.client_failures_per_minute,
                    window=NAS_WINDOW,
                )
            if nas_event is None:
                await give_back()
                return Step(StepKind.REJECT, "client_throttled", rules.MSG_THROTTLED)
            day_event = await state.reserve(
                USER_FAILURES,
                user,
                now,
                max_events=lockout.max_failures_per_day,
                window=USER_WINDOW,
            )
            if day_event is None:
                await give_back()
                return Step(StepKind.REJECT, "locked_out", rules.MSG_LOCKED)
            reservation = await self.services.users.run(
                lambda s: s.reserve_attempt(
                    user, now, lockout.max_failures, lockout.lockout_seconds
                )
            )
        except BaseException:
            # a store failed: give back what was taken (best effort: it may be down too)
            with contextlib.suppress(UpstreamError):
                await give_back()
            raise
        if not reservation.granted:
            await give_back()
            return Step(StepKind.REJECT, "locked_out", rules.MSG_LOCKED)
        return Attempt(user, client, lease, nas_event, reservation, day_event)

    async def settle(self, attempt: Attempt, result: FactorResult, now: float) -> None:
        """Keep what a failure costs; give back what anything else did not cost."""
        if result.is_failure:
            if attempt.nas_event == UNRESERVED:  # out of band: counted now that it failed
                await self.services.state.reserve(
                    CLIENT_FAILURES,
                    attempt.client,
                    now,
                    max_events=self.lockout.client_failures_per_minute + 1,
                    window=NAS_WINDOW,
                )
            return
        user, max_failures = attempt.user, self.lockout.max_failures
        if result.verdict is Verdict.ACCEPT:
            await self.services.users.run(lambda s: s.reset_failures(user))
        else:
            await self.services.users.run(lambda s: s.release_attempt(user, now, max_failures))
        await self.services.state.release(CLIENT_FAILURES, attempt.client, attempt.nas_event)
        await self.services.state.release(USER_FAILURES, user, attempt.day_event)

    async def close(self, attempt: Attempt) -> None:
        await self.services.state.release(LEASES, attempt.user, attempt.lease)

    async def count_failure(self, user: str, client: str, now: float) -> bool:
        """Count a failure that no reservation covered (a factor refusing at `begin`,
        e.g. a Duo deny); True when the user is now locked out."""
        lockout = self.lockout
        await self.services.state.reserve(
            CLIENT_FAILURES,
            client,
            now,
            max_events=lockout.client_failures_per_minute + 1,
            window=NAS_WINDOW,
        )
        await self.services.state.reserve(
            USER_FAILURES,
            user,
            now,
            max_events=lockout.max_failures_per_day + 1,
            window=USER_WINDOW,
        )
        state = await self.services.users.run(
            lambda s: s.record_failure(user, now, lockout.max_failures, lockout.lockout_seconds)
        )
        return state.locked
