"""No log call uses a key the redactor blanks.

Such a key holds either a secret (which must not reach a log call at all) or an
ordinary value that the redactor then hides from the operator: the packet type logged
as `code=[redacted]` at debug level was one. Both are bugs, found here from the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mfaproxy.observability.logging import SENSITIVE_KEYS

PACKAGE = Path(__file__).resolve().parents[2] / "mfaproxy"
LOGGERS = {"log", "_log", "audit_log", "logger"}
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg", "bind"}


def log_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LEVELS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in LOGGERS
    ]


def test_no_log_call_passes_a_redacted_key() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in log_calls(ast.parse(path.read_text(), str(path))):
            for keyword in call.keywords:
                if keyword.arg is not None and keyword.arg.lower() in SENSITIVE_KEYS:
                    found.append(f"{path.relative_to(PACKAGE)}:{call.lineno} {keyword.arg}=")
    assert found == []


def test_the_scan_sees_log_calls() -> None:
    # The check above is only worth something if it finds the calls it inspects.
    tree = ast.parse('log.debug("request_received", code=1)\nother.debug("x", code=1)\n')
    assert [call.lineno for call in log_calls(tree)] == [1]
