"""README "Drop and reject reasons" lists every reason the code can give.

The reasons are read from the source: the `reason` of each PeerError (errors.py), every
literal `mfaproxy_packets_dropped_total` label, and the literal reasons of rejects
(the engine's and the second-factor stage's `_reject`, directory rejections, factor
rejections), of accepts (`mfa_` + a factor's accept, the plans that skip the second
factor, the store failmode), of challenges (a factor's challenge reason, which the
audit log prefixes with the method) and of requests dropped after processing began
(`dropped = ...` in the engine). A new reason fails this test until the README says
what it means.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mfaproxy import errors
from mfaproxy.directory.ldap_results import AD_REASONS

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


def _strings(node: ast.expr | None, assigned: dict[str, list[ast.expr]]) -> set[str]:
    """The string values `node` can have: a literal, either branch of `a if c else b`,
    or what a plain name was assigned in the same function."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body, assigned) | _strings(node.orelse, assigned)
    if isinstance(node, ast.Name):
        return set().union(*(_strings(value, {}) for value in assigned.get(node.id, [])))
    return set()


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    named = [k.value for k in call.keywords if k.arg == keyword]
    if named:
        return named[0]
    return call.args[position] if len(call.args) > position else None


def _assignments(path: Path) -> dict[ast.Call, dict[str, list[ast.expr]]]:
    """For each call, the plain-name assignments of the function it is in."""
    found: dict[ast.Call, dict[str, list[ast.expr]]] = {}
    tree = ast.parse(path.read_text())
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assigned: dict[str, list[ast.expr]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                found.setdefault(node, assigned)
    return found


# How each call that makes a challenge names its reason: (position, keyword, default).
# `menu` is the Duo factor's helper that builds its prompt from the devices' capabilities.
CHALLENGE_CALLS = {
    "challenge": (2, "reason", "challenge"),
    "prompted": (3, "reason", "challenge"),
    "menu": (2, "reason", ""),
}


def challenge_results() -> set[str]:
    """The RESULT of every challenge a factor can answer (the audit says METHOD_RESULT)."""
    results: set[str] = set()
    for path in (PACKAGE / "factors").rglob("*.py"):
        for call, assigned in _assignments(path).items():
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else None
            name = func.id if isinstance(func, ast.Name) else name
            if name not in CHALLENGE_CALLS:
                continue
            position, keyword, default = CHALLENGE_CALLS[name]
            argument = _argument(call, position, keyword)
            values = _strings(argument, assigned)
            results |= values or ({default} if argument is None and default else set())
    return results


def accept_reasons() -> set[str]:
    """`mfa_` + every literal result a factor accepts with, the plans that accept without
    a second factor, and the engine's own accepts (a store failmode)."""
    reasons = {"mfa_" + r for r in literal_calls("accept", 0, None) if r != "ok"}
    for path in [*(PACKAGE / "auth").rglob("*.py"), *(PACKAGE / "core").rglob("*.py")]:
        text = path.read_text()
        reasons |= set(re.findall(r'PlanKind\.SKIP,\s*reason="([a-z_]+)"', text))
        reasons |= set(re.findall(r'replies\.accept\([^)]*?"([a-z_]+)"\)', text))
    return reasons


def audit_drop_reasons() -> set[str]:
    """What the engine's audit event says when a request it was processing got no answer."""
    text = (PACKAGE / "auth" / "engine.py").read_text()
    return set(re.findall(r'\bdropped = "([a-z_]+)"', text))


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


def test_every_accept_reason_is_in_the_readme() -> None:
    missing = accept_reasons() - documented("Drop and reject reasons")
    assert sorted(missing) == []


def test_every_challenge_reason_is_in_the_readme() -> None:
    # The audit reason is METHOD_RESULT: the README names it with a method in front.
    names = documented("Drop and reject reasons")
    missing = {r for r in challenge_results() if not any(n.endswith("_" + r) for n in names)}
    assert sorted(missing) == []


def test_every_audit_drop_reason_is_in_the_readme() -> None:
    missing = audit_drop_reasons() - documented("Drop and reject reasons")
    assert sorted(missing) == []


def test_the_scans_find_reasons() -> None:
    # Both checks are only worth something if the scans see the code's reasons.
    assert {"unknown_client", "replayed", "bad_message_authenticator"} <= drop_reasons()
    assert {"bad_password", "login_policy_denied", "bad_code", "push_limited"} <= (reject_reasons())
    assert {"mfa_code_ok", "mfa_skipped", "store_failmode_safe"} <= accept_reasons()
    assert {"challenge", "enrolment", "code_sent", "passcode_needed"} <= challenge_results()
    assert {"internal_error", "cancelled"} <= audit_drop_reasons()
