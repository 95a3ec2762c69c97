"""Checks that need more than the schema but no I/O: attribute names and values against
the RADIUS dictionary. daemon/preflight.py adds the checks that read files or build
backends; serve, reload and `mfaproxy check-config` all run that one pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyrad.dictionary import Dictionary

from mfaproxy.config.directory import RadiusDirectoryConfig
from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.config.policies import AccessPoliciesConfig, UserGroupsRule
from mfaproxy.config.problems import Loc, Problem
from mfaproxy.config.schema import AttributeValue, RepliesConfig


def _attribute_problems(
    where: Loc, attributes: dict[str, AttributeValue], dictionary: Dictionary
) -> list[Problem]:
    problems = []
    for name, value in attributes.items():
        base = name.partition(":")[0]  # `Name:tag` for tagged attributes (RFC 2868)
        if not dictionary.has_key(base):
            problems.append(
                Problem((*where, name), "unknown RADIUS attribute (not in the dictionaries)")
            )
            continue
        attr = dictionary.attributes[base]
        values: list[Any] = value if isinstance(value, list) else [value]
        for item in values:
            if (
                attr.type == "integer"
                and not isinstance(item, int)
                and not attr.values.HasForward(item)
            ):
                problems.append(
                    Problem((*where, name), f"{item!r} is not an integer or a named value")
                )
    return problems


def reply_problems(replies: RepliesConfig, dictionary: Dictionary) -> list[Problem]:
    """Every reply attribute (for all users and per group) is known and well typed."""
    problems = _attribute_problems(("replies", "attributes"), replies.attributes, dictionary)
    for index, mapping in enumerate(replies.groups):
        where = ("replies", "groups", index, "attributes")
        problems += _attribute_problems(where, mapping.attributes, dictionary)
    return problems


def pass_through_problems(radius: RadiusDirectoryConfig, dictionary: Dictionary) -> list[Problem]:
    return [
        Problem(
            ("directory", "radius", "pass_through_attributes", index),
            f"unknown RADIUS attribute {name!r}",
        )
        for index, name in enumerate(radius.pass_through_attributes)
        if not dictionary.has_key(name)
    ] + [
        Problem(("directory", "radius", "group_attribute"), f"unknown RADIUS attribute {name!r}")
        for name in [radius.group_attribute]
        if name is not None and not dictionary.has_key(name)
    ]


def group_references(
    policies: AccessPoliciesConfig | None,
    multifactor: MultifactorConfig | None,
    replies: RepliesConfig | None,
) -> Iterator[tuple[Loc, str]]:
    """Every configured group: user_groups rules, the administrators group, reply maps."""
    for path, rule in policies.iter_rules() if policies is not None else ():
        if isinstance(rule, UserGroupsRule):
            for index, name in enumerate(rule.groups):
                where = tuple(int(p) if p.isdigit() else p for p in path.split("."))
                yield ("access_policies", *where, "groups", index), name
    if multifactor is not None and multifactor.administrators.group is not None:
        yield ("multifactor", "administrators", "group"), multifactor.administrators.group
    for index, mapping in enumerate(replies.groups if replies is not None else ()):
        yield ("replies", "groups", index, "group"), mapping.group
