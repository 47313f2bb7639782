"""``python -m bench.soak``: mixed load with faults for ~10 minutes; did anything grow?

Two gunicorn gevent workers (``bench.djsite``, wsgi_dbpool, size 4, max_outstanding 20)
in front of two throwaway MariaDB servers, reached through a TCP proxy
(``testbed.faultproxy``) that sends new connections to the current primary. Five ``wrk``
loads run all along (indexed queries, 50 ms holds, streamed responses, writes, a
database-free view); every ``--fault-every`` seconds a fault is injected in turn on the
current primary: KILL of every app connection, a MariaDB restart, a short
``wait_timeout``, and a failover (the proxy now leads to the other server, made
writable, and the old primary is set ``read_only``). Every ``--sample-every`` seconds
the script records the servers' connections, each worker's RSS and open file descriptors
and the pool's ``stats()``.
At the end (load stopped, linger passed) it prints the samples and a verdict, and
writes them to ``docs/soak.md``. Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Server, ensure_wrk, run_wrk
from testbed.mariadb import MariaDBServer, ensure_installed


def workers_of(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pool_stats(url: str, workers: int) -> dict[int, dict[str, Any]]:
    """Ask /stats/ until every worker has answered once (requests land on either)."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(40):
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url + "/stats/", timeout=5) as response:
                body = json.loads(response.read())
                seen[body["pid"]] = body["stats"]["default"]
        if len(seen) >= workers:
            break
    return seen


SCHEMA = (
    "CREATE TABLE app.items (id INT PRIMARY KEY, name VARCHAR(40))",
    "INSERT INTO app.items SELECT seq, CONCAT('item ', seq) FROM app.seq_1_to_1000",
    "CREATE TABLE app.writes (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6))",
)


@contextlib.contextmanager
def proxy(target: int, alternate: int) -> Any:
    """``testbed.faultproxy`` in its own process; yields (its port, its process)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "testbed.faultproxy", "--target", str(target),
         "--alternate", str(alternate)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline()), process
    finally:
        process.terminate()
        process.wait(timeout=10)


FAULTS = ("kill", "restart", "wait_timeout", "failover")
# (name, path, clients) of the five wrk loads
LOADS = (("query", "/query/", 20), ("hold", "/hold/", 50), ("stream", "/stream/", 5),
         ("write", "/write/", 5), ("nodb", "/nodb/", 5))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--fault-every", type=float, default=60)
    parser.add_argument("--sample-every", type=float, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "soak.md"))
    return parser.parse_args()


class Servers:
    """The two MariaDB servers behind the proxy: which one is the primary now, and the faults
    injected on it."""

    def __init__(self, db: MariaDBServer, other: MariaDBServer, proxy_process: subprocess.Popen[str]) -> None:
        self.both = (db, other)
        self.primary, self.standby = db, other
        self.proxy_process = proxy_process

    def inject(self, kind: str) -> None:
        primary = self.primary
        if kind == "kill":
            primary.kill_user("app")
        elif kind == "restart":
            primary.restart()
        elif kind == "wait_timeout":
            primary.set_global("wait_timeout", 2)
            threading.Timer(10, lambda p=primary: p.set_global("wait_timeout", 28800)).start()
        else:  # the standby takes over; the old primary stays up, read-only
            self.standby.set_global("read_only", 0)
            self.proxy_process.send_signal(signal.SIGUSR1)
            primary.set_global("read_only", 1)
            self.primary, self.standby = self.standby, primary

    def connections(self) -> int:
        """The app's connections on both servers."""
        return sum(server.connection_count("app") for server in self.both)


def sample(servers: Servers, server: Server, elapsed: float) -> dict[str, Any]:
    """One row of the samples: the servers' connections, each worker's RSS and fds, the pools."""
    workers = workers_of(server.process.pid)
    stats = pool_stats(server.url, len(workers)).values()
    return {
        "t": round(elapsed),
        "server_connections": servers.connections(),
        "on_standby": servers.standby.connection_count("app"),
        "rss_mb": {pid: round(rss_mb(pid), 1) for pid in workers},
        "fds": {pid: fds(pid) for pid in workers},
        **{key: sum(s[key] for s in stats) for key in ("in_use", "idle", "waiting", "timeouts", "stale")},
        "failovers": sum(s.get("failovers", 0) for s in stats),
    }


def final_state(servers: Servers, server: Server) -> dict[str, Any]:
    """What is left once the load stopped and linger passed."""
    workers = workers_of(server.process.pid)
    final = pool_stats(server.url, len(workers))
    return {
        "server_connections": servers.connections(),
        "on_standby": servers.standby.connection_count("app"),
        "failovers": {pid: s.get("failovers", 0) for pid, s in final.items()},
        "in_use": sum(s["in_use"] for s in final.values()),
        "idle": sum(s["idle"] for s in final.values()),
        "rss_mb": {pid: round(rss_mb(pid), 1) for pid in workers},
        "fds": {pid: fds(pid) for pid in workers},
    }


def start_loads(server: Server, seconds: float, loads: dict[str, dict[str, Any]]) -> list[threading.Thread]:
    """The five wrk loads, each in a thread that puts its result in ``loads``."""
    def load(name: str, path: str, clients: int) -> None:
        loads[name] = run_wrk(server.url + path, clients=clients, seconds=seconds, threads=1)

    threads = [threading.Thread(target=load, args=args_, daemon=True) for args_ in LOADS]
    for thread in threads:
        thread.start()
    return threads


def faults_and_samples(args: argparse.Namespace, seconds: float, servers: Servers,
                       server: Server) -> tuple[list[dict[str, Any]], list[str]]:
    """Until ``seconds`` have passed: a fault every ``--fault-every`` (none in the last one, a
    calm end), a sample every ``--sample-every``."""
    samples: list[dict[str, Any]] = []
    faults: list[str] = []
    started = time.monotonic()
    next_fault = args.fault_every
    while time.monotonic() - started < seconds:
        elapsed = time.monotonic() - started
        if elapsed >= next_fault and elapsed < seconds - args.fault_every:  # calm end
            kind = FAULTS[len(faults) % len(FAULTS)]
            faults.append(f"{elapsed:.0f}s {kind}")
            servers.inject(kind)
            next_fault += args.fault_every
        samples.append(sample(servers, server, elapsed))
        print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
        time.sleep(args.sample_every)
    return samples, faults


def soak(args: argparse.Namespace, servers: Servers, server: Server) -> tuple[
        list[dict[str, Any]], list[str], dict[str, dict[str, Any]], dict[str, Any]]:
    """The loads, the faults and the samples; then what is left: (samples, faults, loads, end)."""
    seconds = args.minutes * 60
    loads: dict[str, dict[str, Any]] = {}
    threads = start_loads(server, seconds, loads)
    samples, faults = faults_and_samples(args, seconds, servers, server)
    for thread in threads:
        thread.join(timeout=60)
    time.sleep(7)  # past linger: surplus connections close
    return samples, faults, loads, final_state(servers, server)


def main() -> None:
    args = parse_args()
    ensure_installed()
    ensure_wrk()
    with MariaDBServer(max_connections=100) as db, MariaDBServer(max_connections=100) as other, \
            proxy(db.port, other.port) as (proxy_port, proxy_process):
        for statement in SCHEMA:
            db.admin_query(statement)
            other.admin_query(statement)
        server = Server("wsgi_dbpool", db, {"POOL_MAX_OUTSTANDING": "20", "BENCH_WORKERS": "2",
                                            "BENCH_DB_PORT": str(proxy_port)})
        try:
            samples, faults, loads, end = soak(args, Servers(db, other, proxy_process), server)
            failed, too_many = server.failed_requests()
        finally:
            server.stop()
    write_report(args, samples, faults, loads, end, failed, too_many)


def sample_rows(samples: list[dict[str, Any]], sample_every: float) -> list[str]:
    """The samples' table rows, one every 30 seconds."""
    step = max(1, int(30 / sample_every))
    return [
        f"| {s['t']} | {s['server_connections']} | {s['on_standby']} | {s['in_use']} | "
        f"{s['idle']} | {s['waiting']} | {s['timeouts']} | {s['stale']} | {s['failovers']} | "
        f"{', '.join(map(str, s['rss_mb'].values()))} | "
        f"{', '.join(map(str, s['fds'].values()))} |"
        for s in samples[::step]
    ]


def write_report(args: argparse.Namespace, samples: list[dict[str, Any]], faults: list[str],
                 loads: dict[str, dict[str, Any]], end: dict[str, Any], failed: int, too_many: int) -> None:
    warm = samples[min(len(samples) - 1, max(1, int(60 / args.sample_every)))]  # a minute in
    def total(d: dict[int, float]) -> float:
        return float(sum(d.values()))
    rss_growth = total(end["rss_mb"]) - total(warm["rss_mb"])
    fd_growth = total(end["fds"]) - total(warm["fds"])
    peak = max(s["server_connections"] for s in samples)
    checks = {
        "server connections never above 2 workers x max_outstanding (40)": peak <= 40,
        "in_use back to 0 after the load": end["in_use"] == 0,
        "idle <= 2 x size (8) after linger": end["idle"] <= 8,
        # more on the server than the pool holds would be a leak; fewer are connections the
        # server dropped (the last wait_timeout fault) that the pool notices on next use
        "no server connection unaccounted for (server <= pool's idle)":
            end["server_connections"] <= end["idle"],
        "no connection left on the server that was failed away from": end["on_standby"] == 0,
        # lost connections (KILL, restart) count as failovers too: at least one each
        "every failover noticed by each worker (its failovers counter)":
            all(n >= sum("failover" in f for f in faults) for n in end["failovers"].values()),
        "open fds did not grow (vs a minute in)": fd_growth <= 2,
        "RSS grew less than 10 MB per worker (vs a minute in)": rss_growth < 10 * len(end["rss_mb"]),
    }
    lines = [
        f"# Soak: {datetime.date.today().isoformat()}, {args.minutes:g} minutes, "
        f"`python -m bench.soak --minutes {args.minutes:g} --fault-every {args.fault_every:g}`",
        "",
        f"{os.cpu_count()} cores; 2 gunicorn gevent workers, size=4, max_outstanding=20; two MariaDB "
        f"servers (max_connections=100) behind a TCP proxy; loads: 20 clients on a query, 50 on "
        f"a 50 ms hold, 5 streaming, 5 writing, 5 on a database-free view; faults (on the "
        f"current primary): {', '.join(faults) or 'none'}.",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'yes' if ok else '**NO**'} |" for name, ok in checks.items()],
        "",
        "| load | requests | requests/s | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|",
        *[f"| {name} | {r['requests']} | {r['rps']:.0f} | {r['non_2xx']} | {r['socket_errors']} |"
          for name, r in loads.items()],
        "",
        f"500s logged by Django: {failed} (of which \"Too many connections\": {too_many}); they "
        f"come from the faults (queries cut by KILL or the restart, writes refused by the "
        f"demoted server before each worker noticed the failover).",
        "",
        f"Peak server connections: {peak}. After: {json.dumps(end)}. RSS growth since a minute in: "
        f"{rss_growth:+.1f} MB in all; fds: {fd_growth:+.0f}.",
        "",
        "| t (s) | server connections | on the standby | in use | idle | waiting | timeouts "
        "| stale | failovers | RSS MB (per worker) | fds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += sample_rows(samples, args.sample_every)
    verdict = "nothing grew" if all(checks.values()) else "SOMETHING GREW OR LEAKED"
    lines += ["", f"Verdict: **{verdict}**."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
