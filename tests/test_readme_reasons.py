"""README "Drop and reject reasons" lists every reason the code can give.

The reasons are read from the source: the `reason` of each PeerError (errors.py), every
literal `mfaproxy_packets_dropped_total` label, and the literal reasons of rejects
(the engine's and the second-factor stage's `_reject`, directory rejections, factor
rejections). A new reason fails this test until the README says what it means.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mfaproxy import errors
from mfaproxy.directory.ldap import AD_REASONS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mfaproxy"


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"### {title}\n")
    end = text.index("\n## ", start)
    return text[start:end]


def documented(title: str) -> set[str]:
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", section(title)))


def literal_calls(attribute: str, position: int | None, keyword: str | None) -> set[str]:
    """String literals given to calls of `<anything>.attribute(...)` or `attribute(...)`."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if isinstance(node.func, ast.Name):
                name = node.func.id
            if name != attribute:
                continue
            values = list(node.args[position : position + 1]) if position is not None else []
            values += [k.value for k in node.keywords if keyword is not None and k.arg == keyword]
            found |= {
                v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            }
    return found


def drop_reasons() -> set[str]:
    peer = {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.PeerError)
    }
    counted = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        counted |= set(re.findall(r'PACKETS_DROPPED\.labels\(reason="([a-z_]+)"\)', text))
    return peer | counted


def reject_reasons() -> set[str]:
    reasons = literal_calls("_reject", 0, None)  # the engine and the second-factor stage
    reasons |= set(AD_REASONS.values())
    for path in (PACKAGE / "directory").rglob("*.py"):
        reasons |= set(re.findall(r'PrimaryOutcome\.REJECT, "([a-z_]+)"', path.read_text()))
    for path in [*(PACKAGE / "auth").rglob("*.py"), *(PACKAGE / "core").rglob("*.py")]:
        text = path.read_text()
        reasons |= set(re.findall(r'StepKind\.REJECT,\s*"([a-z_]+)"', text))
        reasons |= set(re.findall(r'PlanKind\.REFUSE[^)]*?reason="([a-z_]+)"', text))
    for path in (PACKAGE / "factors").rglob("*.py"):
        text = path.read_text()
        reasons |= set(re.findall(r'FactorResult\.reject\(\s*"([a-z_]+)"', text))
        reasons |= set(re.findall(r'Verdict\.REJECT,\s*"([a-z_]+)"', text))
    return reasons


def test_every_drop_reason_is_in_the_readme() -> None:
    missing = drop_reasons() - documented("Drop and reject reasons")
    assert sorted(missing) == []


def test_every_reject_reason_is_in_the_readme() -> None:
    missing = reject_reasons() - documented("Drop and reject reasons")
    assert sorted(missing) == []


def test_the_scans_find_reasons() -> None:
    # Both checks are only worth something if the scans see the code's reasons.
    assert {"unknown_client", "replayed", "bad_message_authenticator"} <= drop_reasons()
    assert {"bad_password", "login_policy_denied", "bad_code", "push_limited"} <= (reject_reasons())
