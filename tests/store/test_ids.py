"""Reservation tokens: unique within a process and across processes, no syscall each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mfaproxy.store.ids import unique_token

REPO = Path(__file__).resolve().parents[2]


def test_tokens_are_unique_within_a_process() -> None:
    tokens = [unique_token() for _ in range(10_000)]
    assert len(set(tokens)) == len(tokens)


def test_each_process_has_its_own_prefix() -> None:
    script = "from mfaproxy.store.ids import unique_token; print(unique_token())"
    others = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.strip()
        for _ in range(3)
    }
    mine = unique_token()
    # Each process's first token is its prefix and counter 0: all differ from each
    # other and from every token of this process.
    assert len(others) == 3
    assert not any(other[:16] == mine[:16] for other in others)
