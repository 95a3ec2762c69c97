"""CPU accounting from /proc: per process tree, for the whole machine, for this process.

Every figure is user + system CPU time (all threads). A server's figure is the sum over
its process and all its descendants alive at the time (mfaproxy's workers, say), read
before and after a run; a process that starts or exits during the run is not counted,
so the benchmark keeps its servers up across runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU time of one process (all its threads); 0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def system_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot (the `cpu` line of /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / TICK


@dataclass(frozen=True)
class Snapshot:
    wall: float
    busy: float
    # Process name -> CPU seconds of its tree.
    cpu: Mapping[str, float]

    @classmethod
    def take(cls, roots: Mapping[str, int]) -> Snapshot:
        cpu = {name: tree_cpu_seconds(pid) for name, pid in roots.items()}
        return cls(time.monotonic(), system_busy_seconds(), cpu)


def machine_load() -> str:
    """The 1, 5 and 15 minute load averages, for the report."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
