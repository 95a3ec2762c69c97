"""Checks that need more than the schema but no I/O: attribute names and values against
the RADIUS dictionary. daemon/preflight.py adds the checks that read files or build
backends; serve, reload and `mfaproxy check-config` all run that one pipeline."""

from __future__ import annotations

from typing import Any

from pyrad.dictionary import Dictionary

from mfaproxy.config.schema import AttributeValue, Config


def _attribute_problems(
    where: str, attributes: dict[str, AttributeValue], dictionary: Dictionary
) -> list[str]:
    problems = []
    for name, value in attributes.items():
        if not dictionary.has_key(name.partition(":")[0]):
            problems.append(f"{where}.{name}: unknown RADIUS attribute (not in the dictionaries)")
            continue
        attr = dictionary.attributes[name.partition(":")[0]]
        values: list[Any] = value if isinstance(value, list) else [value]
        for item in values:
            if (
                attr.type == "integer"
                and not isinstance(item, int)
                and not attr.values.HasForward(item)
            ):
                problems.append(f"{where}.{name}: {item!r} is not an integer or a named value")
    return problems


def semantic_problems(config: Config, dictionary: Dictionary) -> list[str]:
    problems = _attribute_problems("replies.attributes", config.replies.attributes, dictionary)
    for index, mapping in enumerate(config.replies.groups):
        problems += _attribute_problems(
            f"replies.groups.{index}.attributes", mapping.attributes, dictionary
        )
    if config.directory.radius is not None:
        for index, name in enumerate(config.directory.radius.pass_through_attributes):
            if not dictionary.has_key(name):
                where = f"directory.radius.pass_through_attributes.{index}"
                problems.append(f"{where}: unknown RADIUS attribute {name!r}")
    return problems
