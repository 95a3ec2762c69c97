"""Configuration problems as an operator reads them: the dotted path of the key, the
YAML line it is on, and what is wrong, with a "did you mean" for a misspelt key.

pydantic reports a location such as `server.state_store.redis.urll` (the `redis` is the
tag of a discriminated union, not a key of the file); `schema_problems` walks the models
along that location, drops such tags so the path is the one written in the YAML, and
finds the keys that were allowed where an unknown one appears.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

Loc = tuple[str | int, ...]
LineMap = dict[Loc, int]

# Keys read by config.base.take_secrets in place of a secret field `<name>`.
SECRET_SOURCES = ("_file", "_env")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, at a location in the YAML document."""

    loc: Loc
    message: str

    @property
    def dotted(self) -> str:
        return ".".join(str(part) for part in self.loc) or "(top level)"

    def render(self, lines: LineMap) -> str:
        line = line_for(self.loc, lines)
        where = f" (line {line})" if line else ""
        return f"{self.dotted}{where}: {self.message}"


def render_all(problems: Iterable[Problem], lines: LineMap) -> list[str]:
    """Rendered in the order of the file (problems without a line last)."""
    ordered = sorted(problems, key=lambda p: line_for(p.loc, lines) or float("inf"))
    return [problem.render(lines) for problem in ordered]


def line_for(loc: Loc, lines: LineMap) -> int | None:
    """The line of `loc`, or of its nearest parent present in the document."""
    for cut in range(len(loc), -1, -1):
        line = lines.get(loc[:cut])
        if line is not None:
            return line
    return None


def yaml_line_map(text: str) -> LineMap:
    """Map each dotted location in the YAML document to its 1-based line number."""
    lines: LineMap = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: Loc) -> Iterator[None]:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value
                lines[(*path, name)] = key.start_mark.line + 1
                yield from walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from walk(item, (*path, index))
        yield None

    if root is not None:
        for _ in walk(root, ()):
            pass
    return lines


# --------------------------------------------------------------------------- schema errors


def schema_problems(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """pydantic's errors as Problems located as in the YAML file."""
    problems = []
    for error in exc.errors(include_url=False):
        loc, parents = walk_models(model, tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and loc:
            message = unknown_key_message(str(loc[-1]), allowed_keys(parents))
        problems.append(Problem(loc, message))
    return problems


def unknown_key_message(key: str, allowed: set[str]) -> str:
    guess = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    if guess:
        return f"unknown key; did you mean {guess[0]!r}?"
    if allowed:
        return f"unknown key; allowed here: {', '.join(sorted(allowed))}"
    return "unknown key"


def walk_models(root: type[BaseModel], loc: Loc) -> tuple[Loc, list[Any]]:
    """(the location without union tags, the candidate types of its last part's parent)."""
    kinds: list[Any] = [root]
    parents: list[Any] = kinds
    clean: list[str | int] = []
    for part in loc:
        tagged = _tagged_member(kinds, part)
        if tagged is not None:
            kinds = [tagged]
            continue
        parents = kinds
        kinds = [child for kind in kinds for child in _children(kind, part)]
        clean.append(part)
    return tuple(clean), parents


def allowed_keys(kinds: list[Any]) -> set[str]:
    keys: set[str] = set()
    for kind in kinds:
        if not _is_model(kind):
            continue
        for name, info in kind.model_fields.items():
            if info.exclude:
                continue
            key = info.alias or name
            keys.add(key)
            if SecretStr in _members(info.annotation):
                keys.update(f"{key}{suffix}" for suffix in SECRET_SOURCES)
    return keys


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _members(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: Annotated and Optional/Union unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _field(model: type[BaseModel], key: str) -> Any | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _children(kind: Any, part: str | int) -> list[Any]:
    if _is_model(kind):
        annotation = _field(kind, part) if isinstance(part, str) else None
        return _members(annotation) if annotation is not None else []
    origin = get_origin(kind)
    args = get_args(kind)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return _members(args[0])
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return _members(args[1])
    return []


def _tagged_member(kinds: list[Any], part: str | int) -> Any | None:
    """The member of a union that `part` names, when `part` is a tag and not a key."""
    models = [kind for kind in kinds if _is_model(kind)]
    if len(models) < 2 or not isinstance(part, str):
        return None
    if any(_field(model, part) is not None for model in models):
        return None
    for model in models:
        if part == model.__name__ or part in _tags(model):
            return model
    return None


def _tags(model: type[BaseModel]) -> set[str]:
    """Values of the model's single-value Literal fields (a discriminator's tag)."""
    found: set[str] = set()
    for info in model.model_fields.values():
        if get_origin(info.annotation) is Literal:
            values = get_args(info.annotation)
            if len(values) == 1 and isinstance(values[0], str):
                found.add(values[0])
    return found


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """The problem of a file that is not UTF-8 text (binary, Latin-1, cut mid-write)."""
    return f"{path}: not UTF-8 text (octet {exc.start} is 0x{exc.object[exc.start]:02x})"
