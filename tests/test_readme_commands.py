"""Every `mfaproxy` command line of README.md's code blocks is one the CLI takes: the
subcommand exists and so does each option (argparse parses it, nothing runs). An
optional part written `[--png FILE]` is parsed with it; a placeholder `<touch>` stands
for a value. Each command of the "Command line" table exists and takes each option it
names there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfaproxy.cli.main import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# How the README starts mfaproxy: from the clone, from the install's venv, as the user.
PREFIX = re.compile(r"^(?:sudo -u mfaproxy )?(?:\S*/)?mfaproxy (?=[a-z-]+)")
FENCE = re.compile(r"^```(\w*)$")


def code_lines() -> Iterator[str]:
    """The lines of the README's sh (or unmarked) code blocks, continuations joined."""
    inside, language, pending = False, "", ""
    for raw in README.read_text().splitlines():
        fence = FENCE.match(raw.strip())
        if fence:
            inside, language = (not inside), fence.group(1)
            continue
        if not inside or language not in ("", "sh"):
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        yield line


def commands() -> list[str]:
    found = []
    for line in code_lines():
        if PREFIX.match(line):
            command = PREFIX.sub("", line, count=1)
            found.append(command.split(" #", 1)[0].split(" < ", 1)[0].strip())
    return found


def table_commands() -> list[str]:
    """The "Command line" table's first column: `mfaproxy users resets [approve|...]`."""
    section = README.read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for cell in re.findall(r"^\| `mfaproxy ([^`]+)`", section, re.MULTILINE):
        # `show\|list\|unlock`: each alternative of the first word is a command.
        words = cell.replace("\\|", "|").split(" ")
        for head in words[1].split("|") if len(words) > 1 else [""]:
            found.append(" ".join([words[0], head, *words[2:]]).strip())
    return found


def argv(command: str) -> list[str]:
    command = re.sub(r"<[^>]+>", "x", command)  # `--otp <touch>`
    # `[approve|clear|request USER]`: the first alternative, with the rest of the bracket.
    command = re.sub(r"\[([^]|]+)(?:\|[^] ]+)*([^]]*)\]", r"\1\2", command)
    command = re.sub(r"\b[A-Z][A-Z:]*\b", "x", command)  # USER, H:P, COST
    command = command.replace("totp|yubikey|email|sms", "totp")
    return shlex.split(command)


def parses(words: list[str]) -> str | None:
    """None when the CLI takes these words; argparse's complaint otherwise."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            build_parser().parse_args(words)
    except SystemExit as exc:
        return errors.getvalue().strip() or f"exit {exc.code}"
    return None


@pytest.mark.parametrize("command", sorted(set(commands())))
def test_each_command_in_a_code_block_is_one_the_cli_takes(command: str) -> None:
    assert parses(argv(command)) is None, command


def subcommand(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of the deepest subcommand the words name, and the words after it."""
    parser = build_parser()
    while words:
        choices = next(
            (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
            None,
        )
        if not choices or words[0] not in choices:
            break
        parser, words = choices[words[0]], words[1:]
    return parser, words


@pytest.mark.parametrize("command", table_commands())
def test_each_command_of_the_command_line_table_exists(command: str) -> None:
    # The table shows the shape (`users show|list`, `--user U`), not full lines: the
    # subcommand must exist and take each option named.
    words = command.replace("[", " ").replace("]", " ").split()
    parser, rest = subcommand(words)
    assert parser.prog.removeprefix("mfaproxy ").split()[0] == words[0], command
    named = {o for a in parser._actions for o in a.option_strings}
    for word in rest:
        if word.startswith("--"):
            assert word in named, f"{command}: {word} is not an option of {parser.prog}"
    if len(words) > 1 and words[1].islower() and not words[1].startswith("-"):
        assert words[1] in parser.prog.split(), f"{command}: no subcommand {words[1]}"


def test_the_scans_find_the_commands() -> None:
    found = commands()
    assert "check-config --config /etc/mfaproxy/mfaproxy.yaml" in found
    assert any(c.startswith("policy explain --config") for c in found)  # a continuation
    assert len(table_commands()) >= 15
    # and a command the CLI does not take is caught
    assert parses(argv("users enroll alice totp --qr")) is not None
    assert parses(argv("users reset alice")) is not None
