"""The one validation pipeline: everything `serve` would refuse at start, found before
it starts. `mfaproxy check-config`, `serve` and a reload all call `check`."""

from __future__ import annotations

from pyrad.dictionary import Dictionary

from mfaproxy.config.schema import Config
from mfaproxy.config.validate import semantic_problems
from mfaproxy.directory.local import load_users_file
from mfaproxy.errors import ConfigError


def problems(config: Config, dictionary: Dictionary) -> list[str]:
    """Every problem of a schema-valid configuration, each with its dotted path."""
    found = semantic_problems(config, dictionary)
    if config.directory.backend == "local" and config.directory.local is not None:
        try:
            load_users_file(config.directory.local.users_file)
        except ConfigError as exc:
            found += [f"directory.local.users_file: {p}" for p in exc.problems]
    return found


def check(config: Config, dictionary: Dictionary) -> None:
    found = problems(config, dictionary)
    if found:
        raise ConfigError(found)
