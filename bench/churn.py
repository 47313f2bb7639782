"""Churn at a steady load between ``size`` and ``max_outstanding``, with and without linger.

    python -m bench.churn [--seconds 8] [--clients 10]

Persistent connections, then wsgi_dbpool with ``linger=0`` (surplus closed at once) and
with the default ``linger=5``, each behind one gunicorn gevent worker serving one
indexed query to ``wrk``; the server's ``Connections`` counter says how many connections
each opened after a warm-up.
"""

from __future__ import annotations

import argparse
import os

from bench.harness import bench_database, run_wrk, serving

STACKS = [
    ("persistent", "persistent connections (CONN_MAX_AGE=60)", {}),
    ("wsgi_dbpool", "wsgi_dbpool, linger=0", {"POOL_LINGER": "0"}),
    ("wsgi_dbpool", "wsgi_dbpool, linger=5 (default)", {"POOL_LINGER": "5"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with bench_database() as db:
        for stack, label, env in STACKS:
            with serving(stack, db, env) as server:
                run_wrk(server.url + "/query/", clients=args.clients, seconds=args.warmup)
                before = db.connections_total()
                result = run_wrk(server.url + "/query/", clients=args.clients, seconds=args.seconds)
                result["opened"] = db.connections_opened_since(before)
            rows.append((label, result))
    base = rows[0][1]["rps"]
    print(f"\n# steady load: {args.clients} clients on one indexed query, {args.seconds:.0f} s after a "
          f"{args.warmup:.0f} s warm-up; one gunicorn gevent worker; {os.cpu_count()} cores\n")
    print("| stack | requests/s | ÷ persistent | p99 ms | connections opened | per 1,000 requests |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['rps']:.0f} | {r['rps'] / base:.2f} | {r['p99_ms']:.1f} | {r['opened']} | "
              f"{1000 * r['opened'] / max(1, r['requests']):.2f} |")


if __name__ == "__main__":
    main()
