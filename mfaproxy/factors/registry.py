"""The second-factor methods, keyed by their configuration name (`multifactor.enabled`).

Each method lives in its own module with a `build(config, services) -> Factor`; imports
happen only for the methods an operator enables.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.factors.base import Factor, FactorServices

FACTOR_MODULES: dict[str, str] = {
    "totp": "mfaproxy.factors.totp",
    "yubikey": "mfaproxy.factors.yubikey",
    "email": "mfaproxy.factors.email",
    "sms": "mfaproxy.factors.sms",
    "duo": "mfaproxy.factors.duo",
    "radius": "mfaproxy.factors.radius",
}

Builder = Callable[[MultifactorConfig, FactorServices], Factor]


def builder(name: str) -> Builder:
    module = importlib.import_module(FACTOR_MODULES[name])
    build: Builder = module.build
    return build


def build_factors(config: MultifactorConfig, services: FactorServices) -> dict[str, Factor]:
    """Every enabled method, plus email when it is only an alternate way or the proof
    of an address before an inline enrolment."""
    names = list(config.enabled)
    wanted = "email" in config.alternate or "email_code" in config.inline_enrolment.allow
    if wanted and "email" not in names:
        names.append("email")
    return {name: builder(name)(config, services) for name in names}
