"""Pieces every benchmark shares: a gunicorn per stack, wrk as the load, the server's view,
and the worker's own CPU time per request over each load."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.databases import BenchDatabase, bench_database  # noqa: E402
from testbed.servers import Gunicorn, PeakSampler, child_env, ensure_binary  # noqa: E402

__all__ = [
    "ROOT", "BenchDatabase", "PeakSampler", "Server", "bench_database", "ensure_wrk", "run_wrk", "serving",
]
# What a failed request logs when the server turned the connection away, per backend.
TOO_MANY = ("Too many connections", "too many clients already")


def ensure_wrk() -> str:
    """Debian's wrk, installed when missing (root on CI)."""
    return ensure_binary("wrk", "wrk")


class Server(Gunicorn):
    """One gunicorn gevent worker serving ``bench.djsite`` for one stack; keeps its log."""

    def __init__(self, stack: str, db: Any, env: dict[str, str]) -> None:
        self.stack = stack
        super().__init__(
            "bench.djsite:application", config="bench/gunicorn_conf.py",
            # ``env`` may override the defaults: bench.soak points BENCH_DB_PORT at its proxy
            env=child_env(**{"BENCH_STACK": stack, "BENCH_BACKEND": getattr(db, "backend", "mariadb"),
                             "BENCH_DB_PORT": str(db.port), **env}),
        )
        self.wait_listening()

    def failed_requests(self) -> tuple[int, int]:
        """(requests Django logged as 500, of which the server turned away: too many connections)."""
        records = self.output().split("Internal Server Error")[1:]
        return len(records), sum(any(t in r for t in TOO_MANY) for r in records)

    def worker(self) -> dict[str, Any]:
        """The worker's own reading (``/cpu/``, answered before Django and every pool): its
        pid, the requests it has begun, its CPU seconds (user + system), its clock."""
        with urllib.request.urlopen(self.url + "/cpu/", timeout=30) as response:
            reading: dict[str, Any] = json.loads(response.read())
        return reading

    def warm(self, path: str, *, clients: int, seconds: float, timeout: float = 120) -> None:
        """Load ``path`` for ``seconds``, then wait until the worker has answered every request
        begun: a capped pool still owes the warm-up's queue (300 clients on a cap of 2 and a
        50 ms hold: 7.5 s of it) when wrk has gone, and would spend the measured window on it."""
        run_wrk(self.url + path, clients=clients, seconds=seconds)
        deadline = time.monotonic() + timeout
        while (in_flight := self.worker()["in_flight"]) > 0:
            if time.monotonic() > deadline:  # one that raised past start_response never counts as answered
                print(f"{self.stack}: {in_flight} requests still in flight {timeout:.0f} s after the "
                      "warm-up; measuring anyway", file=sys.stderr, flush=True)
                return
            time.sleep(0.1)

    def load(self, path: str, *, clients: int, seconds: float, threads: int = 2,
             margin: float = 1.0) -> dict[str, Any]:
        """wrk on ``path`` for ``seconds`` plus ``margin`` either side; what wrk saw over the
        whole run, and the worker's own CPU over the middle ``seconds`` (read by the worker
        itself, so wrk's connects at the start and the drain at the end are left out):
        ``cpu_us`` per request begun, ``cpu_busy`` the share of that window on a CPU (near
        1.0: CPU-bound, requests/s is the CPU's), ``cpu_requests`` the requests it covers."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            wrk = pool.submit(run_wrk, self.url + path, clients=clients, seconds=seconds + 2 * margin,
                              threads=threads)
            time.sleep(margin)
            first = self.worker()
            time.sleep(seconds)
            last = self.worker()
            result = wrk.result()
        requests = last["requests"] - first["requests"] - 1  # the last reading is one of them
        cpu = last["cpu"] - first["cpu"]
        result["cpu_us"] = round(1e6 * cpu / requests, 1) if requests > 0 else float("nan")
        result["cpu_busy"] = round(cpu / (last["wall"] - first["wall"]), 3)
        result["cpu_requests"] = requests
        return result


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
def serving(stack: str, db: Any, env: dict[str, str]) -> Iterator[Server]:
    db.kill_user("app")
    server = Server(stack, db, env)
    try:
        yield server
    finally:
        server.stop()
