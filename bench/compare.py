"""wsgi_dbpool beside the alternatives, same machine, same run: ``python -m bench.compare``.

Each stack is served by one gunicorn gevent worker (``bench.djsite``) in front of a
throwaway MariaDB with ``max_connections=100``; ``wrk`` (Debian's) is the load; every
server-side figure comes from MariaDB itself (``Connections``, the process list).

Scenarios: ``io`` and ``io_first`` (300 clients on a view that waits 50 ms on
something else, beside its queries: what ``hold=`` is for; ``io_session``: as ``io``, one
request in ten setting session state first), ``throughput`` (50 clients,
one indexed query), ``steady`` (10 clients:
server connections opened per 1,000 requests), ``streaming`` (a response querying while
it streams: bodies intact, connections returned), ``storm`` (300 clients on a view
holding its connection 50 ms), ``ceiling`` (a view touching no database, alone and
during a storm). ``--quick`` runs it all in about two minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import ROOT, PeakSampler, Server, bench_database, run_wrk, serving
from tests.mariadb import MariaDBServer
from tests.servers import child_env

STACKS = {
    "per_request": "CONN_MAX_AGE=0, no pool",
    "persistent": "CONN_MAX_AGE=60, no pool",
    "no_cap": "no cap: CONN_MAX_AGE=60, max_connections 400, warmed up",
    "old_patch": "django_db_pooling 0.0.4",
    "sqlalchemy": "django-db-connection-pool 1.2 (QueuePool)",
    "wsgi_dbpool": "wsgi_dbpool",
    "wsgi_dbpool_session": "wsgi_dbpool, reset=\"session\"",
    "wsgi_dbpool_lazy": "wsgi_dbpool, hold=\"lazy\"",
    "wsgi_dbpool_transaction": "wsgi_dbpool, hold=\"transaction\"",
}
# The stacks of the io scenarios (a view that waits on something else), and of `q` in
# transaction mode beside the peers.
HOLD_STACKS = [
    "old_patch", "sqlalchemy", "wsgi_dbpool", "wsgi_dbpool_lazy", "wsgi_dbpool_transaction", "no_cap",
]
DEFAULT_STACKS = ["per_request", "persistent", "old_patch", "sqlalchemy", "wsgi_dbpool"]
HOLD_SECONDS = 0.05


def linger_pause(args: argparse.Namespace) -> None:
    time.sleep(args.linger + 1.5)  # surplus connections of the pools close by then


def throughput(server: Server, db: MariaDBServer, args: argparse.Namespace) -> dict[str, Any]:
    run_wrk(server.url + "/query/", clients=50, seconds=args.warmup)
    before = db.connections_total()
    result = run_wrk(server.url + "/query/", clients=50, seconds=args.seconds)
    result["opened"] = db.connections_opened_since(before)
    return result


def steady(server: Server, db: MariaDBServer, args: argparse.Namespace) -> dict[str, Any]:
    run_wrk(server.url + "/query/", clients=10, seconds=args.warmup)
    before = db.connections_total()
    result = run_wrk(server.url + "/query/", clients=10, seconds=args.seconds)
    result["opened"] = opened = db.connections_opened_since(before)
    result["opened_per_1000"] = 1000 * opened / max(1, result["requests"])
    return result


def streaming(server: Server, db: MariaDBServer, args: argparse.Namespace) -> dict[str, Any]:
    expected = "".join(f"item {i}\n" for i in range(1, 21))

    def one(_: int) -> bool:
        try:
            with urllib.request.urlopen(server.url + "/stream/", timeout=30) as response:
                return bool(response.status == 200 and response.read().decode() == expected)
        except OSError:
            return False

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        intact = sum(pool.map(one, range(args.stream_requests)))
    linger_pause(args)
    return {"requests": args.stream_requests, "intact": intact, "left_open": db.connection_count("app")}


def storm(server: Server, db: MariaDBServer, args: argparse.Namespace) -> dict[str, Any]:
    failed_before, too_many_before = server.failed_requests()
    sampler = PeakSampler(db, ignore_errors=True)
    result = run_wrk(server.url + "/hold/", clients=300, seconds=args.storm_seconds, threads=2)
    result["peak"] = sampler.stop()
    failed, too_many = server.failed_requests()
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    result["too_many"] = too_many - too_many_before
    result["logged_500"] = failed - failed_before
    linger_pause(args)
    result["left_open"] = db.connection_count("app")
    return result


def ceiling(server: Server, db: MariaDBServer, args: argparse.Namespace) -> dict[str, Any]:
    alone = run_wrk(server.url + "/nodb/", clients=10, seconds=args.seconds)
    storm_thread = threading.Thread(
        target=run_wrk, args=(server.url + "/hold/",),
        kwargs={"clients": 300, "seconds": args.seconds + 2}, daemon=True,
    )
    storm_thread.start()
    time.sleep(1)
    during = run_wrk(server.url + "/nodb/", clients=10, seconds=args.seconds, threads=1)
    storm_thread.join(timeout=args.seconds + 60)
    linger_pause(args)
    return {"alone_rps": alone["rps"], "during_storm_rps": during["rps"],
            "during_storm_p99_ms": during["p99_ms"], "during_storm_errors": during["non_2xx"]}


def storm_limit(db: MariaDBServer, slots: int, seconds: float) -> float:
    """The storm's physical limit, measured: ``slots`` connections doing nothing but the
    50 ms hold back to back, straight through PyMySQL under gevent (no HTTP, no Django)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.storm_limit", str(db.port), str(slots), str(seconds)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True,
        check=True,
    )
    return float(done.stdout.strip())


def _io(path: str) -> Any:
    def scenario(server: Server, db: MariaDBServer, args: argparse.Namespace) -> dict[str, Any]:
        """300 clients on a view that waits 50 ms on something else beside its queries."""
        failed_before, _ = server.failed_requests()
        run_wrk(server.url + path, clients=300, seconds=args.warmup)  # every stack warm
        sampler = PeakSampler(db, every=0.005, ignore_errors=True)
        # The app user's own count: the sampler's admin connections are not in it.
        before = db.user_statistics("app")["total_connections"]
        result = run_wrk(server.url + path, clients=300, seconds=args.io_seconds)
        result["peak"] = sampler.stop()
        result["opened"] = db.user_statistics("app")["total_connections"] - before
        result["errors"] = result["non_2xx"] + result["socket_errors"]
        result["logged_500"] = server.failed_requests()[0] - failed_before
        return result

    return scenario


SCENARIOS = {
    "throughput": throughput, "steady": steady, "streaming": streaming,
    "storm": storm, "ceiling": ceiling, "io": _io("/io/"), "io_first": _io("/io_first/"),
    "io_session": _io("/io_session/"),
}
RATED = ("throughput", "steady", "io", "io_first", "io_session")


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "∞"


def report(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    ours = results.get("wsgi_dbpool", {})
    lines = [
        f"# wsgi_dbpool beside the alternatives — {meta['date']}",
        "",
        f"{meta['machine']}; one gunicorn gevent worker per stack; MariaDB max_connections=100; "
        f"pools size=4, max_outstanding={meta['max_outstanding']}; wrk; `{meta['command']}`; "
        f"throughput, steady, io and io_first: median of {meta['rounds']} interleaved round(s)",
        "",
    ]

    def table(title: str, scenario: str, columns: list[tuple[str, str, str]], key: str | None) -> None:
        rows = [(s, r[scenario]) for s, r in results.items() if scenario in r]
        if not rows:
            return
        lines.extend([f"## {title}", ""])
        header = ["stack", *[c[0] for c in columns]]
        if key and ours.get(scenario):
            header.append(f"wsgi_dbpool ÷ stack ({key})")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---" + "|---:" * (len(header) - 1) + "|")
        for stack, r in rows:
            cells = [STACKS[stack]] + [fmt.format(r.get(field, float("nan"))) for _, field, fmt in columns]
            if key and ours.get(scenario):
                cells.append(ratio(ours[scenario][key], r[key]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    table("throughput: 50 clients, one indexed query", "throughput", [
        ("requests/s", "rps", "{:.0f}"), ("p50 ms", "p50_ms", "{:.1f}"), ("p99 ms", "p99_ms", "{:.1f}"),
        ("non-2xx", "non_2xx", "{}"), ("server connections opened", "opened", "{}"),
    ], "rps")
    table("steady: 10 clients, one indexed query (churn)", "steady", [
        ("requests/s", "rps", "{:.0f}"), ("p99 ms", "p99_ms", "{:.1f}"),
        ("connections opened", "opened", "{}"), ("per 1,000 requests", "opened_per_1000", "{:.2f}"),
    ], "rps")
    table("streaming: a response querying while it streams", "streaming", [
        ("requests", "requests", "{}"), ("bodies intact", "intact", "{}"),
        ("connections open afterwards", "left_open", "{}"),
    ], None)
    table(f"storm: 300 clients, a view holding its connection {HOLD_SECONDS * 1000:.0f} ms", "storm", [
        ("requests/s", "rps", "{:.0f}"), ("p99 ms", "p99_ms", "{:.0f}"), ("errors", "errors", "{}"),
        ("\"Too many connections\"", "too_many", "{}"), ("peak server connections", "peak", "{}"),
        ("open afterwards", "left_open", "{}"), ("÷ physical limit", "of_limit", "{:.2f}"),
    ], "rps")
    if meta.get("storm_limit_rps"):
        lines.insert(-1, f"Physical limit, measured in this run: {meta['storm_limit_rps']:.0f} requests/s "
                         f"({meta['max_outstanding']} connections doing only the 50 ms hold, back to "
                         f"back, through PyMySQL with no HTTP and no Django).")
        lines.insert(-1, "")
    for scenario, title in (
        ("io", "io: 300 clients; a query, 50 ms waiting on something else, a query"),
        ("io_first", "io_first: 300 clients; 50 ms waiting on something else, then a query"),
        ("io_session", "io_session: as io, and one request in ten sets a session variable first"),
    ):
        rows = [(s, r[scenario]) for s, r in results.items() if scenario in r]
        if not rows:
            continue
        peers = [r["rps"] for s, r in rows if not s.startswith("wsgi_dbpool") and s != "no_cap"]
        best_peer = max(peers, default=0.0)
        no_cap = results.get("no_cap", {}).get(scenario, {}).get("rps", 0.0)
        lines.extend([f"## {title}", "", "| stack | requests/s | p50 ms | p99 ms | errors | peak server "
                      "connections | opened | ÷ best peer | ÷ no cap |", "|---" + "|---:" * 8 + "|"])
        for stack, r in rows:
            lines.append(
                f"| {STACKS[stack]} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.0f} | "
                f"{r['errors']} | {r['peak']} | {r['opened']} | {ratio(r['rps'], best_peer)} | "
                f"{ratio(r['rps'], no_cap)} |"
            )
        lines.append("")
    table("ceiling: a view touching no database (health check)", "ceiling", [
        ("alone, requests/s", "alone_rps", "{:.0f}"),
        ("during a storm, requests/s", "during_storm_rps", "{:.0f}"),
        ("during a storm, p99 ms", "during_storm_p99_ms", "{:.0f}"),
    ], "during_storm_rps")
    return "\n".join(lines)


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        panel for panel in (
            ("throughput", "rps", "throughput, requests/s"),
            ("storm", "rps", "storm, requests/s (errors in red)"),
            ("ceiling", "during_storm_rps", "health check during a storm, requests/s"),
            ("io", "rps", "io: query, 50 ms wait, query; requests/s"),
            ("io_first", "rps", "io_first: 50 ms wait, query; requests/s"),
        )
        if any(panel[0] in r for r in results.values())
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    for ax, (scenario, key, title) in zip(axes, panels, strict=True):
        stacks = [s for s in results if scenario in results[s]]
        values = [results[s][scenario].get(key, 0) for s in stacks]
        colors = ["#2f6fdf" if s.startswith("wsgi_dbpool") else "#9aa5b1" for s in stacks]
        bars = ax.barh(stacks, values, color=colors)
        for bar, stack in zip(bars, stacks, strict=True):
            errors = results[stack].get(scenario, {}).get("errors", 0) if scenario != "throughput" else 0
            label = f"{bar.get_width():.0f}" + (f"  ({errors} errors)" if errors else "")
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label,
                    va="center", color="#c0392b" if errors else "#333", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.set_xlim(0, max([*values, 1]) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: about two minutes in all")
    parser.add_argument("--stacks", default=",".join(DEFAULT_STACKS),
                        help=f"comma-separated, from {', '.join(STACKS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--max-outstanding", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench"),
                        help="writes OUT.json, OUT.md and OUT.png")
    args = parser.parse_args()
    args.seconds = args.seconds or (2 if args.quick else 10)
    args.warmup = 1 if args.quick else 3
    args.storm_seconds = 3 if args.quick else 10
    args.io_seconds = 3 if args.quick else 8
    args.stream_requests = 40 if args.quick else 200
    args.linger = 5.0
    args.rounds = 1 if args.quick else 3
    stacks = args.stacks.split(",")
    scenarios = args.scenarios.split(",")
    unknown = [s for s in stacks if s not in STACKS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown stack or scenario {unknown}; stacks: {list(STACKS)}, "
                     f"scenarios: {list(SCENARIOS)}")

    results: dict[str, dict[str, Any]] = {}
    with bench_database() as db:
        limit = storm_limit(db, args.max_outstanding, args.storm_seconds) if "storm" in scenarios else 0
        # Rated scenarios run in rounds, the stacks interleaved, and report the median
        # round: these 2-core VMs are noisy, and neighbours in time share the noise.
        rated = [s for s in scenarios if s in RATED]
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in stacks}
        for round_no in range(args.rounds):
            for stack in stacks[round_no % len(stacks):] + stacks[:round_no % len(stacks)]:
                once = [s for s in scenarios if s not in rated] if round_no == 0 else []
                env = {"POOL_MAX_OUTSTANDING": str(args.max_outstanding), "POOL_LINGER": str(args.linger)}
                if stack == "no_cap":  # every one of the 300 clients on its own connection
                    db.admin_query("SET GLOBAL max_connections = 400")
                try:
                    with serving(stack, db, env) as server:
                        for name in [*rated, *once]:
                            if stack == "no_cap" and name not in ("io", "io_first", "io_session"):
                                continue
                            started = time.monotonic()
                            result = SCENARIOS[name](server, db, args)
                            rounds[stack].setdefault(name, []).append(result)
                            print(f"{stack:>12} {name:<10} round {round_no + 1} "
                                  f"{time.monotonic() - started:5.1f}s {result}", file=sys.stderr,
                                  flush=True)
                finally:
                    if stack == "no_cap":
                        db.admin_query("SET GLOBAL max_connections = 100")
        for stack in stacks:
            results[stack] = {}
            for name, runs in rounds[stack].items():
                runs.sort(key=lambda r: r.get("rps", 0))
                results[stack][name] = {**runs[len(runs) // 2], "rounds": len(runs)}
                if len(runs) > 1:
                    results[stack][name]["rps_all"] = [round(r["rps"]) for r in runs]
            if "storm" in results[stack]:
                results[stack]["storm"]["of_limit"] = results[stack]["storm"]["rps"] / limit
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}, {platform.machine()}",
        "command": " ".join(["python -m bench.compare", *sys.argv[1:]]),
        "max_outstanding": args.max_outstanding,
        "rounds": args.rounds,
        "storm_limit_rps": round(limit, 1),
    }
    text = report(results, meta)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    chart(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
