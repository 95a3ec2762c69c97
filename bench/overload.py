"""Overload: a burst of 5 x capacity for 5 s from one NAS, a well-behaved NAS beside it.

    python -m bench.overload [--baseline a1e9761] [--burst-factor 5] [--burst-seconds 5]
                             [--after 30] [--probe-interval 0.25] [--json PATH]

Each build runs the real daemon (local users file at the production argon2id cost, MFA
skipped, metrics on). The "before" build is an older commit checked out in a temporary
`git worktree` and run from there; "after" is this tree. For each:

1. capacity (measured once, on "after", unless `--capacity`): logins answered per second
   by a closed loop of `--capacity-concurrency` logins from the flood address;
2. a timeline from two source addresses on loopback: the well-behaved NAS (127.0.0.2)
   starts one login every `--probe-interval` seconds throughout; after `--warmup`
   seconds the flood NAS (127.0.0.1) starts `burst-factor x capacity` logins per second
   for `--burst-seconds`; then `--after` seconds of observation. Both NAS retransmit an
   unanswered request after 3 s, twice, then give up (9 s), as radclient does.

Figures: the share of the well-behaved NAS's logins started during the burst that were
answered (at all, and on the first try); the seconds from the end of the burst until
its service is normal again (the first probe from which every later one is answered on
its first try within `--normal-latency` s); and the accounting of every datagram sent:
what the daemon counted (processed, duplicates, dropped, shed, lost in the kernel's
socket buffer) against what was sent. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import run_async
from bench.nas import Login, Nas
from bench.procs import machine_load
from bench.servers import HOST, REPO, SECRET, Mfaproxy, argon2_hashes, make_users, write_users_file
from tests.support.ports import free_port

FLOOD, OFFICE = "127.0.0.1", "127.0.0.2"
NAS_TIMEOUT, NAS_RETRIES = 3.0, 2


@dataclass
class Outcome:
    build: str
    capacity: float
    flood_rate: float
    flood_logins: int = 0
    flood_answered: int = 0
    probes_during_burst: int = 0
    answered_during_burst: int = 0
    first_try_during_burst: int = 0
    recovery_seconds: float | None = None
    sent: int = 0
    counted: dict[str, float] = field(default_factory=dict)
    shed_reasons: dict[str, float] = field(default_factory=dict)
    flood_codes: dict[int, int] = field(default_factory=dict)
    decisions: dict[str, float] = field(default_factory=dict)

    @property
    def answered_share(self) -> float:
        return self.answered_during_burst / max(1, self.probes_during_burst)

    @property
    def first_try_share(self) -> float:
        return self.first_try_during_burst / max(1, self.probes_during_burst)

    @property
    def uncounted(self) -> float:
        return self.sent - sum(self.counted.values())


# --------------------------------------------------------------------------- metrics


def scrape(port: int, patience: float = 30.0) -> dict[str, float]:
    """Sample totals by family and label set: `name{label=value}`. The metrics page may
    come up a moment after the RADIUS port answers: retried for `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


def accounting(samples: dict[str, float]) -> dict[str, float]:
    """Every datagram the daemon received (or the kernel dropped), by what became of it:
    each in exactly one row. A request shed inside the engine (at a pool) was counted as
    a request first: it is moved from `processed` to `shed`."""
    shed = total(samples, "mfaproxy_requests_shed_total")
    queued_shed = total(samples, "mfaproxy_requests_shed_total", reason="intake_full") + total(
        samples, "mfaproxy_requests_shed_total", reason="intake_wait"
    )
    return {
        "processed": total(samples, "mfaproxy_requests_total") - (shed - queued_shed),
        "duplicates": total(samples, "mfaproxy_duplicates_total"),
        "dropped": total(samples, "mfaproxy_packets_dropped_total"),
        "shed": shed,
        "kernel_buffer": total(samples, "mfaproxy_receive_buffer_drops_total"),
    }


def shed_reasons(samples: dict[str, float]) -> dict[str, float]:
    prefix = "mfaproxy_requests_shed_total{reason="
    return {k[len(prefix) : -1]: v for k, v in samples.items() if k.startswith(prefix)}


async def settled(port: int, limit: float = 180.0) -> dict[str, float]:
    """Metrics once nothing is in flight or queued any more (or `limit` s passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        samples = await asyncio.to_thread(scrape, port)
        busy = total(samples, "mfaproxy_requests_in_flight") + total(
            samples, "mfaproxy_intake_queue_depth"
        )
        if busy == 0 or loop.time() > deadline:
            return samples
        await asyncio.sleep(1.0)


# --------------------------------------------------------------------------- runs


async def measure_capacity(
    address: tuple[str, int], users: list[tuple[str, str]], concurrency: int, seconds: float
) -> float:
    nas = Nas(FLOOD, address, SECRET.encode(), timeout=30, retries=0)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    answered = 0

    async def worker(index: int) -> None:
        nonlocal answered
        rng = random.Random(index)
        while loop.time() < end:
            result = await nas.login(*rng.choice(users))
            if result.code == 2 and loop.time() <= end:
                answered += 1

    start = loop.time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    nas.close()
    return answered / (min(loop.time(), end) - start)


def recovery(probes: list[Login], burst_end: float, normal: float) -> float | None:
    """Seconds after `burst_end` until every later probe is normal (None: never)."""
    after = sorted((p for p in probes if p.started >= burst_end), key=lambda p: p.started)
    first_normal: float | None = None
    for probe in after:
        ok = probe.code == 2 and probe.tries == 1 and (probe.latency or normal + 1) <= normal
        if not ok:
            first_normal = None
        elif first_normal is None:
            first_normal = probe.started
    return None if first_normal is None else max(0.0, first_normal - burst_end)


async def timeline(
    outcome: Outcome, address: tuple[str, int], metrics_port: int, args: argparse.Namespace
) -> None:
    users = list(make_users(args.users).items())
    flood_users, office_users = users[: len(users) // 2], users[len(users) // 2 :]
    flood = Nas(FLOOD, address, SECRET.encode(), NAS_TIMEOUT, NAS_RETRIES)
    office = Nas(OFFICE, address, SECRET.encode(), NAS_TIMEOUT, NAS_RETRIES)
    loop = asyncio.get_running_loop()
    start = loop.time()
    burst_start = start + args.warmup
    burst_end = burst_start + args.burst_seconds
    end = burst_end + args.after
    tasks: list[asyncio.Task[Login]] = []
    rng = random.Random(5080)

    async def probes() -> None:
        at = start
        while at < end:
            tasks.append(asyncio.ensure_future(office.login(*rng.choice(office_users))))
            at += args.probe_interval
            await asyncio.sleep(max(0.0, at - loop.time()))

    async def burst() -> None:
        await asyncio.sleep(max(0.0, burst_start - loop.time()))
        count = round(outcome.flood_rate * args.burst_seconds)
        for index in range(count):
            at = burst_start + index / outcome.flood_rate
            await asyncio.sleep(max(0.0, at - loop.time()))
            tasks.append(asyncio.ensure_future(flood.login(*rng.choice(flood_users))))

    await asyncio.gather(probes(), burst())
    await asyncio.gather(*tasks)  # every login answered or given up (9 s at most)
    samples = await settled(metrics_port)
    flood.close()
    office.close()

    during = [p for p in office.logins if burst_start <= p.started < burst_end]
    outcome.probes_during_burst = len(during)
    outcome.answered_during_burst = sum(1 for p in during if p.code == 2)
    outcome.first_try_during_burst = sum(
        1 for p in during if p.code == 2 and p.tries == 1 and (p.latency or 99) <= NAS_TIMEOUT
    )
    outcome.recovery_seconds = recovery(office.logins, burst_end, args.normal_latency)
    outcome.flood_logins = len(flood.logins)
    outcome.flood_answered = sum(1 for p in flood.logins if p.code == 2)
    # Status-Server probes of the start-up check are not counted by the daemon either.
    outcome.sent = flood.sent + office.sent
    outcome.counted = accounting(samples)
    outcome.shed_reasons = shed_reasons(samples)
    for login in flood.logins:
        code = login.code or 0
        outcome.flood_codes[code] = outcome.flood_codes.get(code, 0) + 1
    outcome.decisions = {
        k.removeprefix("mfaproxy_decisions_total"): v
        for k, v in samples.items()
        if k.startswith("mfaproxy_decisions_total{")
    }
    if args.capacity_run_counts is not None:
        outcome.counted = {
            k: v - args.capacity_run_counts.get(k, 0.0) for k, v in outcome.counted.items()
        }


def daemon(workdir: Path, repo: Path, users_file: Path, metrics_port: int) -> Mfaproxy:
    config: dict[str, Any] = {
        # Keys every build knows: the old commit's schema refuses new ones.
        "server": {"metrics": {"listen": f"{HOST}:{metrics_port}"}},
        "clients": [
            {"name": "flood", "address": [f"{FLOOD}/32"], "secret": SECRET},
            {"name": "office", "address": [f"{OFFICE}/32"], "secret": SECRET},
        ],
        "directory": {"backend": "local", "local": {"users_file": str(users_file)}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }
    return Mfaproxy(workdir, config, repo=repo)


def run_build(
    build: str, repo: Path, tmp: Path, users_file: Path, args: argparse.Namespace
) -> Outcome:
    metrics_port = free_port()
    with daemon(tmp / build, repo, users_file, metrics_port) as server:
        users = list(make_users(args.users).items())
        if args.capacity is None:
            args.capacity = run_async(
                measure_capacity(
                    server.address, users, args.capacity_concurrency, args.capacity_seconds
                )
            )
        # The capacity run (if any) went to this daemon: count from here on.
        args.capacity_run_counts = accounting(scrape(metrics_port))
        outcome = Outcome(build, args.capacity, args.capacity * args.burst_factor)
        run_async(timeline(outcome, server.address, metrics_port, args))
        args.capacity_run_counts = None
    return outcome


# --------------------------------------------------------------------------- report


def _share(value: float) -> str:
    return f"{100 * value:.0f} %"


def print_report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    names = [o.build for o in outcomes]
    rows: list[tuple[str, list[str]]] = [
        ("capacity (logins/s)", [f"{o.capacity:.1f}" for o in outcomes]),
        ("flood: logins/s x s", [f"{o.flood_rate:.0f} x {args.burst_seconds:g}" for o in outcomes]),
        ("flood logins answered", [f"{o.flood_answered}/{o.flood_logins}" for o in outcomes]),
        (
            "  accepted / rejected / none",
            [
                f"{o.flood_codes.get(2, 0)} / {o.flood_codes.get(3, 0)} / {o.flood_codes.get(0, 0)}"
                for o in outcomes
            ],
        ),
        ("office logins in the burst", [str(o.probes_during_burst) for o in outcomes]),
        (
            "  answered (within 9 s)",
            [f"{o.answered_during_burst} ({_share(o.answered_share)})" for o in outcomes],
        ),
        (
            "  answered on the first try",
            [f"{o.first_try_during_burst} ({_share(o.first_try_share)})" for o in outcomes],
        ),
        (
            "recovery after the burst (s)",
            [
                f"{o.recovery_seconds:.1f}"
                if o.recovery_seconds is not None
                else f"> {args.after:g}"
                for o in outcomes
            ],
        ),
        ("datagrams sent", [str(o.sent) for o in outcomes]),
    ]
    for key in ("processed", "duplicates", "dropped", "shed", "kernel_buffer"):
        rows.append((f"  counted: {key}", [f"{o.counted.get(key, 0):.0f}" for o in outcomes]))
    rows.append(("  not counted anywhere", [f"{o.uncounted:.0f}" for o in outcomes]))
    reasons = sorted({r for o in outcomes for r in o.shed_reasons})
    for reason in reasons:
        rows.append(
            (f"  shed: {reason}", [f"{o.shed_reasons.get(reason, 0):.0f}" for o in outcomes])
        )
    width = max(len(label) for label, _ in rows)
    print(f"\n{'':{width}}  " + "  ".join(f"{n:>18}" for n in names))
    for label, values in rows:
        print(f"{label:{width}}  " + "  ".join(f"{v:>18}" for v in values))
    print(f"\nload average before/after: {args.load_before} / {machine_load()}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--baseline", default="a1e9761", help="the 'before' commit")
    parser.add_argument("--no-baseline", action="store_true", help="this tree only")
    parser.add_argument("--capacity", type=float, default=None, help="logins/s (else measured)")
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--capacity-concurrency", type=int, default=4)
    parser.add_argument("--burst-factor", type=float, default=5.0)
    parser.add_argument("--burst-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--after", type=float, default=30.0, help="seconds watched after")
    parser.add_argument("--probe-interval", type=float, default=0.25)
    parser.add_argument("--normal-latency", type=float, default=1.0)
    parser.add_argument("--users", type=int, default=2000, help="half flood, half office")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.capacity_run_counts = None
    args.load_before = machine_load()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mfaproxy-bench-overload-") as name:
        tmp = Path(name)
        users_file = tmp / "users.yaml"
        write_users_file(users_file, argon2_hashes(make_users(args.users), "default"))
        builds: list[tuple[str, Path]] = []
        baseline = tmp / "baseline"
        if not args.no_baseline:
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(baseline), args.baseline],
                cwd=REPO,
                check=True,
            )
            builds.append((f"before ({args.baseline})", baseline))
        builds.append(("after (this tree)", REPO))
        outcomes: list[Outcome] = []
        try:
            # "after" first: it measures the capacity both builds are flooded with.
            for build, repo in reversed(builds):
                print(f"running {build}...", flush=True)
                outcomes.insert(0, run_build(build, repo, tmp, users_file, args))
                time.sleep(2)
        finally:
            if not args.no_baseline:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False
                )
    print_report(outcomes, args)
    if args.json is not None:
        data = [{**asdict(o), "uncounted": o.uncounted} for o in outcomes]
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
