"""Pieces every benchmark shares: a gunicorn per stack, wrk as the load, the server's view."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.mariadb import MariaDBServer  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    """Debian's wrk, installed when missing (root on CI)."""
    found = shutil.which("wrk")
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is needed: apt-get install wrk")
    return found


class Server:
    """One gunicorn gevent worker serving ``bench.djsite`` for one stack; keeps its log."""

    def __init__(self, stack: str, db: MariaDBServer, env: dict[str, str]) -> None:
        self.stack = stack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        environ = {
            **os.environ, "BENCH_STACK": stack, "BENCH_DB_PORT": str(db.port),
            "PYTHONPATH": str(ROOT), **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "bench/gunicorn_conf.py",
             "-b", f"127.0.0.1:{self.port}", "bench.djsite:application"],
            cwd=ROOT, env=environ, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn for {stack} did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def failed_requests(self) -> tuple[int, int]:
        """(requests Django logged as 500, of which 'Too many connections')."""
        records = self.log_text().split("Internal Server Error")[1:]
        return len(records), sum("Too many connections" in r for r in records)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


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


class PeakSampler:
    """Samples the app user's server connections every 20 ms; keeps the peak."""

    def __init__(self, db: MariaDBServer) -> None:
        self.db = db
        self.peak = 0
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.db.connection_count("app"))
            time.sleep(0.02)

    def stop(self) -> int:
        self._running = False
        self._thread.join(timeout=5)
        return self.peak


@contextlib.contextmanager
def serving(stack: str, db: MariaDBServer, env: dict[str, str]) -> Iterator[Server]:
    db.kill_user("app")
    server = Server(stack, db, env)
    try:
        yield server
    finally:
        server.stop()
