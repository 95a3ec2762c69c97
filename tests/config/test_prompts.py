"""Prompt profiles in the configuration: templates refused at load with their dotted
path, the built-in profiles, and the check of every prompt against max_prompt."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.config.prompts import (
    BUILT_IN,
    COMMON_FIELDS,
    PROMPT_NAMES,
    PROMPTS,
    PromptName,
    PromptProfile,
    longest,
    template_problem,
)
from mfaproxy.config.schema import parse_config
from mfaproxy.core.prompts import ClientPrompts, render
from mfaproxy.daemon import preflight
from mfaproxy.errors import ConfigError

BASE: dict[str, Any] = {
    "clients": [{"name": "vpn", "address": "127.0.0.1", "secret": "a-long-enough-secret-0"}],
    "directory": {"backend": "local", "local": {"users_file": "users.yaml"}},
}


def problems(tmp: Path, data: dict[str, Any]) -> list[str]:
    (tmp / "users.yaml").write_text("users: {}\n")
    path = tmp / "mfaproxy.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        preflight.load(path)
    return info.value.problems


def with_client(**client: Any) -> dict[str, Any]:
    return {**BASE, "clients": [{**BASE["clients"][0], **client}]}


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("Code {nope}", "unknown field(s) nope"),
        ("Code {}", "not a named field"),
        ("Code {0}", "not a named field"),
        ("Code {options.__class__}", "not a named field"),
        ("Code {options[0]}", "not a named field"),
        ("Code {options!r}", "format spec or conversion"),
        ("Code {options:>100000}", "format spec or conversion"),
        ("Code {options", "not a valid template"),
        ("Code\nnext line", "printable ASCII on one line"),
        ("Code caf\u00e9", "printable ASCII on one line"),
    ],
)
def test_a_bad_template_is_refused_with_its_dotted_path(
    tmp_path: Path, template: str, why: str
) -> None:
    data = with_client(prompts={"templates": {"totp": template}})
    found = problems(tmp_path, data)
    assert len(found) == 1
    assert found[0].startswith("clients.0.prompts.templates.totp")
    assert why in found[0]


def test_a_field_of_another_prompt_is_refused(tmp_path: Path) -> None:
    data = {**BASE, "prompt_profiles": {"portal": {"templates": {"totp": "{destination}"}}}}
    found = problems(tmp_path, data)
    assert found[0].startswith("prompt_profiles.portal.templates.totp")
    assert "{options}" in found[0]  # says what it takes


def test_an_unknown_prompt_and_an_unknown_profile_are_refused(tmp_path: Path) -> None:
    data = with_client(prompts={"profile": "portal", "templates": {"tottp": "x"}})
    found = problems(tmp_path, data)
    assert any(p.startswith("clients.0.prompts.templates.tottp") for p in found)
    found = problems(tmp_path, with_client(prompts="portal"))
    assert len(found) == 1 and found[0].startswith("clients.0.prompts")
    assert "unknown prompt profile 'portal'; use one of default, openvpn, short" in found[0]


def test_a_named_profile_may_not_take_a_built_in_name(tmp_path: Path) -> None:
    found = problems(tmp_path, {**BASE, "prompt_profiles": {"short": {"max_prompt": 60}}})
    assert len(found) == 1 and found[0].startswith("prompt_profiles.short")
    assert "built-in" in found[0]


def test_a_prompt_longer_than_max_prompt_is_refused_for_the_methods_in_use(
    tmp_path: Path,
) -> None:
    data = with_client(max_prompt=40)
    found = problems(tmp_path, data)  # totp is the default method: its prompts count
    assert all(p.startswith("clients.0.max_prompt") for p in found)
    assert any("totp_enrol" in p for p in found) and not any("duo" in p for p in found)
    # The short profile fits 80 characters, SHA-1 enrolment key included ...
    preflight_ok(tmp_path, with_client(prompts="short"))
    # ... but not a SHA-256 key, which is named.
    sha256 = {**with_client(prompts="short"), "multifactor": {"totp": {"algorithm": "sha256"}}}
    found = problems(tmp_path, sha256)
    assert len(found) == 1 and "totp_enrol" in found[0] and "max_prompt 80" in found[0]


def test_a_reply_message_longer_than_max_prompt_is_refused(tmp_path: Path) -> None:
    data = {**with_client(prompts="short"), "replies": {"reject_message": "x" * 81}}
    found = problems(tmp_path, data)
    assert len(found) == 1 and "replies.reject_message is 81 characters" in found[0]


def test_an_auto_client_is_never_challenged_so_its_prompts_are_not_measured(
    tmp_path: Path,
) -> None:
    preflight_ok(tmp_path, with_client(second_factor="auto", max_prompt=24))


def preflight_ok(tmp: Path, data: dict[str, Any]) -> None:
    (tmp / "users.yaml").write_text("users: {}\n")
    path = tmp / "ok.yaml"
    path.write_text(yaml.safe_dump(data))
    preflight.load(path)


def test_scrv1_needs_a_mode_that_appends(tmp_path: Path) -> None:
    found = problems(tmp_path, with_client(append_format="scrv1"))
    assert len(found) == 1 and "second_factor append or auto" in found[0]
    preflight_ok(tmp_path, with_client(append_format="scrv1", second_factor="append"))


def test_profiles_resolve_client_over_named_over_built_in() -> None:
    data = {
        **BASE,
        "clients": [
            {**BASE["clients"][0], "prompts": "portal", "max_prompt": 70},
            {
                "name": "b",
                "address": "127.0.0.2",
                "secret": "another-long-secret-1",
                "prompts": {"profile": "portal", "templates": {"backup": "Spare code"}},
            },
        ],
        "prompt_profiles": {"portal": {"base": "short", "templates": {"totp": "OTP{options}"}}},
    }
    prompts = ClientPrompts(parse_config(yaml.safe_dump(data), Path("/x/mfaproxy.yaml")))
    vpn, b = prompts.profile("vpn"), prompts.profile("b")
    assert (vpn.max_prompt, b.max_prompt) == (70, 80)
    assert vpn.template("totp") == b.template("totp") == "OTP{options}"
    assert (vpn.template("backup"), b.template("backup")) == ("Backup code", "Spare code")
    assert vpn.template("retry") == BUILT_IN["short"].template("retry")


def test_every_built_in_template_is_valid_and_complete() -> None:
    for profile in BUILT_IN.values():
        assert set(profile.templates) == set(PROMPT_NAMES)
        for name, template in profile.templates.items():
            assert template_problem(name, template) is None


def test_the_short_profile_fits_one_line_of_80() -> None:
    short = BUILT_IN["short"]
    for name in PROMPT_NAMES:
        if name != "options":
            assert longest(short.template(name), 39) <= 80, name


ALL_FIELDS = sorted(set().union(*PROMPTS.values(), COMMON_FIELDS))
SAFE_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def templates(draw: st.DrawFn) -> tuple[PromptName, str]:
    name = draw(st.sampled_from(PROMPT_NAMES))
    fields = sorted(PROMPTS[name] | COMMON_FIELDS)
    parts = draw(
        st.lists(
            st.one_of(
                SAFE_TEXT.map(lambda t: t.replace("{", "{{").replace("}", "}}")),
                st.sampled_from(fields).map(lambda f: "{" + f + "}"),
            ),
            max_size=8,
        )
    )
    return name, "".join(parts)


@given(
    templates(),
    st.dictionaries(st.sampled_from(ALL_FIELDS), st.text(max_size=300)),
    st.integers(16, 253),
)
def test_any_accepted_template_renders_one_line_of_printable_ascii_within_max_prompt(
    drawn: tuple[PromptName, str], values: dict[str, str], limit: int
) -> None:
    name, template = drawn
    assert template_problem(name, template) is None
    default = BUILT_IN["default"]
    custom = PromptProfile("custom", {**default.templates, name: template}, limit)
    text = render(custom, name, values, ["backup", "reset"])
    assert len(text) <= limit
    assert all(" " <= c <= "~" for c in text) and text == text.strip()


@given(st.text(max_size=60))
def test_a_template_either_is_refused_or_renders(template: str) -> None:
    if template_problem("totp", template) is None:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
        assert names <= PROMPTS["totp"] | COMMON_FIELDS
        default = BUILT_IN["default"]
        custom = PromptProfile("x", {**default.templates, "totp": template}, 253)
        assert len(render(custom, "totp", {"options": "x" * 1000})) <= 253
