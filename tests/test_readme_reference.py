"""README.md stays a true reference: it opens with `make run` and `make test`, every
configuration key of the schema is documented in the section of its table, and every
Prometheus metric is in "Metrics and health".

The keys are read from the pydantic models (mfaproxy/config/*.py) and the metrics from
the registry of mfaproxy/observability/metrics.py, so a new key or metric fails this
test until the README says what it is.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import Metric
from pydantic import BaseModel

from mfaproxy.config.schema import Config
from mfaproxy.observability.metrics import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"

# Where each top-level key is documented: (start heading, next heading). The first
# match in the map decides, so the longer prefix comes first.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("server.accounting", "\n## Accounting\n", "\n## Security\n"),
    ("server", "\n### `server`", "\n### `clients`"),
    ("clients", "\n### `clients`", "\n### `directory`"),
    ("prompt_profiles", "\n### `clients`", "\n### `directory`"),
    ("directory", "\n### `directory`", "\n### `replies`"),
    ("replies", "\n### `replies`", "\n### `access_policies`"),
    ("access_policies", "\n### `access_policies`", "\n### `multifactor`"),
    ("multifactor", "\n### `multifactor`", "\n### `smtp`"),
    ("smtp", "\n### `smtp`", "\n### `password_throttle`"),
    ("password_throttle", "\n### `password_throttle`", "\n## Pointing a NAS"),
)
# Not read from the file: where the configuration was loaded from.
INTERNAL = {"source"}


def _models(annotation: object) -> Iterator[type[BaseModel]]:
    """The models inside a field's type: X, X | None, list[X], dict[str, X], unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if typing.get_origin(annotation) is typing.Annotated:
        yield from _models(typing.get_args(annotation)[0])
        return
    for argument in typing.get_args(annotation):
        yield from _models(argument)


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    """Every dotted key a configuration file may hold (list items and dict values are
    not in the path: `clients.secret`, `multifactor.duo.timeout`)."""
    for name, field in model.model_fields.items():
        if not prefix and name in INTERNAL:
            continue
        key = f"{prefix}{field.alias or name}"
        yield key
        for sub in _models(field.annotation):
            yield from schema_keys(sub, key + ".")


def _section(start: str, end: str) -> str:
    text = README.read_text()
    begin = text.index(start)
    return text[begin : text.index(end, begin + len(start))]


def documented_names(region: str) -> set[str]:
    """Key names a README region documents: in inline code (`x`, `a.b.x`, `x: 1`) or as
    a key of one of its YAML examples."""
    names: set[str] = set()
    prose = re.sub(r"```.*?```", "", region, flags=re.S)
    for code in re.findall(r"`([^`]+)`", prose):
        names |= {token.rsplit(".", 1)[-1] for token in re.findall(r"[a-z_][a-z0-9_.]*", code)}
    for block in re.findall(r"```yaml\n(.*?)```", region, flags=re.S):
        names |= set(re.findall(r"([a-z_][a-z0-9_]*):", block))
    return names


def undocumented_keys() -> list[str]:
    regions = {top: documented_names(_section(start, end)) for top, start, end in SECTIONS}
    missing = []
    for key in schema_keys():
        top = next(t for t, _s, _e in SECTIONS if key == t or key.startswith(t + "."))
        leaf = key.rsplit(".", 1)[-1]
        # A secret may be documented by its file or environment form only.
        if not {leaf, f"{leaf}_file", f"{leaf}_env"} & regions[top]:
            missing.append(key)
    return missing


def exported_metrics() -> set[str]:
    """The names Prometheus scrapes: counters end in _total, an Info in _info."""
    names = set()
    for family in REGISTRY.collect():
        assert isinstance(family, Metric)
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def metrics_table() -> set[str]:
    section = _section("\n## Metrics and health\n", "\n## ")
    first_column = re.findall(r"^\| ([^|]+) \|", section, flags=re.M)
    return {name for cell in first_column for name in re.findall(r"`(mfaproxy_[a-z_]+)`", cell)}


def test_the_readme_opens_with_make_run_and_make_test() -> None:
    text = README.read_text()
    first = re.search(r"```sh\n(.*?)```", text, flags=re.S)
    assert first is not None and text.index("```sh") < text.index("\n## ")
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert commands[:2] == ["make run", "make test"]


def test_every_configuration_key_is_documented_in_its_section() -> None:
    assert undocumented_keys() == []


def test_every_metric_is_in_the_metrics_table() -> None:
    assert sorted(exported_metrics() - metrics_table()) == []


def test_the_metrics_table_names_only_real_metrics() -> None:
    assert sorted(metrics_table() - exported_metrics()) == []


def test_the_scans_see_the_schema_and_the_registry() -> None:
    # Both checks are only worth something if they see what the code has.
    keys = set(schema_keys())
    assert {"server.listen", "clients.secret", "multifactor.duo.timeout"} <= keys
    assert {"server.state_store.url", "server.accounting.upstream.answer"} <= keys
    assert "source" not in keys
    assert {"mfaproxy_requests_total", "mfaproxy_build_info"} <= exported_metrics()
    assert "mfaproxy_upstream_up" in exported_metrics()
