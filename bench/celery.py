"""Celery on gevent: Celery's Django fixup alone against ``pool_tasks``.

    python -m bench.celery [--tasks 300] [--rounds 3] [--wait 0.05] [--output docs/celery.md]

One ``celery worker -P gevent -c 50`` per stack (``testbed.celery_project``, with
``DJANGO_SETTINGS_MODULE`` set so Celery's own Django fixup is active), a throwaway Redis
broker and a throwaway MariaDB. Each round sends ``--tasks`` tasks at once; each task
runs one query, then waits ``--wait`` seconds (other I/O) before it ends. After a
warm-up round, reports per round: tasks/s (first send to last result), server
connections opened (the server's per-user ``TOTAL_CONNECTIONS``) and the peak of open
connections (``information_schema.PROCESSLIST``, sampled every 5 ms); then the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testbed.celery_harness import USER, CeleryWorker, client_app, create_worker_user, user_connections
from testbed.mariadb import MariaDBServer, ensure_installed, install_pymysql
from testbed.redis import RedisServer
from testbed.redis import ensure_installed as ensure_redis

STACKS: list[tuple[str, dict[str, Any] | None]] = [
    ("Celery's Django fixup alone (a connect per task)", None),
    ("pool_tasks(size=4, max_outstanding=5)", {"size": 4, "max_outstanding": 5, "timeout": 30}),
    ("pool_tasks(size=4, max_outstanding=20)", {"size": 4, "max_outstanding": 20, "timeout": 30}),
]


class Peak:
    """The worker user's open server connections, sampled every 5 ms in a thread."""

    def __init__(self, db: MariaDBServer) -> None:
        self.peak = 0
        self._running = True
        self._db = db
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self._db.connection_count(USER))
            time.sleep(0.005)

    def stop(self) -> int:
        self._running = False
        self._thread.join(timeout=5)
        return self.peak


def one_round(worker: CeleryWorker, db: MariaDBServer, tasks: int, wait: float) -> dict[str, float]:
    opened_before = user_connections(db)
    peak = Peak(db)
    started = time.monotonic()
    results = [worker.send("query_then_wait", wait) for _ in range(tasks)]
    errors = 0
    for result in results:
        try:
            result.get(timeout=120)
        except Exception:
            errors += 1
    elapsed = time.monotonic() - started
    return {
        "tasks_per_s": tasks / elapsed, "opened": user_connections(db) - opened_before,
        "peak": peak.stop(), "errors": errors, "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.celery", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--output", type=Path, help="write the Markdown table here too")
    args = parser.parse_args()
    ensure_installed()
    ensure_redis()
    install_pymysql()
    rows = []
    logs = Path(tempfile.mkdtemp(prefix="wsgi_dbpool-bench-celery-"))
    with MariaDBServer(max_connections=200) as db, RedisServer() as redis_server:
        create_worker_user(db)
        client = client_app(redis_server)
        for label, pool in STACKS:
            worker = CeleryWorker(client, db, redis_server, logs, "gevent", args.concurrency, pool)
            try:
                one_round(worker, db, min(args.tasks, 50), args.wait)  # warm-up, not counted
                rounds = [one_round(worker, db, args.tasks, args.wait) for _ in range(args.rounds)]
                aborted = db.status("Aborted_clients")
            finally:
                worker.stop()
            deadline = time.monotonic() + 5
            while db.connection_count(USER) and time.monotonic() < deadline:
                time.sleep(0.05)
            row = {
                "label": label,
                "rounds": rounds,
                "tasks_per_s": statistics.median(r["tasks_per_s"] for r in rounds),
                "opened": statistics.median(r["opened"] for r in rounds),
                "peak": max(r["peak"] for r in rounds),
                "errors": sum(r["errors"] for r in rounds),
                "aborted_on_stop": db.status("Aborted_clients") - aborted,
            }
            rows.append(row)
            print(f"{label}: {row['tasks_per_s']:.0f} tasks/s, opened {row['opened']:.0f}, "
                  f"peak {row['peak']}, errors {row['errors']}, "
                  f"aborted on stop {row['aborted_on_stop']}", flush=True)
        client.close()
    table = render(rows, args)
    print(table)
    if args.output:
        args.output.write_text(table, encoding="utf-8")


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"`python -m bench.celery` — one `celery worker -P gevent -c {args.concurrency}` per row, "
        f"{args.tasks} tasks sent at once, each one query then {args.wait * 1000:.0f} ms of other I/O; "
        f"median of {args.rounds} rounds after a warm-up round (peak: the most seen in any round). "
        f"Celery's Django fixup is active in every row. Run on {time.strftime('%Y-%m-%d')}, "
        f"2 cores.",
        "",
        "| stack | tasks/s | server connections opened per round | peak open connections "
        "| errors | Aborted_clients on warm shutdown |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['tasks_per_s']:.0f} | {row['opened']:.0f} | {row['peak']} "
            f"| {row['errors']} | {row['aborted_on_stop']} |"
        )
    lines.append("")
    lines.append("Per round (tasks/s, opened, peak):")
    lines.append("")
    for row in rows:
        per_round = "; ".join(
            f"{r['tasks_per_s']:.0f}, {r['opened']}, {r['peak']}" for r in row["rounds"]
        )
        lines.append(f"- {row['label']}: {per_round}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
