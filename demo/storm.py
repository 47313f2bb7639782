"""``python -m demo.storm``: the same burst at the slow view, without and with the pool.

``--view api``: the burst at the "external API" view instead (a query, 50 ms waiting on
something else, a query), with the pool in each ``hold`` mode; ``--chart PATH`` also
draws it.

Starts a throwaway MariaDB (``max_connections`` small, as on a busy shared server), then
serves the demo twice under one gunicorn gevent worker: first plain Django with
persistent connections (``POOL=off``, ``CONN_MAX_AGE=60``), then with
``PoolingMiddleware(size=4, max_outstanding=20)``. Each time it fires the same burst of
concurrent requests and prints what the *server* saw: peak connections from the app's
user, connections left open afterwards, and the errors clients got.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.mariadb import MariaDBServer, ensure_installed  # noqa: E402
from testbed.servers import Gunicorn, PeakSampler, child_env  # noqa: E402


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, repr(exc)


def burst(url: str, requests: int, concurrency: int, label: str) -> list[tuple[int, str]]:
    done = 0
    shown = -1
    lock = threading.Lock()
    tty = sys.stderr.isatty()

    def one(_: int) -> tuple[int, str]:
        nonlocal done, shown
        result = fetch(url)
        with lock:
            done += 1
            filled = 30 * done // requests
            if filled != shown and (tty or filled % 10 == 0):
                shown = filled
                bar = f"  {label:<32} [{'#' * filled}{'.' * (30 - filled)}] {done}/{requests}"
                sys.stderr.write(("\r" + bar) if tty else (bar + "\n"))
                sys.stderr.flush()
        return result

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    if tty:
        sys.stderr.write("\n")
    return results


def run_once(
    db: MariaDBServer, pooled: bool, args: argparse.Namespace, hold: str = "request"
) -> dict[str, Any]:
    env = child_env(
        DJANGO_SETTINGS_MODULE="demo.settings",
        DEMO_DATABASE=json.dumps(db.django_settings(conn_max_age=60)),
        POOL="on" if pooled else "off",
        POOL_SIZE="4",
        POOL_MAX_OUTSTANDING=str(args.max_outstanding),
        POOL_TIMEOUT="30",
        POOL_HOLD=hold,
    )
    db.kill_user("app")
    # Django logs each failed request into the captured output, with its traceback.
    with Gunicorn("demo.wsgi:application", config="demo/gunicorn_conf.py",
                  args=["-w", "1", "--log-level", "warning"], env=env) as gunicorn:
        with PeakSampler(db, ignore_errors=True) as sampler:
            label = f"PoolingMiddleware, hold={hold}" if pooled else "plain Django (CONN_MAX_AGE=60)"
            url = (f"{gunicorn.url}/api" if args.view == "api"
                   else f"{gunicorn.url}/slow?seconds={args.hold}")
            started = time.monotonic()
            results = burst(url, args.requests, args.concurrency, label)
            elapsed = time.monotonic() - started
            time.sleep(1.0)
        left_1s = db.connection_count("app")
        time.sleep(5.5)  # past the pool's linger (5 s): surplus connections close
        left = db.connection_count("app")
        # One "Internal Server Error" record per failed request, each with its traceback.
        records = gunicorn.output().split("Internal Server Error")[1:]
    too_many = sum("Too many connections" in record for record in records)
    errors = [body for status, body in results if status != 200]
    return {
        "stack": f"wsgi_dbpool (size 4, max_outstanding {args.max_outstanding}, hold=\"{hold}\")"
        if pooled else "plain Django, CONN_MAX_AGE=60",
        "requests": len(results),
        "ok": len(results) - len(errors),
        "errors": len(errors),
        "too_many": too_many,
        "peak": sampler.peak,
        "left_1s": left_1s,
        "left": left,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.storm", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--hold", type=float, default=0.2, help="seconds the slow view holds its connection")
    parser.add_argument("--max-connections", type=int, default=60, help="the server's max_connections")
    parser.add_argument("--max-outstanding", type=int, default=20)
    parser.add_argument("--view", choices=("slow", "api"), default="slow",
                        help="slow: a view holding its connection; api: a view waiting on an API")
    parser.add_argument("--chart", help="with --view api: draw the table to this PNG")
    args = parser.parse_args()

    ensure_installed()
    with MariaDBServer(max_connections=args.max_connections) as db:
        env = child_env(
            DJANGO_SETTINGS_MODULE="demo.settings", DEMO_DATABASE=json.dumps(db.django_settings())
        )
        subprocess.run([sys.executable, "-m", "django", "migrate", "--no-input", "-v", "0"],
                       cwd=ROOT, env=env, check=True)
        subprocess.run([sys.executable, "-m", "demo.seed"], cwd=ROOT, env=env, check=True)
        target = "/api (a query, 50 ms on an API, a query)" if args.view == "api" else \
            f"/slow?seconds={args.hold}"
        print(f"storm: {args.requests} requests, {args.concurrency} at once, at {target}; "
              f"MariaDB max_connections={args.max_connections}", file=sys.stderr)
        runs = [(False, "request"), (True, "request")]
        if args.view == "api":
            runs += [(True, "lazy"), (True, "transaction")]
        rows = [run_once(db, pooled, args, hold) for pooled, hold in runs]
    print()
    print("| stack | requests | errors | \"Too many connections\" | peak server connections | "
          "open 1 s after | open 6.5 s after | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stack']} | {r['requests']} | {r['errors']} | {r['too_many']} | {r['peak']} | "
              f"{r['left_1s']} | {r['left']} | {r['seconds']:.1f} |")
    print("\n(server connections: the app's MariaDB user in information_schema.PROCESSLIST, "
          "sampled every 20 ms; \"Too many connections\": MySQL error 1040 in the worker's log)")
    if args.chart:
        chart(rows, args)


def chart(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Requests per second and peak server connections, one bar per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["stack"].replace("wsgi_dbpool (size 4, ", "wsgi_dbpool (").replace(", hold=", ",\nhold=")
              for r in rows]
    rates = [r["requests"] / r["seconds"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, values, title in ((left, rates, "requests/s (errors in red)"),
                              (right, [r["peak"] for r in rows], "peak server connections")):
        bars = ax.barh(labels, values, color=["#9aa5b1"] + ["#2f6fdf"] * (len(rows) - 1))
        for bar, row in zip(bars, rows, strict=True):
            note = f"  ({row['errors']} errors)" if row["errors"] and ax is left else ""
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bar.get_width():.0f}{note}",
                    va="center", fontsize=9, color="#c0392b" if note else "#333")
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.set_xlim(0, max([*values, 1]) * 1.5)
    fig.suptitle(f"{args.requests} requests, {args.concurrency} at once, a view waiting 50 ms on an API "
                 f"between two queries; MariaDB max_connections={args.max_connections}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.chart, dpi=110)


if __name__ == "__main__":
    main()
