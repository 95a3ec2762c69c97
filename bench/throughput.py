"""Throughput, mfaproxy beside FreeRADIUS 3.2 on the same machine, the same load.

    python -m bench.throughput [--rounds 3] [--seconds 8] [--concurrency 32]
                               [--workloads pap,ldap,totp,hash] [--workers N] [--json PATH]

Every server is started once, on loopback and free ports, and stays up; then each round
measures every workload on both servers in turn, alternating which goes first, so a
change in the machine's load hits both sides alike. The workloads:

- `pap`: PAP against local users. mfaproxy: users file at the cheapest argon2id (what is
  left is the proxy); FreeRADIUS: `files` with Cleartext-Password.
- `ldap`: search then bind against one shared slapd (1000 users in a memberOf group).
  mfaproxy: `directory.backend: ldap` with a service account; FreeRADIUS: rlm_ldap
  (pooled connections: search, then bind as the user in `authenticate`).
- `totp`: the full TOTP login through mfaproxy (password, Access-Challenge, code, Accept)
  against the FreeRADIUS PAP rate of the same round (FreeRADIUS has no TOTP).
- `hash`: local users at mfaproxy's default argon2id cost against FreeRADIUS `files`
  with `$6$` Crypt-Password (SHA-512 crypt, 5000 rounds).

MFA is skipped by policy except in `totp`. CPU per login is read from /proc for each
process tree (mfaproxy with its workers, FreeRADIUS, slapd, this load generator) and
for the machine ("other": everything else, e.g. other people's test runs). Speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import servers
from bench.loadgen import (
    STATE,
    Request,
    Responder,
    RunResult,
    attribute,
    build_request,
    build_requests,
    reply_attribute,
    run_async,
    run_load,
)
from bench.procs import Snapshot, machine_load
from tests.support.freeradius import FreeRadiusServer, LdapBackend, UserSpec
from tests.support.slapd import SERVICE_DN, SERVICE_PASSWORD, SlapdServer

WORKLOADS = ("pap", "ldap", "totp", "hash")
WARMUP_REQUESTS = 20_000


@dataclass
class Target:
    """One server as a workload drives it."""

    workload: str
    server: str  # "mfaproxy" or "freeradius"
    label: str
    address: tuple[str, int]
    # Process trees whose CPU is charged to this run, by name.
    roots: Callable[[], dict[str, int]]
    # Where the first-round requests come from.
    cursor: Cursor
    respond: Responder | None = None


@dataclass
class Row:
    round: int
    target: Target
    result: RunResult
    cpu: dict[str, float]
    loadgen_cpu: float
    other_cores: float
    load: str

    @property
    def logins(self) -> int:
        return self.result.accepts

    @property
    def rate(self) -> float:
        return self.result.accepts_per_second

    def cpu_ms_per_login(self, name: str) -> float | None:
        answered = self.result.accepts + self.result.rejects + self.result.bad_replies
        if name not in self.cpu or answered == 0:
            return None
        return self.cpu[name] * 1000 / answered

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "round": self.round,
            "workload": self.target.workload,
            "server": self.target.server,
            "label": self.target.label,
            "logins": r.accepts,
            "rejects": r.rejects,
            "timeouts": r.timeouts,
            "bad_replies": r.bad_replies,
            "unmatched_replies": r.unmatched_replies,
            "socket_errors": r.socket_errors,
            "requests_sent": r.sent,
            "elapsed_s": round(r.elapsed, 3),
            "logins_per_s": round(self.rate, 1),
            "latency_ms": {
                name: round(r.percentile(q) * 1000, 3)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "cpu_ms_per_login": {
                name: round(v, 4)
                for name in self.cpu
                if (v := self.cpu_ms_per_login(name)) is not None
            },
            "loadgen_cpu_cores": round(self.loadgen_cpu, 3),
            "other_cpu_cores": round(self.other_cores, 3),
            "loadavg": self.load,
        }


@dataclass
class Cursor:
    """Walks a list of credentials, wrapping around; shared by the rounds of a workload
    so TOTP users are reused as late as possible."""

    credentials: list[tuple[str, str]]
    secret: bytes
    position: int = 0
    _start: int = 0

    def take(self, count: int) -> list[Request]:
        size = len(self.credentials)
        self._start = self.position
        chosen = [self.credentials[(self.position + i) % size] for i in range(count)]
        self.position = (self.position + count) % size
        return build_requests(chosen, self.secret, count)

    def used(self, count: int) -> None:
        """Only `count` of the last `take` were sent: the next take starts after them."""
        self.position = (self._start + count) % len(self.credentials)


# --------------------------------------------------------------------------- TOTP


def totp_code(key: bytes, step: int, digits: int = 6) -> str:
    """RFC 6238 (HOTP of the time step, RFC 4226 section 5.3), SHA-1."""
    digest = hmac.digest(key, struct.pack(">Q", step), hashlib.sha1)
    offset = digest[-1] & 0x0F
    value = int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_responder(secrets: dict[str, str], radius_secret: bytes) -> Responder:
    import base64

    keys = {user: base64.b32decode(secret) for user, secret in secrets.items()}

    def respond(request: Request, reply: bytes) -> Request | None:
        state = reply_attribute(reply, STATE)
        if state is None:
            return None
        code = totp_code(keys[request.user], int(time.time() // servers.TOTP_PERIOD))
        return build_request(request.user, code, radius_secret, attribute(STATE, state))

    return respond


# --------------------------------------------------------------------------- setup


def _mfaproxy(
    stack: contextlib.ExitStack, workdir: Path, config: dict[str, Any], args: Any
) -> servers.Mfaproxy:
    if args.workers:
        server = config.setdefault("server", {})
        server["workers"] = args.workers
    if args.state_store != "memory" or args.workers > 1:
        # The workers of one host share challenges, replay marks and the duplicate
        # table through one SQLite file.
        config.setdefault("server", {})["state_store"] = {"backend": "sqlite"}
    proxy = servers.Mfaproxy(workdir, config, args.log_level)
    stack.enter_context(proxy)
    return proxy


def _local(users_file: Path) -> dict[str, Any]:
    return {"backend": "local", "local": {"users_file": str(users_file)}}


SKIP_MFA = {"mfa": {"default_action": "mfa_skipped"}}


def setup(stack: contextlib.ExitStack, tmp: Path, args: argparse.Namespace) -> list[Target]:
    secret = servers.SECRET.encode()
    users = servers.make_users(args.users)
    mix = servers.workload(users, 50_000, args.seed)
    targets: list[Target] = []
    chosen = set(args.workloads)
    if chosen & {"pap", "totp"}:
        started = time.monotonic()
        specs = {name: UserSpec(password) for name, password in users.items()}
        files = stack.enter_context(FreeRadiusServer(specs, secret=servers.SECRET))
        targets.append(_fr_target("pap", "files cleartext", files, Cursor(mix, secret)))
        print(f"  FreeRADIUS files up ({time.monotonic() - started:.1f} s)", flush=True)
    if "pap" in chosen:
        users_file = tmp / "users-cheap.yaml"
        servers.write_users_file(users_file, servers.argon2_hashes(users, "cheap"))
        proxy = _mfaproxy(
            stack,
            tmp / "pap",
            {"directory": _local(users_file), "access_policies": SKIP_MFA},
            args,
        )
        targets.append(_proxy_target("pap", "local, cheapest argon2id", proxy, Cursor(mix, secret)))
        print("  mfaproxy (pap) up", flush=True)
    if "ldap" in chosen:
        targets += _setup_ldap(stack, tmp, users, mix, args)
    if "totp" in chosen:
        targets.append(_setup_totp(stack, tmp, args))
    if "hash" in chosen:
        started = time.monotonic()
        specs = {
            name: UserSpec(password, crypt_hash=crypted)
            for (name, password), crypted in zip(
                users.items(), servers.crypt_hashes(users).values(), strict=True
            )
        }
        crypt = stack.enter_context(FreeRadiusServer(specs, secret=servers.SECRET))
        targets.append(_fr_target("hash", "files $6$ crypt", crypt, Cursor(mix, secret)))
        users_file = tmp / "users-default.yaml"
        servers.write_users_file(users_file, servers.argon2_hashes(users, "default"))
        proxy = _mfaproxy(
            stack,
            tmp / "hash",
            {"directory": _local(users_file), "access_policies": SKIP_MFA},
            args,
        )
        label = f"local, default argon2id ({servers.PROFILES['default'].memory_cost} KiB)"
        targets.append(_proxy_target("hash", label, proxy, Cursor(mix, secret)))
        print(f"  hash servers up ({time.monotonic() - started:.1f} s)", flush=True)
    return targets


def _fr_target(workload: str, label: str, radius: FreeRadiusServer, cursor: Cursor) -> Target:
    pid = radius.pid
    assert pid is not None
    return Target(
        workload, "freeradius", label, radius.address, lambda: {"freeradius": pid}, cursor
    )


def _proxy_target(
    workload: str,
    label: str,
    proxy: servers.Mfaproxy,
    cursor: Cursor,
    extra: dict[str, int] | None = None,
    respond: Responder | None = None,
) -> Target:
    pid = proxy.pid

    def roots() -> dict[str, int]:
        return {"mfaproxy": pid, **(extra or {})}

    return Target(workload, "mfaproxy", label, proxy.address, roots, cursor, respond)


def _setup_ldap(
    stack: contextlib.ExitStack,
    tmp: Path,
    users: dict[str, str],
    mix: list[tuple[str, str]],
    args: argparse.Namespace,
) -> list[Target]:
    started = time.monotonic()
    secret = servers.SECRET.encode()
    slapd = stack.enter_context(SlapdServer(servers.ldap_users(users), log_level="0"))
    slapd_pid = slapd.pid
    assert slapd_pid is not None
    people = f"ou=people,{slapd.base_dn}"
    backend = LdapBackend(slapd.ldap_url, SERVICE_DN, SERVICE_PASSWORD, people, pool=args.ldap_pool)
    radius = stack.enter_context(
        FreeRadiusServer({}, secret=servers.SECRET, ldap=backend, threads=args.ldap_pool)
    )
    fr = _fr_target("ldap", "rlm_ldap", radius, Cursor(mix, secret))
    fr_pid = fr.roots()["freeradius"]
    fr.roots = lambda: {"freeradius": fr_pid, "slapd": slapd_pid}
    ldap_config = {
        "servers": [slapd.ldap_url],
        "base_dn": people,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_filter": "(uid={username})",
        "pool_size": args.ldap_pool,
    }
    proxy = _mfaproxy(
        stack,
        tmp / "ldap",
        {"directory": {"backend": "ldap", "ldap": ldap_config}, "access_policies": SKIP_MFA},
        args,
    )
    mine = _proxy_target(
        "ldap", "ldap search+bind", proxy, Cursor(mix, secret), {"slapd": slapd_pid}
    )
    print(f"  slapd + LDAP servers up ({time.monotonic() - started:.1f} s)", flush=True)
    return [fr, mine]


def _setup_totp(stack: contextlib.ExitStack, tmp: Path, args: argparse.Namespace) -> Target:
    started = time.monotonic()
    users = servers.make_users(args.totp_users, prefix="totp-user")
    secrets = servers.totp_secrets(list(users))
    users_file = tmp / "users-totp.yaml"
    servers.write_users_file(users_file, servers.argon2_hashes(users, "cheap"))
    workdir = tmp / "totp"
    servers.enrol_totp(workdir / "state", workdir / "state" / "master.key", secrets)
    config = {
        "directory": _local(users_file),
        "access_policies": {"mfa": {"default_action": "mfa_required"}},
        "multifactor": {
            "enabled": ["totp"],
            "default": "totp",
            "alternate": [],
            "totp": {"period": servers.TOTP_PERIOD},
        },
    }
    proxy = _mfaproxy(stack, workdir, config, args)
    # In order, so a user comes back only after all the others: with N users at R
    # logins/s that is N/R seconds, more than a TOTP period below R = N / period.
    cursor = Cursor(sorted(users.items()), servers.SECRET.encode())
    respond = totp_responder(secrets, servers.SECRET.encode())
    print(
        f"  mfaproxy (totp) up with {len(users)} enrolled users "
        f"({time.monotonic() - started:.1f} s); replays start above "
        f"{len(users) / servers.TOTP_PERIOD:.0f} logins/s",
        flush=True,
    )
    return _proxy_target("totp", "local cheap + TOTP (2 rounds)", proxy, cursor, respond=respond)


# --------------------------------------------------------------------------- measuring


def measure(target: Target, round_number: int, args: argparse.Namespace) -> Row:
    secret = servers.SECRET.encode()

    def load(requests: list[Request], seconds: float) -> RunResult:
        result = run_async(
            run_load(
                target.address,
                secret,
                requests,
                seconds=seconds,
                concurrency=args.concurrency,
                sockets=args.sockets,
                timeout=args.timeout,
                respond=target.respond,
            )
        )
        target.cursor.used(result.sent - result.challenges)
        return result

    print(f"  round {round_number}: {target.workload} on {target.server} ...", flush=True)
    if args.warmup > 0:
        load(target.cursor.take(min(args.requests, WARMUP_REQUESTS)), args.warmup)
    requests = target.cursor.take(args.requests)
    roots = target.roots()
    before = Snapshot.take(roots)
    result = load(requests, args.seconds)
    after = Snapshot.take(roots)
    cpu = {name: after.cpu[name] - before.cpu[name] for name in roots}
    wall = after.wall - before.wall
    others = after.busy - before.busy - sum(cpu.values()) - result.loadgen_cpu
    return Row(
        round_number,
        target,
        result,
        cpu,
        result.loadgen_cpu / wall,
        max(0.0, others) / wall,
        machine_load(),
    )


def run_rounds(targets: list[Target], args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    order = list(args.workloads)
    if "totp" in order and "pap" not in order:
        order.insert(0, "pap")  # the TOTP figure is read against FreeRADIUS PAP
    for number in range(1, args.rounds + 1):
        for workload in order:
            pair = [t for t in targets if t.workload == workload]
            if number % 2 == 0:
                pair.reverse()
            rows += [measure(target, number, args) for target in pair]
    return rows


# --------------------------------------------------------------------------- report


@dataclass
class Ratio:
    name: str
    values: list[float] = field(default_factory=list)
    target: str = ""

    def line(self) -> str:
        if not self.values:
            return f"{self.name:<46} (not measured)"
        mean = statistics.fmean(self.values)
        spread = f"{min(self.values):.3f}-{max(self.values):.3f}"
        return f"{self.name:<46} {mean:8.3f}   (rounds: {spread})   target {self.target}"


def _find(rows: list[Row], number: int, workload: str, server: str) -> Row | None:
    return next(
        (
            r
            for r in rows
            if r.round == number and r.target.workload == workload and r.target.server == server
        ),
        None,
    )


def ratios(rows: list[Row], rounds: int) -> list[Ratio]:
    found = [
        Ratio("ldap: mfaproxy / rlm_ldap, logins/s", target=">= 0.5"),
        Ratio("ldap: slapd CPU per login, mfaproxy / rlm_ldap", target="<= 1.5"),
        Ratio("pap: mfaproxy local / FreeRADIUS files", target=">= 0.15"),
        Ratio("totp: full TOTP logins / FreeRADIUS PAP", target=">= 0.05"),
        Ratio("hash: mfaproxy default argon2id / $6$ crypt", target="(ratio)"),
        Ratio("hash: mfaproxy logins/s at the default cost", target=">= 40"),
    ]
    for number in range(1, rounds + 1):
        fr_ldap, my_ldap = (
            _find(rows, number, "ldap", "freeradius"),
            _find(rows, number, "ldap", "mfaproxy"),
        )
        if fr_ldap and my_ldap and fr_ldap.rate:
            found[0].values.append(my_ldap.rate / fr_ldap.rate)
            mine, theirs = my_ldap.cpu_ms_per_login("slapd"), fr_ldap.cpu_ms_per_login("slapd")
            if mine is not None and theirs:
                found[1].values.append(mine / theirs)
        fr_pap = _find(rows, number, "pap", "freeradius")
        my_pap = _find(rows, number, "pap", "mfaproxy")
        if fr_pap and my_pap and fr_pap.rate:
            found[2].values.append(my_pap.rate / fr_pap.rate)
        totp = _find(rows, number, "totp", "mfaproxy")
        if fr_pap and totp and fr_pap.rate:
            found[3].values.append(totp.rate / fr_pap.rate)
        fr_hash, my_hash = (
            _find(rows, number, "hash", "freeradius"),
            _find(rows, number, "hash", "mfaproxy"),
        )
        if fr_hash and my_hash and fr_hash.rate:
            found[4].values.append(my_hash.rate / fr_hash.rate)
        if my_hash:
            found[5].values.append(my_hash.rate)
    return found


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _cpu(row: Row, name: str) -> str:
    value = row.cpu_ms_per_login(name)
    return "-" if value is None else f"{value:.3f}"


def print_report(rows: list[Row], args: argparse.Namespace) -> None:
    header = (
        f"{'rnd':>3} {'workload':<8} {'server':<10} {'label':<34} {'logins':>7} {'logins/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>8} {'t/o':>5} {'err':>5} {'CPU ms/login: server':>20} "
        f"{'slapd':>6} {'loadgen':>8} {'other':>6} {'load':>14}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row.result
        server_name = "mfaproxy" if row.target.server == "mfaproxy" else "freeradius"
        print(
            f"{row.round:>3} {row.target.workload:<8} {row.target.server:<10} "
            f"{row.target.label[:34]:<34} {r.accepts:>7} {row.rate:>9.1f} "
            f"{_ms(r.percentile(0.5)):>7} {_ms(r.percentile(0.99)):>8} {r.timeouts:>5} "
            f"{r.errors + r.unmatched_replies:>5} {_cpu(row, server_name):>20} "
            f"{_cpu(row, 'slapd'):>6} {row.loadgen_cpu:>7.0%} {row.other_cores:>6.0%} "
            f"{row.load:>14}"
        )
    print()
    print("mean over rounds (spread: lowest-highest round)")
    for ratio in ratios(rows, args.rounds):
        print("  " + ratio.line())
    print(
        f"\nconcurrency {args.concurrency} over {args.sockets} sockets, {args.users} users "
        f"({args.totp_users} for TOTP), {os.cpu_count()} CPUs shared by the servers and this "
        "load generator. loadgen/other: cores busy with the generator / with everything "
        "else on the machine (other processes); high 'other' means noisy figures."
    )


def write_json(path: Path, rows: list[Row], args: argparse.Namespace) -> None:
    document = {
        "benchmark": "throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": platform.python_version(),
        "settings": {
            key: getattr(args, key)
            for key in (
                "rounds",
                "seconds",
                "requests",
                "concurrency",
                "users",
                "totp_users",
                "workers",
            )
        },
        "results": [row.as_dict() for row in rows],
        "ratios": {
            r.name: {"mean": statistics.fmean(r.values), "rounds": r.values, "target": r.target}
            for r in ratios(rows, args.rounds)
            if r.values
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per server and round")
    parser.add_argument("--requests", type=int, default=100_000, help="cap per run")
    parser.add_argument("--concurrency", type=int, default=32, help="logins outstanding")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--totp-users", type=int, default=45_000)
    parser.add_argument("--sockets", type=int, default=4, help="load generator source ports")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds, no retransmits")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument(
        "--ldap-pool", type=int, default=16, help="connections/threads, both servers"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="mfaproxy server.workers (0: default)"
    )
    parser.add_argument(
        "--state-store",
        choices=["memory", "sqlite"],
        default="memory",
        help="mfaproxy state_store backend (sqlite whenever --workers > 1)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda text: [w for w in text.split(",") if w],
        default=list(WORKLOADS),
        help="comma-separated, of " + ",".join(WORKLOADS),
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--seed", type=int, default=1812)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}")
    if args.seconds <= 0 or args.requests < 1 or args.users < 1 or args.rounds < 1:
        parser.error("--seconds, --requests, --users and --rounds must be positive")
    return args


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mfaproxy-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"throughput: {', '.join(args.workloads)}; {args.rounds} rounds of {args.seconds:g} s, "
        f"concurrency {args.concurrency}; load average {machine_load()}",
        flush=True,
    )
    with _workdir() as tmp, contextlib.ExitStack() as stack:
        targets = setup(stack, tmp, args)
        rows = run_rounds(targets, args)
    print_report(rows, args)
    if args.json is not None:
        write_json(args.json, rows, args)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
