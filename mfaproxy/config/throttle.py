"""`password_throttle`: how wrong primary passwords slow down and stop a guesser.

The rule itself (sliding window, back-off, soft lock, ceiling) is core/throttle.py;
README "Security" states it with numbers. Defaults follow NIST SP 800-63B section
5.2.2: at most 100 failed attempts on one account.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mfaproxy.config.base import Strict

DAY = 86400.0


class BackoffSettings(Strict):
    """One counter's rule: failures in the last `window_seconds`; the first
    `free_failures` cost nothing, each further one doubles the wait before the next
    attempt, from `initial_delay_seconds` up to `lock_seconds` (the soft lock); at
    `max_failures` in the window no attempt is let through until the oldest one leaves
    it."""

    window_seconds: float = Field(default=DAY, gt=0, le=30 * DAY)
    free_failures: int = Field(default=5, ge=0, le=10_000)
    initial_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    lock_seconds: float = Field(default=900.0, gt=0, le=DAY)
    max_failures: int = Field(default=100, ge=1, le=100_000)

    @model_validator(mode="after")
    def _ordered(self) -> BackoffSettings:
        if self.initial_delay_seconds > self.lock_seconds:
            raise ValueError("initial_delay_seconds must not exceed lock_seconds")
        if self.lock_seconds > self.window_seconds:
            # A failure must still be in the window when the wait it caused ends, or
            # the back-off would forget it and start over.
            raise ValueError("lock_seconds must not exceed window_seconds")
        if self.free_failures >= self.max_failures:
            raise ValueError("free_failures must be below max_failures")
        return self


class UserBackoff(BackoffSettings):
    """Per user (the normalised typed name, and the directory's identity), for the
    sources the user has not logged in from; and per (user, source) for those they have."""

    # NIST SP 800-63B section 5.2.2: no more than 100 consecutive failed attempts.
    max_failures: int = Field(default=100, ge=1, le=100)


class SourceBackoff(BackoffSettings):
    """Per source (NAS entry plus Calling-Station-Id), for every user it names: one
    device spraying passwords over many accounts."""

    window_seconds: float = Field(default=3600.0, gt=0, le=30 * DAY)
    free_failures: int = Field(default=20, ge=0, le=10_000)
    max_failures: int = Field(default=1000, ge=1, le=100_000)


class PasswordThrottleConfig(Strict):
    enabled: bool = True
    user: UserBackoff = UserBackoff()
    source: SourceBackoff = SourceBackoff()
    # A source where the user's password was right within this many days is "known"
    # for that user: the user counter of unknown sources does not apply there (a
    # counter of its own does), so a guesser elsewhere cannot lock the user out of it.
    # 0 turns the exemption off (every source is judged by the user counter).
    known_source_days: float = Field(default=30.0, ge=0, le=366)
