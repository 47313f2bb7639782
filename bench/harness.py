"""Pieces every benchmark shares: a gunicorn per stack, wrk as the load, the server's view."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.mariadb import MariaDBServer, ensure_installed  # noqa: E402
from tests.servers import Gunicorn, PeakSampler, child_env, ensure_binary  # noqa: E402

__all__ = ["ROOT", "PeakSampler", "Server", "bench_database", "ensure_wrk", "run_wrk", "serving"]


def ensure_wrk() -> str:
    """Debian's wrk, installed when missing (root on CI)."""
    return ensure_binary("wrk", "wrk")


class Server(Gunicorn):
    """One gunicorn gevent worker serving ``bench.djsite`` for one stack; keeps its log."""

    def __init__(self, stack: str, db: MariaDBServer, env: dict[str, str]) -> None:
        self.stack = stack
        super().__init__(
            "bench.djsite:application", config="bench/gunicorn_conf.py",
            env=child_env(BENCH_STACK=stack, BENCH_DB_PORT=str(db.port), **env),
        )
        self.wait_listening()

    def failed_requests(self) -> tuple[int, int]:
        """(requests Django logged as 500, of which 'Too many connections')."""
        records = self.output().split("Internal Server Error")[1:]
        return len(records), sum("Too many connections" in r for r in records)


def run_wrk(url: str, *, clients: int, seconds: float, threads: int = 2) -> dict[str, Any]:
    """Run wrk and parse what it prints: requests, rate, latency percentiles, failures."""
    done = subprocess.run(
        [ensure_wrk(), "-t", str(min(threads, clients)), "-c", str(clients),
         "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "30s", url],
        capture_output=True, text=True, check=True,
    )
    out = done.stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else 0.0

    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "requests": int(number(r"(\d+) requests in")),
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)")),
        "socket_errors": socket_errors,
    }


@contextlib.contextmanager
def serving(stack: str, db: MariaDBServer, env: dict[str, str]) -> Iterator[Server]:
    db.kill_user("app")
    server = Server(stack, db, env)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def bench_database(max_connections: int = 100) -> Iterator[MariaDBServer]:
    """A throwaway MariaDB with the ``items`` table (1,000 rows) the bench views query;
    MariaDB and wrk installed first when missing."""
    ensure_installed()
    ensure_wrk()
    with MariaDBServer(max_connections=max_connections) as db:
        db.create_items(rows=1000)
        yield db
