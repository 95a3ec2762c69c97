"""PAP accept-path throughput: mfaproxy (local argon2id users) against FreeRADIUS (files).

    python -m bench.pap_throughput [--seconds 10] [--requests 100000] [--concurrency 32]
                                   [--users 1000] [--json PATH]

One run starts, one after the other, on loopback and free ports:

1. mfaproxy (the real daemon process) with the local backend, once per argon2id profile:
   `default` (argon2-cffi's defaults, what `mfaproxy users hash-password` writes: the
   production cost) and `cheap` (time_cost=1, memory_cost=1 MiB, parallelism=1: what is
   left is the proxy's own overhead). MFA is skipped by policy, logs are at `warning`.
2. FreeRADIUS with the same users as Cleartext-Password in its `files` module, the
   setup a FreeRADIUS operator would compare with.

Each server gets the same workload (random users, right passwords, PAP, signed with
Message-Authenticator) from `bench.loadgen` in this process, for `--seconds` or
`--requests`, whichever comes first, after a short warm-up. The generator shares the
machine's cores with the server it measures; its own CPU use is printed with the results.
Speed is reported here, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from argon2 import PasswordHasher

from bench.loadgen import Request, RunResult, build_requests, run_async, run_load
from tests.support.freeradius import FreeRadiusServer, UserSpec, status_server_answered
from tests.support.ports import free_udp_port

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SECRET = "bench-shared-secret"
# argon2id at the default cost takes ~0.1 s per hash here: hashing every user would take
# minutes, so users share a small set of passwords (one hash per password and profile).
# The verify cost per request does not depend on it.
DISTINCT_PASSWORDS = 32
PROFILES: dict[str, PasswordHasher] = {
    "default": PasswordHasher(),
    "cheap": PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
}

# FreeRADIUS answers ~50,000/s here: 20,000 requests would be over in 0.4 s, too short to
# be stable, so the request cap is higher (each request is pre-built: ~6 us, ~0.5 KB).
DEFAULT_REQUESTS = 100_000
WARMUP_REQUESTS = 20_000

Credentials = list[tuple[str, str]]


# --------------------------------------------------------------------------- users


def make_users(count: int) -> dict[str, str]:
    passwords = [
        f"bench-pw-{i:02d}-{random.Random(i).getrandbits(40):010x}"
        for i in range(DISTINCT_PASSWORDS)
    ]
    return {f"bench-user-{i:05d}": passwords[i % DISTINCT_PASSWORDS] for i in range(count)}


def make_workload(users: dict[str, str], count: int, seed: int) -> Credentials:
    rng = random.Random(seed)
    names = sorted(users)
    return [(name, users[name]) for name in rng.choices(names, k=count)]


def hash_users(users: dict[str, str], hasher: PasswordHasher) -> dict[str, str]:
    distinct = sorted(set(users.values()))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        hashes = dict(zip(distinct, pool.map(hasher.hash, distinct), strict=True))
    return {name: hashes[password] for name, password in users.items()}


def write_users_file(path: Path, hashes: dict[str, str]) -> None:
    users = {name: {"password_hash": value} for name, value in hashes.items()}
    path.write_text(yaml.safe_dump({"users": users}), encoding="utf-8")


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot (the `cpu` line of /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    wall: float
    busy: float
    server_cpu: float | None

    @classmethod
    def take(cls, pid: int | None) -> Snapshot:
        server = cpu_seconds(pid) if pid is not None else None
        return cls(time.monotonic(), system_busy_seconds(), server)


def child_pid(command: str) -> int | None:
    """The pid of our child process named `command` (FreeRADIUS does not expose it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if name == command and ppid == os.getpid():
            return int(entry.name)
    return None


class Mfaproxy:
    """The real daemon, `python -m mfaproxy serve`, with logs at warning and above.

    tests.support.daemon waits for the `listening` event, which is logged at info; here
    readiness is a verified Status-Server reply instead, so logging stays quiet."""

    def __init__(self, workdir: Path, users_file: Path, log_level: str) -> None:
        self.workdir = workdir
        self.port = free_udp_port(HOST)
        self.config_path = workdir / "mfaproxy.yaml"
        self.log_path = workdir / "mfaproxy.log"
        config: dict[str, Any] = {
            "server": {
                "listen": [f"{HOST}:{self.port}"],
                "log": {"format": "json", "level": log_level},
                "state_dir": str(workdir / "state"),
            },
            "clients": [
                {
                    "name": "bench",
                    "address": [f"{HOST}/32"],
                    "secret": SECRET,
                    "require_message_authenticator": True,
                }
            ],
            "directory": {"backend": "local", "local": {"users_file": str(users_file)}},
            "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
        }
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def start(self, timeout: float = 30.0) -> None:
        argv = [sys.executable, "-m", "mfaproxy", "serve", "--config", str(self.config_path)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if status_server_answered(HOST, self.port, SECRET, wait=0.1):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mfaproxy did not become ready:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> Mfaproxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    server: str
    profile: str
    result: RunResult
    server_cpu: float | None
    # CPU cores busy with anything else during the run (other processes, the kernel).
    other_cores: float

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        answered = self.result.accepts + self.result.rejects + self.result.bad_replies
        if self.server_cpu is None or answered == 0:
            return None
        return self.server_cpu * 1000 / answered

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "server": self.server,
            "profile": self.profile,
            "sent": r.sent,
            "accepts": r.accepts,
            "rejects": r.rejects,
            "timeouts": r.timeouts,
            "bad_replies": r.bad_replies,
            "unmatched_replies": r.unmatched_replies,
            "socket_errors": r.socket_errors,
            "elapsed_s": round(r.elapsed, 3),
            "accepts_per_s": round(r.accepts_per_second, 1),
            "latency_ms": {
                name: round(r.percentile(q) * 1000, 3)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "server_cpu_s": None if self.server_cpu is None else round(self.server_cpu, 3),
            "server_cpu_ms_per_request": _round(self.server_cpu_ms_per_request, 4),
            "loadgen_cpu_s": round(r.loadgen_cpu, 3),
            "other_cpu_cores": round(self.other_cores, 3),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def measure(
    server: str,
    profile: str,
    address: tuple[str, int],
    pid: int | None,
    workload: Credentials,
    args: argparse.Namespace,
) -> Row:
    secret = SECRET.encode()

    def load(requests: list[Request], seconds: float) -> RunResult:
        return run_async(
            run_load(
                address,
                secret,
                requests,
                seconds=seconds,
                concurrency=args.concurrency,
                sockets=args.sockets,
                timeout=args.timeout,
            )
        )

    print(f"  {server} ({profile}): warm-up {args.warmup:g} s, then measuring ...", flush=True)
    if args.warmup > 0:
        load(build_requests(workload, secret, min(args.requests, WARMUP_REQUESTS)), args.warmup)
    # Start half-way through the workload, so the warm-up did not already pick these users.
    half = len(workload) // 2
    requests = build_requests(workload[half:] + workload[:half], secret, args.requests)
    before = Snapshot.take(pid)
    result = load(requests, args.seconds)
    after = Snapshot.take(pid)
    server_cpu = None
    if after.server_cpu is not None and before.server_cpu is not None:
        server_cpu = after.server_cpu - before.server_cpu
    wall = after.wall - before.wall
    others = after.busy - before.busy - (server_cpu or 0.0) - result.loadgen_cpu
    return Row(server, profile, result, server_cpu, max(0.0, others) / wall)


def run_mfaproxy(
    workdir: Path, users: dict[str, str], workload: Credentials, args: argparse.Namespace
) -> list[Row]:
    rows = []
    for profile in args.profiles:
        started = time.monotonic()
        hashes = hash_users(users, PROFILES[profile])
        print(f"  {profile}: hashed in {time.monotonic() - started:.1f} s", flush=True)
        profile_dir = workdir / f"mfaproxy-{profile}"
        profile_dir.mkdir()
        users_file = profile_dir / "users.yaml"
        write_users_file(users_file, hashes)
        with Mfaproxy(profile_dir, users_file, args.log_level) as proxy:
            assert proxy.proc is not None
            rows.append(measure("mfaproxy", profile, proxy.address, proxy.proc.pid, workload, args))
    return rows


def run_freeradius(users: dict[str, str], workload: Credentials, args: argparse.Namespace) -> Row:
    specs = {name: UserSpec(password) for name, password in users.items()}
    with FreeRadiusServer(specs, secret=SECRET, host=HOST) as radius:
        pid = child_pid("freeradius")
        return measure("freeradius", "cleartext", radius.address, pid, workload, args)


# --------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def print_report(rows: list[Row], args: argparse.Namespace) -> None:
    header = (
        f"{'server':<11} {'profile':<10} {'accepts':>8} {'req/s':>9} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'timeouts':>8} {'errors':>6} "
        f"{'srv CPU ms/req':>14} {'loadgen CPU':>11} {'other CPU':>9}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row.result
        cpu = row.server_cpu_ms_per_request
        loadgen = r.loadgen_cpu / r.elapsed if r.elapsed > 0 else 0.0
        print(
            f"{row.server:<11} {row.profile:<10} {r.accepts:>8} {r.accepts_per_second:>9.1f} "
            f"{_ms(r.percentile(0.5)):>8} {_ms(r.percentile(0.9)):>8} "
            f"{_ms(r.percentile(0.99)):>8} {_ms(r.percentile(1.0)):>8} {r.timeouts:>8} "
            f"{r.errors + r.unmatched_replies:>6} {'-' if cpu is None else f'{cpu:.3f}':>14} "
            f"{loadgen:>11.0%} {row.other_cores:>9.0%}"
        )
    print()
    for profile, ratio in ratios(rows).items():
        print(
            f"mfaproxy/FreeRADIUS req/s, {profile} profile: {ratio:.4f} ({1 / ratio:.1f}x slower)"
        )
    print(
        f"\nconcurrency {args.concurrency} over {args.sockets} sockets, {args.users} users, "
        f"{os.cpu_count()} CPUs shared by the server and this load generator.\n"
        "CPU columns are % of one core; 'other' is everything else on the machine "
        "(other processes, interrupts): high values mean the numbers are noisy."
    )


def ratios(rows: list[Row]) -> dict[str, float]:
    reference = next((r for r in rows if r.server == "freeradius"), None)
    if reference is None or reference.result.accepts_per_second == 0:
        return {}
    return {
        row.profile: row.result.accepts_per_second / reference.result.accepts_per_second
        for row in rows
        if row.server == "mfaproxy" and row.result.accepts_per_second > 0
    }


def write_json(path: Path, rows: list[Row], args: argparse.Namespace) -> None:
    document = {
        "benchmark": "pap_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": platform.python_version(),
        "settings": {
            key: getattr(args, key)
            for key in ("seconds", "requests", "concurrency", "users", "sockets", "timeout")
        },
        "results": [row.as_dict() for row in rows],
        "ratio_mfaproxy_over_freeradius": {k: round(v, 5) for k, v in ratios(rows).items()},
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pap_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per server and profile")
    parser.add_argument(
        "--requests", type=int, default=DEFAULT_REQUESTS, help="per server and profile"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests outstanding")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=4, help="load generator source ports")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds, no retransmits")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument(
        "--profiles",
        type=lambda text: [p for p in text.split(",") if p],
        default=["default", "cheap"],
        help="argon2 profiles, comma-separated (default,cheap)",
    )
    parser.add_argument("--no-freeradius", action="store_true", help="measure mfaproxy only")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--seed", type=int, default=1812)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    unknown = [p for p in args.profiles if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s) {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    if args.seconds <= 0 or args.requests < 1 or args.users < 1:
        parser.error("--seconds, --requests and --users must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    users = make_users(args.users)
    workload = make_workload(users, min(args.requests, 50_000), args.seed)
    print(
        f"PAP throughput: {args.users} users, concurrency {args.concurrency}, "
        f"{args.seconds:g} s or {args.requests} requests per run",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mfaproxy-bench-") as tmp:
        rows += run_mfaproxy(Path(tmp), users, workload, args)
    if not args.no_freeradius:
        rows.append(run_freeradius(users, workload, args))
    print_report(rows, args)
    if args.json is not None:
        write_json(args.json, rows, args)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
