"""The admission ticket of the request being processed, in a context variable so that
the pools deep in a backend can see its deadline without every signature carrying it."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from mfaproxy.errors import Shed


@dataclass(frozen=True)
class Ticket:
    """`arrival` and `deadline` are event-loop times (`loop.time()`, monotonic)."""

    source: str  # the NAS address: the unit of fairness
    arrival: float
    deadline: float
    # Answers to an Access-Challenge are nearly finished logins: served first, and
    # never shed once their State may have been taken.
    second_round: bool = False

    @property
    def sheddable(self) -> bool:
        return not self.second_round

    def expired(self, now: float) -> bool:
        return self.sheddable and now > self.deadline


CURRENT: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "mfaproxy_ticket", default=None
)


def current() -> Ticket | None:
    return CURRENT.get()


def check_deadline(now: float, where: str) -> None:
    """Shed the current request (raise Shed) if it is a first round past its deadline."""
    ticket = CURRENT.get()
    if ticket is not None and ticket.expired(now):
        raise Shed(f"{where}_wait", f"waited {now - ticket.arrival:.2f}s")
