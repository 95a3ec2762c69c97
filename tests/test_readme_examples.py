"""Every YAML example of README.md is valid configuration: each is validated against the
schema (a fragment inside the section it belongs to: `duo:` inside `multifactor`), and
the only problems allowed are the ones a reader's machine would not have: the secret
files and environment variables the example names, and the clients a policy fragment
refers to. An unknown key, a wrong value or a renamed setting fails."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.config.schema import Config

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^( *)```yaml\n(.*?)^ *```", re.DOTALL | re.MULTILINE)
# Not the example's fault: what it reads from the operator's machine.
ELSEWHERE = re.compile(
    r"cannot read /|environment variable \w+ is not set|clients rules name unknown clients"
)
METHODS = ("totp", "yubikey", "email_code", "sms", "duo", "radius")
FILLER: dict[str, Any] = {
    "clients": [{"name": "nas", "address": ["127.0.0.1"], "secret": "a-long-test-secret"}],
    "directory": {"backend": "local", "local": {"users_file": "/dev/null"}},
}


def examples() -> list[tuple[int, Any]]:
    text = README.read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text[: match.start()].count("\n") + 1
        found.append((line, yaml.safe_load(textwrap.dedent(match.group(2)))))
    return found


def as_config(example: Any) -> dict[str, Any] | None:
    """The example as a whole file, or None when it is no configuration (users.yaml)."""
    if not isinstance(example, dict):
        return None
    if set(example) <= set(Config.model_fields):
        return {**FILLER, **example}
    if set(example) <= set(MultifactorConfig.model_fields):
        method = next((m for m in METHODS if m in example), "totp")
        return {**FILLER, "multifactor": {"enabled": [method], "default": method, **example}}
    return None


def problems(data: dict[str, Any]) -> list[str]:
    try:
        Config.model_validate(data)
    except ValidationError as exc:
        return [
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
            if not ELSEWHERE.search(e["msg"])
        ]
    return []


@pytest.mark.parametrize(("line", "example"), examples(), ids=lambda v: str(v)[:12])
def test_each_yaml_example_is_valid_configuration(line: int, example: Any) -> None:
    data = as_config(example)
    if data is None:
        assert isinstance(example, dict) and "users" in example, f"line {line}: what is this?"
        return
    assert problems(data) == [], f"README line {line}"


def test_a_wrong_example_would_be_caught() -> None:
    assert len(examples()) >= 15
    wrong = as_config({"multifactor": {"duo": {"integration_key": "x", "fail_mode": "safe"}}})
    assert wrong is not None and problems(wrong)
