"""FreeRADIUS's radclient as the NAS in end-to-end tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

RECEIVED = re.compile(r"Received ((?:Access|Accounting)-\w+) Id (\d+)")
ATTRIBUTE = re.compile(r"^\s+([\w-]+) = (.*)$")


@dataclass
class RadclientResult:
    code: str | None  # "Access-Accept", "Access-Challenge", "Accounting-Response"... or None
    attributes: list[tuple[str, str]] = field(default_factory=list)
    output: str = ""

    def values(self, name: str) -> list[str]:
        return [v.strip('"') for n, v in self.attributes if n == name]


def radclient(
    port: int,
    secret: str,
    attributes: dict[str, str],
    code: str = "auth",
    timeout: float = 3,
    retries: int = 1,
    host: str = "127.0.0.1",
) -> RadclientResult:
    binary = shutil.which("radclient")
    assert binary, "radclient (Debian freeradius-utils) is required"
    line = ",".join(f"{k}={v}" for k, v in attributes.items())
    proc = subprocess.run(
        [binary, "-x", "-r", str(retries), "-t", str(timeout), f"{host}:{port}", code, secret],
        input=line + "\n",
        capture_output=True,
        text=True,
        timeout=timeout * (retries + 1) + 10,
        check=False,
    )
    output = proc.stdout + proc.stderr
    result = RadclientResult(None, output=output)
    lines = output.splitlines()
    for index, text in enumerate(lines):
        match = RECEIVED.search(text)
        if match:
            result.code = match.group(1)
            for attr_line in lines[index + 1 :]:
                attr = ATTRIBUTE.match(attr_line)
                if not attr:
                    break
                result.attributes.append((attr.group(1), attr.group(2)))
    return result
