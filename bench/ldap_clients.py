"""ldap3 against python-ldap for mfaproxy's LDAP work: which client to pool.

    python -m bench.ldap_clients [--seconds 5] [--threads 8] [--rounds 3]

One slapd (tests/support/slapd.py) with 1000 users. Each "login" is what
directory/ldap.py does per request with pooled connections: a subtree search for the
user (service connection, already bound) and a simple bind as the user (bind
connection, re-bound every time). Each of `--threads` threads keeps its own two
persistent connections per client library, as the pool does, and runs logins
back to back for `--seconds`. Printed: logins/s, this process's CPU per login (the
client library's cost, all threads), slapd's CPU per login. Rounds alternate the
order of the two clients. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ldap
from ldap3 import SIMPLE, SUBTREE, Connection, Server

from bench import servers
from bench.procs import cpu_seconds, machine_load
from tests.support.slapd import SERVICE_DN, SERVICE_PASSWORD, SlapdServer

Login = Callable[[str, str], bool]


def ldap3_login(url: str, base: str) -> Login:
    server = Server(url, get_info="NO_INFO")
    service = Connection(server, SERVICE_DN, SERVICE_PASSWORD, read_only=True, auto_bind=True)
    binder = Connection(server, read_only=True)
    binder.open()

    def login(user: str, password: str) -> bool:
        service.search(base, f"(uid={user})", SUBTREE, attributes=["mail", "mobile", "memberOf"])
        dn = service.response[0]["dn"]
        binder.user, binder.password, binder.authentication = dn, password.encode(), SIMPLE
        return bool(binder.bind())

    return login


def python_ldap_login(url: str, base: str) -> Login:
    service = ldap.initialize(url)
    service.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    service.simple_bind_s(SERVICE_DN, SERVICE_PASSWORD)
    binder = ldap.initialize(url)
    binder.set_option(ldap.OPT_PROTOCOL_VERSION, 3)

    def login(user: str, password: str) -> bool:
        found = service.search_ext_s(
            base, ldap.SCOPE_SUBTREE, f"(uid={user})", ["mail", "mobile", "memberOf"]
        )
        dn = found[0][0]
        try:
            binder.simple_bind_s(dn, password.encode())
        except ldap.INVALID_CREDENTIALS:
            return False
        return True

    return login


CLIENTS: dict[str, Callable[[str, str], Login]] = {
    "ldap3": ldap3_login,
    "python-ldap": python_ldap_login,
}


def run(
    client: str, slapd: SlapdServer, users: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    base = f"ou=people,{slapd.base_dn}"
    names = sorted(users)
    logins = [CLIENTS[client](slapd.ldap_url, base) for _ in range(args.threads)]
    counts = [0] * args.threads
    failures = [0] * args.threads
    stop = threading.Event()

    def work(index: int) -> None:
        login, position = logins[index], index * 97
        while not stop.is_set():
            name = names[position % len(names)]
            position += 1
            if login(name, users[name]):
                counts[index] += 1
            else:
                failures[index] += 1

    assert slapd.pid is not None
    cpu_before, slapd_before = time.process_time(), cpu_seconds(slapd.pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = sum(counts)
    return {
        "client": client,
        "logins_per_s": done / elapsed,
        "failures": sum(failures),
        "client_cpu_ms": (time.process_time() - cpu_before) * 1000 / max(done, 1),
        "slapd_cpu_ms": (cpu_seconds(slapd.pid) - slapd_before) * 1000 / max(done, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ldap_clients", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args(argv)
    users = servers.make_users(args.users)
    print(f"ldap clients: {args.threads} threads, load average {machine_load()}", flush=True)
    results: list[dict[str, Any]] = []
    with SlapdServer(servers.ldap_users(users), log_level="0") as slapd:
        for number in range(args.rounds):
            order = list(CLIENTS) if number % 2 == 0 else list(reversed(CLIENTS))
            for client in order:
                results.append(run(client, slapd, users, args))
                r = results[-1]
                print(
                    f"  round {number + 1} {client:<12} {r['logins_per_s']:8.0f} logins/s  "
                    f"client CPU {r['client_cpu_ms']:.3f} ms/login  "
                    f"slapd CPU {r['slapd_cpu_ms']:.3f} ms/login  failures {r['failures']}",
                    flush=True,
                )
    print("\nmean over rounds (lowest-highest)")
    for client in CLIENTS:
        mine = [r for r in results if r["client"] == client]
        for key in ("logins_per_s", "client_cpu_ms", "slapd_cpu_ms"):
            values = [r[key] for r in mine]
            print(
                f"  {client:<12} {key:<14} {statistics.fmean(values):9.3f} "
                f"({min(values):.3f}-{max(values):.3f})"
            )
    print(f"load average after: {machine_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
