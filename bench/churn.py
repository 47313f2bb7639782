"""Connection churn and throughput at a steady load, measured by the database server.

    python -m bench.churn [--seconds 10] [--clients 10]

Starts a throwaway MariaDB, then for each stack a one-worker gunicorn gevent server
serving a view with one indexed query, loads it with ``wrk`` (Debian's), and reads
the server's ``Connections`` counter: connections opened per 1,000 requests after a
warm-up, requests/s and latency. All peers run in the same session on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mariadb import MariaDBServer, ensure_installed  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or "wrk"


@contextlib.contextmanager
def gunicorn(stack: str, db: MariaDBServer, **env: str) -> Iterator[str]:
    port = free_port()
    environ = {
        **os.environ, "BENCH_STACK": stack, "BENCH_DB_PORT": str(db.port),
        "PYTHONPATH": str(ROOT), **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
         "--worker-connections", "2000", "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "bench.djsite:application"],
        cwd=ROOT, env=environ,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn for {stack} did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def run_wrk(wrk: str, url: str, clients: int, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        [wrk, "-t", "2", "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
         "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, check=True,
    )
    out = done.stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout) (\d+)", out)
    )
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--stacks", default="persistent,wsgi_dbpool:linger=0,wsgi_dbpool")
    args = parser.parse_args()

    ensure_installed()
    wrk = ensure_wrk()
    rows = []
    with MariaDBServer(max_connections=100) as db:
        db.admin_query("CREATE TABLE app.items (id INT PRIMARY KEY, name VARCHAR(40))")
        db.admin_query(  # MariaDB's SEQUENCE engine makes the rows
            "INSERT INTO app.items SELECT seq, CONCAT('item ', seq) FROM app.seq_1_to_1000"
        )
        for name in args.stacks.split(","):
            stack, _, linger = name.partition(":linger=")
            with gunicorn(stack, db, POOL_LINGER=linger or "5") as url:
                run_wrk(wrk, url + "/query/", args.clients, args.warmup)
                before = db.connections_total()
                result = run_wrk(wrk, url + "/query/", args.clients, args.seconds)
                opened = db.connections_opened_since(before)
                result["opened"] = opened
                result["opened_per_1000"] = 1000 * opened / max(1, result["requests"])
                result["left_open"] = db.connection_count("app")
                rows.append((name, result))
            print(f"{name}: {result}", file=sys.stderr)
    base = dict(rows).get("persistent")
    print(f"\n# steady load: {args.clients} clients on one indexed query, {args.seconds:.0f} s "
          f"after a {args.warmup:.0f} s warm-up; one gunicorn gevent worker; {os.cpu_count()} cores\n")
    print("| stack | requests/s | ÷ persistent | p50 ms | p99 ms | errors "
          "| server connections opened | per 1,000 requests |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for stack, r in rows:
        ratio = r["rps"] / base["rps"] if base else float("nan")
        print(f"| {stack} | {r['rps']:.0f} | {ratio:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['errors']} | {r['opened']} | {r['opened_per_1000']:.2f} |")


if __name__ == "__main__":
    main()
