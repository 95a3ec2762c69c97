"""Unique ids for reservations and attempts, without a system call per id.

A reservation token (`StateStore.reserve`) or a password attempt's id only has to be
unique among the processes sharing a store, and is never shown to a client: a random
prefix drawn once per process (64 bits, so two processes practically never share it)
and a counter give that. `secrets.token_hex` per id was one getrandom call each, and a
call that releases the GIL on the event loop waits for it to come back from whichever
pool thread took it: 9 % of a PAP request's samples in the profile (bench/README.md).
Anything that must be unpredictable (a State, a nonce, a key) still comes from
`secrets`.
"""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count()


def unique_token() -> str:
    """Unique across the processes of a deployment (workers are exec'd: each has its
    own prefix); not secret, not unpredictable."""
    return f"{_PREFIX}{next(_COUNTER):x}"
