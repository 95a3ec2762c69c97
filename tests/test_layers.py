"""The architecture holds (README "Architecture"): pure packages stay pure at run time.

`make lint` runs import-linter over our own imports (layers, and no I/O module imported
from a pure package). This checks what actually gets loaded, through third-party code
too: a fresh interpreter importing every pure module has no I/O library in sys.modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mfaproxy"
PURE = ("core", "otp", "radius", "config")
FORBIDDEN = ("asyncio", "redis", "psycopg", "ldap", "ldap3", "aiohttp", "aiosmtplib", "sqlite3")
# Reading the clock: pure code is given `now` instead.
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
}


def pure_modules() -> list[str]:
    names = ["mfaproxy.errors"]
    for package in PURE:
        for path in sorted((PACKAGE / package).glob("*.py")):
            stem = "" if path.stem == "__init__" else f".{path.stem}"
            names.append(f"mfaproxy.{package}{stem}")
    return names


def loaded_after_import(modules: list[str]) -> list[str]:
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    found: list[str] = json.loads(out)
    return found


def test_pure_modules_load_no_io_library() -> None:
    modules = pure_modules()
    assert len(modules) > 20
    if loaded_after_import(modules):  # name the culprits, one fresh interpreter each
        culprits = {m: loaded_after_import([m]) for m in modules}
        pytest.fail(f"I/O libraries loaded: { {m: f for m, f in culprits.items() if f} }")


@pytest.mark.parametrize("module", pure_modules())
def test_pure_modules_read_no_clock(module: str) -> None:
    relative = module.removeprefix("mfaproxy.").replace(".", "/")
    path = PACKAGE / (relative + ".py")
    if not path.exists():
        path = PACKAGE / relative / "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in CLOCK_CALLS, f"{path}:{node.lineno}"


def test_package_root_holds_only_the_entry_points_and_errors() -> None:
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "errors.py"]
