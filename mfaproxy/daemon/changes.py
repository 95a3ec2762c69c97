"""What a reload changes, said so an operator can read it, and what it cannot change.

`describe` compares the configuration that serves with the one just read: the dotted
paths whose values differ (clients by name, `clients.vpn.secret`, since an index shifts
when one is removed), the top-level sections added, removed or changed, the clients
added, removed or changed, with the local users file the counts of users added,
removed or changed (never a name or a hash), and one line saying all that. Secrets are
compared (pydantic `SecretStr` compares by value) and never shown: only paths and names
are.

`RESTART_ONLY` is the table of settings applied at start only (sockets, processes,
stores, queues and the tables sized from them); `restart_required` names each that
differs from what the process started with, so that a second reload of a change still
not applied warns again. Its value is shown where it can hold no secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel

from mfaproxy.config.schema import Config

# --------------------------------------------------------------------------- what changed


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def _flat(value: BaseModel, prefix: str = "") -> dict[str, Any]:
    # Python mode keeps SecretStr objects, which compare by their secret value.
    return dict(_walk(value.model_dump(), prefix))


def _differ(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The paths that differ; a part set where it was off (`smtp`, `server.metrics`) is
    named once, not with each of its settings."""
    missing = object()  # unset vs set (a section appearing) differs too
    found = {
        p for p in before.keys() | after.keys() if before.get(p, missing) != after.get(p, missing)
    }
    return sorted(p for p in found if not any(a in found for a in _ancestors(p)))


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def _without_clients(config: Config) -> dict[str, Any]:
    return dict(_walk(config.model_dump(exclude={"clients"}), ""))


def changed_settings(old: Config, new: Config) -> list[str]:
    """Dotted paths whose values differ (lists compare whole)."""
    return _differ(_flat(old), _flat(new))


@dataclass(frozen=True)
class ClientChanges:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # client name -> the settings of it that changed (`secret`, `address`...)
    changed: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def between(cls, old: Config, new: Config) -> ClientChanges:
        before = {c.name: _flat(c) for c in old.clients}
        after = {c.name: _flat(c) for c in new.clients}
        changed = {
            name: found
            for name in sorted(before.keys() & after.keys())
            if (found := _differ(before[name], after[name]))
        }
        return cls(
            sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys()), changed
        )

    def paths(self) -> list[str]:
        names = [f"clients.{n}" for n in self.added + self.removed]
        return names + [f"clients.{n}.{p}" for n, found in self.changed.items() for p in found]

    def text(self) -> list[str]:
        parts = [f"clients added: {', '.join(self.added)}"] if self.added else []
        parts += [f"clients removed: {', '.join(self.removed)}"] if self.removed else []
        parts += [f"client {n} changed ({', '.join(found)})" for n, found in self.changed.items()]
        return parts


def _present(config: Config, section: str) -> bool:
    """Written in the file (or, for an optional section, set at all)."""
    return section in config.model_fields_set and getattr(config, section) is not None


@dataclass(frozen=True)
class UsersFileChanges:
    """The local users file, re-read by a reload: how many users it holds and how many
    were added, removed or changed (a hash, groups, an address). Counts, not names."""

    users: int
    added: int
    removed: int
    changed: int

    @classmethod
    def between(cls, old: Mapping[str, object], new: Mapping[str, object]) -> UsersFileChanges:
        changed = sum(1 for name in old.keys() & new.keys() if old[name] != new[name])
        return cls(len(new), len(new.keys() - old.keys()), len(old.keys() - new.keys()), changed)

    def text(self) -> str | None:
        counts = [(self.added, "added"), (self.removed, "removed"), (self.changed, "changed")]
        found = [f"{n} {what}" for n, what in counts if n]
        return f"users file: {', '.join(found)}" if found else None


@dataclass(frozen=True)
class Changes:
    """A reload's differences, as the `reloaded` log line carries them."""

    settings: list[str]
    sections: dict[str, str]  # section -> added, removed or changed
    clients: ClientChanges
    users_file: UsersFileChanges | None = None

    def summary(self) -> str:
        users = self.users_file.text() if self.users_file is not None else None
        if not self.sections:
            return users or "no setting changed"
        parts = [users] if users else []
        for section, how in self.sections.items():
            if section == "clients":
                parts += self.clients.text()
                continue
            prefix = section + "."
            inner = [p.removeprefix(prefix) for p in self.settings if p.startswith(prefix)]
            parts.append(f"{section} {how}" + (f" ({', '.join(inner)})" if inner else ""))
        return "; ".join(parts)

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "changed": self.settings,
            "sections": self.sections,
            "clients_added": self.clients.added,
            "clients_removed": self.clients.removed,
            "clients_changed": self.clients.changed,
            "summary": self.summary(),
        }
        if self.users_file is not None:
            fields["users_file"] = asdict(self.users_file)
        return fields


def _how(was: bool, now: bool) -> str:
    if now and not was:
        return "added"
    return "removed" if was and not now else "changed"


def describe(
    old: Config, new: Config, users: tuple[Mapping[str, object], Mapping[str, object]] | None = None
) -> Changes:
    """`users`: the local users file before and after, when both configurations use one."""
    clients = ClientChanges.between(old, new)
    settings = sorted(_differ(_without_clients(old), _without_clients(new)) + clients.paths())
    sections: dict[str, str] = {}
    for section in Config.model_fields:
        if not any(p == section or p.startswith(section + ".") for p in settings):
            continue
        was, now = _present(old, section), _present(new, section)
        sections[section] = (
            "added" if now and not was else "removed" if was and not now else "changed"
        )
    found = UsersFileChanges.between(*users) if users is not None else None
    return Changes(settings, sections, clients, found)


# --------------------------------------------------------------------------- restart only


@dataclass(frozen=True)
class RestartOnly:
    setting: str
    value: Callable[[Config], object]
    # What keeps running until a restart.
    detail: str
    # The value may be logged (no password, token or DSN in it).
    shown: bool = True


def _accounting(config: Config) -> Any:
    return config.server.accounting


def _replay_window(config: Config) -> float:
    # daemon/server.py duplicates_for: sized at start from both settings.
    timeout = float(config.multifactor.challenge.timeout_seconds)
    return max(config.server.duplicate_cache_seconds, timeout)


RESTART_ONLY: tuple[RestartOnly, ...] = (
    RestartOnly("server.listen", lambda c: c.server.listen, "the sockets stay bound"),
    RestartOnly(
        "server.metrics",
        lambda c: c.server.metrics.listen if c.server.metrics else "off",
        "the metrics endpoint stays as it is",
    ),
    RestartOnly("server.workers", lambda c: c.server.workers, "the worker processes stay"),
    RestartOnly("server.state_dir", lambda c: str(c.server.state_dir), "the stores stay open"),
    RestartOnly(
        "server.secrets_key_file",
        lambda c: str(c.server.secrets_key_file or "state_dir/master.key"),
        "the running master key stays",
    ),
    RestartOnly(
        "server.state_store", lambda c: c.server.state_store, "the store stays open", shown=False
    ),
    RestartOnly(
        "server.user_store", lambda c: c.server.user_store, "the store stays open", shown=False
    ),
    RestartOnly("server.intake_queue", lambda c: c.server.intake_queue, "the queue keeps its size"),
    RestartOnly("server.concurrency", lambda c: c.server.concurrency, "the workers stay as many"),
    RestartOnly(
        "server.duplicate_cache_seconds",
        lambda c: c.server.duplicate_cache_seconds,
        "the duplicate table keeps its lifetime",
    ),
    RestartOnly(
        "server.duplicate_lease_seconds",
        lambda c: c.server.duplicate_lease_seconds,
        "the shared duplicate table keeps its lease",
    ),
    RestartOnly(
        "multifactor.challenge.timeout_seconds",
        _replay_window,
        "new challenges use the new timeout at once; the replay window sized from it"
        " (seconds shown) keeps its length",
    ),
    RestartOnly(
        "server.accounting",
        lambda c: "on" if c.server.accounting else "off",
        "accounting stays as it is",
    ),
    RestartOnly(
        "server.accounting.listen",
        lambda c: c.server.accounting.listen if c.server.accounting else None,
        "the accounting sockets stay bound",
    ),
    RestartOnly(
        "server.accounting.intake_queue",
        lambda c: c.server.accounting.intake_queue if c.server.accounting else None,
        "the accounting queue keeps its size",
    ),
    RestartOnly(
        "server.accounting.concurrency",
        lambda c: c.server.accounting.concurrency if c.server.accounting else None,
        "the accounting workers stay as many",
    ),
)


def _show(value: object) -> object:
    if isinstance(value, list):
        return [str(item) for item in value]
    return value if isinstance(value, int | float | str) or value is None else str(value)


def restart_required(running: Config, new: Config) -> list[dict[str, Any]]:
    """One log record (setting, detail, running, configured) per restart-only setting
    that differs from what runs; accounting's own settings only when it is on in both."""
    found = []
    both_accounting = _accounting(running) is not None and _accounting(new) is not None
    for row in RESTART_ONLY:
        if row.setting.startswith("server.accounting.") and not both_accounting:
            continue
        was, now = row.value(running), row.value(new)
        if was == now:
            continue
        record: dict[str, Any] = {"setting": row.setting, "detail": f"restart needed: {row.detail}"}
        if row.shown:
            record |= {"running": _show(was), "configured": _show(now)}
        else:
            prefix = row.setting + "."
            paths = changed_settings(running, new)
            record["changed"] = [p for p in paths if p == row.setting or p.startswith(prefix)]
        found.append(record)
    return found
