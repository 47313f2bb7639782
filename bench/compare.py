"""wsgi_dbpool beside the alternatives, same machine, same run: ``python -m bench.compare``.

Each stack is served by one gunicorn gevent worker (``bench.djsite``) in front of a
throwaway database, MariaDB (``max_connections=100``) or PostgreSQL (``--backend``); ``wrk``
(Debian's) is the load; every server-side figure comes from the server itself (the
connections it counts, its process list), and the worker's own CPU time from
``/proc/PID/stat`` (utime + stime over the load, divided by the requests completed).

Scenarios: ``io`` and ``io_first`` (300 clients on a view that waits 50 ms on
something else, beside its queries: what ``hold=`` is for; ``io_session``: as ``io``, one
request in ten setting session state first), ``throughput`` (50 clients,
one indexed query: on a cap of 20, the hand-off included), ``steady`` (10 clients, below
the cap: the pool's own cost; server connections opened per 1,000 requests), ``streaming``
(a response querying while it streams: bodies intact, connections returned), ``storm`` (300
clients on a view holding its connection 50 ms), ``ceiling`` (a view touching no database,
alone and during a storm). ``--quick`` runs the MariaDB set in about two minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.databases import BACKENDS
from bench.harness import ROOT, BenchDatabase, PeakSampler, Server, bench_database, run_wrk, serving
from testbed.servers import child_env

STACKS = {
    "per_request": "CONN_MAX_AGE=0, no pool",
    "persistent": "CONN_MAX_AGE=60, no pool",
    "no_cap": "no cap: a connection per client, max_connections 400",
    "old_patch": "django_db_pooling 0.0.4",
    "sqlalchemy": "django-db-connection-pool 1.2 (QueuePool)",
    "django_pool": "Django's own pool (OPTIONS[\"pool\"], psycopg_pool)",
    "geventpool": "django-db-geventpool 4.0",
    "wsgi_dbpool": "wsgi_dbpool",
    "wsgi_dbpool_session": "wsgi_dbpool, reset=\"session\"",
    "wsgi_dbpool_lazy": "wsgi_dbpool, hold=\"lazy\"",
    "wsgi_dbpool_transaction": "wsgi_dbpool, hold=\"transaction\"",
}
# Peers that work on one backend only (PyMySQL patches / a MySQL backend; psycopg pools).
ONLY_ON = {
    "old_patch": "mariadb", "sqlalchemy": "mariadb", "django_pool": "postgresql", "geventpool": "postgresql",
}
OURS = ["wsgi_dbpool", "wsgi_dbpool_lazy", "wsgi_dbpool_transaction"]
DEFAULT_STACKS = {
    "mariadb": ["per_request", "persistent", "old_patch", "sqlalchemy", "wsgi_dbpool"],
    "postgresql": ["persistent", "django_pool", "geventpool", *OURS, "no_cap"],
}
DEFAULT_SCENARIOS = {
    "mariadb": ["throughput", "steady", "streaming", "storm", "ceiling", "io", "io_first", "io_session"],
    "postgresql": ["throughput", "steady", "io", "io_first"],
}
HOLD_SECONDS = 0.05
NO_CAP_SCENARIOS = ("io", "io_first", "io_session")  # the no-cap stack is the limit of these, nothing else
NO_CAP_CONNECTIONS = 400
BASELINE = "persistent"  # what CPU per request is compared with


def linger_pause(args: argparse.Namespace) -> None:
    time.sleep(args.linger + 1.5)  # surplus connections of the pools close by then


# -- scenarios: each serves one stack's gunicorn and returns what it measured --------------


def throughput(server: Server, db: BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
    server.warm("/query/", clients=50, seconds=args.warmup)
    before = db.app_connects()
    result = server.load("/query/", clients=50, seconds=args.seconds)
    result["opened"] = db.app_connects() - before
    return result


def steady(server: Server, db: BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
    server.warm("/query/", clients=10, seconds=args.warmup)
    before = db.app_connects()
    result = server.load("/query/", clients=10, seconds=args.seconds)
    result["opened"] = opened = db.app_connects() - before
    result["opened_per_1000"] = 1000 * opened / max(1, result["requests"])
    return result


def streaming(server: Server, db: BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
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


def storm(server: Server, db: BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
    failed_before, too_many_before = server.failed_requests()
    sampler = PeakSampler(db, ignore_errors=True)  # type: ignore[arg-type]
    result = server.load("/hold/", clients=300, seconds=args.storm_seconds, threads=2)
    result["peak"] = sampler.stop()
    failed, too_many = server.failed_requests()
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    result["too_many"] = too_many - too_many_before
    result["logged_500"] = failed - failed_before
    linger_pause(args)
    result["left_open"] = db.connection_count("app")
    return result


def ceiling(server: Server, db: BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
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


def storm_limit(db: BenchDatabase, slots: int, seconds: float) -> float:
    """The storm's physical limit, measured: ``slots`` connections doing nothing but the
    50 ms hold back to back, straight through PyMySQL under gevent (no HTTP, no Django).
    MariaDB only (0.0 elsewhere)."""
    if db.backend != "mariadb":
        return 0.0
    done = subprocess.run(
        [sys.executable, "-m", "bench.storm_limit", str(db.port), str(slots), str(seconds)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True,
        check=True,
    )
    return float(done.stdout.strip())


Scenario = Callable[[Server, BenchDatabase, argparse.Namespace], dict[str, Any]]


def _io(path: str) -> Scenario:
    def scenario(server: Server, db: BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
        """300 clients on a view that waits 50 ms on something else beside its queries."""
        failed_before, _ = server.failed_requests()
        server.warm(path, clients=300, seconds=args.warmup)  # every stack warm, its queue drained
        # The app user's own count (the sampler's admin connections are not in it), read
        # while the sampler is not running: on a MariaDB full of a stack's connections the
        # two admin connections would compete for the one slot kept for SUPER.
        before = db.app_connects()
        sampler = PeakSampler(db, every=0.005, ignore_errors=True)  # type: ignore[arg-type]
        result = server.load(path, clients=300, seconds=args.io_seconds)
        result["peak"] = sampler.stop()
        result["opened"] = db.app_connects() - before
        result["errors"] = result["non_2xx"] + result["socket_errors"]
        result["logged_500"] = server.failed_requests()[0] - failed_before
        return result

    return scenario


SCENARIOS: dict[str, Scenario] = {
    "throughput": throughput, "steady": steady, "streaming": streaming,
    "storm": storm, "ceiling": ceiling, "io": _io("/io/"), "io_first": _io("/io_first/"),
    "io_session": _io("/io_session/"),
}
RATED = ("throughput", "steady", "io", "io_first", "io_session")


# -- rounds: every run served fresh, the runs interleaved, the median kept -----------------


@dataclass(frozen=True)
class Run:
    """One row of a table: a stack, and what its environment adds (the sweep's cap)."""

    label: str
    stack: str
    env: dict[str, str] = field(default_factory=dict)


Rounds = dict[str, dict[str, list[dict[str, Any]]]]  # label -> scenario -> one result per round


def rotated(items: Sequence[Run], by: int) -> list[Run]:
    start = by % len(items)
    return [*items[start:], *items[:start]]


def run_rounds(db: BenchDatabase, runs: Sequence[Run], scenarios: Sequence[str],
               args: argparse.Namespace) -> Rounds:
    """Rated scenarios run in ``args.rounds`` rounds, the runs interleaved (each round starts
    one further along): these 2-core VMs are noisy, and neighbours in time share the noise.
    The others run once, in the first round."""
    rated = [s for s in scenarios if s in RATED]
    once = [s for s in scenarios if s not in RATED]
    rounds: Rounds = {run.label: {} for run in runs}
    for round_no in range(args.rounds):
        for run in rotated(runs, round_no):
            names = [*rated, *once] if round_no == 0 else rated
            for name, result in serve_and_measure(db, run, names, args, round_no):
                rounds[run.label].setdefault(name, []).append(result)
    return rounds


def serve_and_measure(db: BenchDatabase, run: Run, names: Sequence[str], args: argparse.Namespace,
                      round_no: int) -> list[tuple[str, dict[str, Any]]]:
    """One gunicorn for ``run``, each scenario of ``names`` in turn on it."""
    if run.stack == "no_cap":
        names = [n for n in names if n in NO_CAP_SCENARIOS]
    if not names:
        return []
    env = {"POOL_MAX_OUTSTANDING": str(args.max_outstanding), "POOL_LINGER": str(args.linger), **run.env}
    measured = []
    if run.stack == "no_cap":  # every one of the 300 clients on its own connection
        db.allow_connections(NO_CAP_CONNECTIONS)
    try:
        with serving(run.stack, db, env) as server:
            for name in names:
                started = time.monotonic()
                result = SCENARIOS[name](server, db, args)
                measured.append((name, result))
                print(f"{run.label:>12} {name:<10} round {round_no + 1} {time.monotonic() - started:5.1f}s "
                      f"{result}", file=sys.stderr, flush=True)
    finally:
        if run.stack == "no_cap":
            db.allow_connections(args.db_max_connections)
    return measured


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median requests/s; CPU per request is its own median (a steadier figure
    that need not come from the same round)."""
    ordered = sorted(runs, key=lambda r: r.get("rps", 0))
    result = {**ordered[len(ordered) // 2], "rounds": len(runs)}
    if len(runs) > 1:
        result["rps_all"] = [round(r["rps"]) for r in runs if "rps" in r]
    cpu = [r["cpu_us"] for r in runs if "cpu_us" in r]
    if cpu:
        result["cpu_us"] = round(statistics.median(cpu), 1)
        result["cpu_us_all"] = cpu
    return result


def cpu_ratio(ours: dict[str, Any], base: dict[str, Any]) -> float:
    """CPU per request ÷ the baseline's: the median of the per-round ratios (both ran in
    every round), else the ratio of the medians."""
    mine: list[float] = ours.get("cpu_us_all", [])
    theirs: list[float] = base.get("cpu_us_all", [])
    if mine and len(mine) == len(theirs) and all(theirs):
        return round(statistics.median([m / t for m, t in zip(mine, theirs, strict=True)]), 3)
    top: float = ours["cpu_us"]
    bottom: float = base["cpu_us"]
    return round(top / bottom, 3) if bottom else float("nan")


def summarise(rounds: Rounds, baseline: str = BASELINE) -> dict[str, dict[str, Any]]:
    """Per run and scenario, the median round; ``cpu_vs_baseline`` where the baseline ran."""
    results = {label: {name: median_round(runs) for name, runs in by_name.items()}
               for label, by_name in rounds.items()}
    base = results.get(baseline, {})
    for by_name in results.values():
        for name, result in by_name.items():
            if "cpu_us" in result and "cpu_us" in base.get(name, {}):
                result["cpu_vs_baseline"] = cpu_ratio(result, base[name])
    return results


# -- the report ---------------------------------------------------------------------------


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "∞"


Columns = list[tuple[str, str, str]]  # (header, result key, format)


def table(results: dict[str, dict[str, Any]], title: str, scenario: str, columns: Columns,
          key: str | None) -> list[str]:
    """A markdown table of one scenario, a row per stack; with ``key``, wsgi_dbpool ÷ stack."""
    rows = [(s, r[scenario]) for s, r in results.items() if scenario in r]
    if not rows:
        return []
    ours = results.get("wsgi_dbpool", {}).get(scenario) if key else None
    titles = ["stack", *[c[0] for c in columns], *([f"wsgi_dbpool ÷ stack ({key})"] if ours else [])]
    lines = [f"## {title}", "", "| " + " | ".join(titles) + " |", "|---" + "|---:" * (len(titles) - 1) + "|"]
    for stack, r in rows:
        cells = row_cells(stack, r, columns) + ([ratio(ours[key], r[key])] if ours and key else [])
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def row_cells(stack: str, result: dict[str, Any], columns: Columns) -> list[str]:
    return [STACKS.get(stack, stack)] + [fmt.format(result.get(f, float("nan"))) for _, f, fmt in columns]


def io_table(results: dict[str, dict[str, Any]], scenario: str, title: str) -> list[str]:
    rows = [(s, r[scenario]) for s, r in results.items() if scenario in r]
    if not rows:
        return []
    peers = [r["rps"] for s, r in rows if not s.startswith("wsgi_dbpool") and s != "no_cap"]
    best_peer = max(peers, default=0.0)
    no_cap = results.get("no_cap", {}).get(scenario, {}).get("rps", 0.0)
    lines = [f"## {title}", "", "| stack | requests/s | p50 ms | p99 ms | errors | peak server connections "
             "| opened | worker CPU µs/request | ÷ best peer | ÷ no cap |", "|---" + "|---:" * 9 + "|"]
    for stack, r in rows:
        lines.append(
            f"| {STACKS.get(stack, stack)} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.0f} | "
            f"{r['errors']} | {r['peak']} | {r['opened']} | {r.get('cpu_us', float('nan')):.0f} | "
            f"{ratio(r['rps'], best_peer)} | {ratio(r['rps'], no_cap)} |"
        )
    return [*lines, ""]


def cpu_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Worker CPU per request at 10 clients (below the cap) and 50 (on a cap of 20)."""
    rows = [s for s, r in results.items() if "steady" in r or "throughput" in r]
    if not rows:
        return []
    lines = [
        "## CPU per request: the worker's own utime + stime over the load ÷ requests completed", "",
        f"Ratios are to `{BASELINE}` (CONN_MAX_AGE=60, no pool): the median of the per-round ratios. "
        "Busy: the share of the window the worker was on a CPU (near 1: requests/s is the CPU's limit).", "",
        "| stack | 10 clients µs | ÷ persistent | busy | 50 clients µs | ÷ persistent | busy |",
        "|---" + "|---:" * 6 + "|",
    ]
    for stack in rows:
        cells = [STACKS.get(stack, stack)]
        for scenario in ("steady", "throughput"):
            r = results[stack].get(scenario, {})
            cells += [f"{r.get('cpu_us', float('nan')):.0f}", f"{r.get('cpu_vs_baseline', float('nan')):.3f}",
                      f"{r.get('cpu_busy', float('nan')):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def header(meta: dict[str, Any]) -> list[str]:
    return [
        f"# wsgi_dbpool beside the alternatives — {meta['date']}",
        "",
        f"{meta['machine']}; one gunicorn gevent worker per stack; {meta['database']}; "
        f"pools size=4, max_outstanding={meta['max_outstanding']}; wrk; `{meta['command']}`; "
        f"throughput, steady, io and io_first: median of {meta['rounds']} interleaved round(s)",
        "",
    ]


def storm_section(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    title = f"storm: 300 clients, a view holding its connection {HOLD_SECONDS * 1000:.0f} ms"
    lines = table(results, title, "storm", [
        ("requests/s", "rps", "{:.0f}"), ("p99 ms", "p99_ms", "{:.0f}"), ("errors", "errors", "{}"),
        ("\"Too many connections\"", "too_many", "{}"), ("peak server connections", "peak", "{}"),
        ("open afterwards", "left_open", "{}"), ("÷ physical limit", "of_limit", "{:.2f}"),
    ], "rps")
    if lines and meta.get("storm_limit_rps"):
        lines[-1:-1] = [
            f"Physical limit, measured in this run: {meta['storm_limit_rps']:.0f} requests/s "
            f"({meta['max_outstanding']} connections doing only the 50 ms hold, back to "
            f"back, through PyMySQL with no HTTP and no Django).", "",
        ]
    return lines


def report(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = header(meta)
    lines += table(results, "throughput: 50 clients, one indexed query", "throughput", [
        ("requests/s", "rps", "{:.0f}"), ("p50 ms", "p50_ms", "{:.1f}"), ("p99 ms", "p99_ms", "{:.1f}"),
        ("non-2xx", "non_2xx", "{}"), ("server connections opened", "opened", "{}"),
    ], "rps")
    lines += table(results, "steady: 10 clients, one indexed query (churn)", "steady", [
        ("requests/s", "rps", "{:.0f}"), ("p99 ms", "p99_ms", "{:.1f}"),
        ("connections opened", "opened", "{}"), ("per 1,000 requests", "opened_per_1000", "{:.2f}"),
    ], "rps")
    lines += cpu_table(results)
    lines += table(results, "streaming: a response querying while it streams", "streaming", [
        ("requests", "requests", "{}"), ("bodies intact", "intact", "{}"),
        ("connections open afterwards", "left_open", "{}"),
    ], None)
    lines += storm_section(results, meta)
    lines += io_table(results, "io", "io: 300 clients; a query, 50 ms waiting on something else, a query")
    lines += io_table(results, "io_first",
                      "io_first: 300 clients; 50 ms waiting on something else, then a query")
    lines += io_table(results, "io_session",
                      "io_session: as io, and one request in ten sets a session variable first")
    lines += table(results, "ceiling: a view touching no database (health check)", "ceiling", [
        ("alone, requests/s", "alone_rps", "{:.0f}"),
        ("during a storm, requests/s", "during_storm_rps", "{:.0f}"),
        ("during a storm, p99 ms", "during_storm_p99_ms", "{:.0f}"),
    ], "during_storm_rps")
    return "\n".join(lines)


PANELS = (
    ("throughput", "rps", "throughput, requests/s"),
    ("storm", "rps", "storm, requests/s (errors in red)"),
    ("ceiling", "during_storm_rps", "health check during a storm, requests/s"),
    ("io", "rps", "io: query, 50 ms wait, query; requests/s"),
    ("io_first", "rps", "io_first: 50 ms wait, query; requests/s"),
)


def draw_panel(ax: Any, results: dict[str, dict[str, Any]], scenario: str, key: str, title: str) -> None:
    stacks = [s for s in results if scenario in results[s]]
    values = [results[s][scenario].get(key, 0) for s in stacks]
    colors = ["#2f6fdf" if s.startswith("wsgi_dbpool") else "#9aa5b1" for s in stacks]
    bars = ax.barh(stacks, values, color=colors)
    for bar, stack in zip(bars, stacks, strict=True):
        errors = results[stack][scenario].get("errors", 0) if scenario != "throughput" else 0
        label = f"{bar.get_width():.0f}" + (f"  ({errors} errors)" if errors else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label,
                va="center", color="#c0392b" if errors else "#333", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max([*values, 1]) * 1.45)


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(p[0] in r for r in results.values())]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        draw_panel(ax, results, *panel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="mariadb")
    parser.add_argument("--quick", action="store_true", help="short runs: about two minutes in all")
    parser.add_argument("--stacks", help=f"comma-separated, from {', '.join(STACKS)} (default: per backend)")
    parser.add_argument("--scenarios",
                        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: per backend)")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the rated scenarios (3; --quick 1)")
    parser.add_argument("--max-outstanding", type=int, default=20)
    parser.add_argument("--out", help="writes OUT.json, OUT.md and OUT.png (default docs/bench, "
                                      "docs/bench-postgresql; with both backends, -postgresql added)")
    args = parser.parse_args(argv)
    timings(args)
    for backend in backends(args.backend):
        problem = unusable(*chosen(args, backend), backend)
        if problem:
            parser.error(problem)
    return args


def unusable(stacks: list[str], scenarios: list[str], backend: str) -> str:
    """What is wrong with the stacks and scenarios asked for on ``backend`` ('' when nothing)."""
    unknown = [s for s in stacks if s not in STACKS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        return f"unknown {unknown}; stacks: {list(STACKS)}, scenarios: {list(SCENARIOS)}"
    elsewhere = [s for s in stacks if ONLY_ON.get(s, backend) != backend]
    if elsewhere:
        return f"{elsewhere} run on {[ONLY_ON[s] for s in elsewhere]} only, not on {backend}"
    return not_installed(stacks)


# The peers' packages (module, what pip installs), checked before any server starts.
PEER_PACKAGES = {
    "old_patch": ("django_db_pooling", "django-db-pooling==0.0.4"),
    "sqlalchemy": ("dj_db_conn_pool", "django-db-connection-pool==1.2.6"),
    "django_pool": ("psycopg_pool", "psycopg-pool"),
    "geventpool": ("django_db_geventpool", "django-db-geventpool"),
}


def not_installed(stacks: list[str]) -> str:
    missing = [PEER_PACKAGES[s][1] for s in stacks
               if s in PEER_PACKAGES and importlib.util.find_spec(PEER_PACKAGES[s][0]) is None]
    return f"not installed: pip install {' '.join(missing)}" if missing else ""


def timings(args: argparse.Namespace) -> None:
    """The durations, short with ``--quick``."""
    args.seconds = args.seconds or (2 if args.quick else 10)
    args.warmup = 1 if args.quick else 3
    args.storm_seconds = 3 if args.quick else 10
    args.io_seconds = 3 if args.quick else 8
    args.stream_requests = 40 if args.quick else 200
    args.linger = 5.0
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.db_max_connections = 100


def chosen(args: argparse.Namespace, backend: str) -> tuple[list[str], list[str]]:
    stacks = args.stacks.split(",") if args.stacks else DEFAULT_STACKS[backend]
    scenarios = args.scenarios.split(",") if args.scenarios else DEFAULT_SCENARIOS[backend]
    return stacks, scenarios


def out_path(args: argparse.Namespace, backend: str) -> Path:
    if args.out is None:
        return ROOT / "docs" / ("bench" if backend == "mariadb" else f"bench-{backend}")
    out = Path(args.out)
    return out.with_name(out.name + f"-{backend}") if args.backend == "both" and backend != "mariadb" else out


def machine() -> str:
    return (f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
            f"{platform.machine()}")


def write_outputs(out: Path, text: str, results: dict[str, Any], meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    chart(results, out.with_suffix(".png"))


def run_backend(args: argparse.Namespace, backend: str) -> None:
    stacks, scenarios = chosen(args, backend)
    with bench_database(backend, max_connections=args.db_max_connections) as db:
        limit = storm_limit(db, args.max_outstanding, args.storm_seconds) if "storm" in scenarios else 0.0
        rounds = run_rounds(db, [Run(s, s) for s in stacks], scenarios, args)
    results = summarise(rounds)
    for by_name in results.values():
        if "storm" in by_name and limit:
            by_name["storm"]["of_limit"] = by_name["storm"]["rps"] / limit
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "backend": backend,
        "database": ("MariaDB max_connections=100" if backend == "mariadb"
                     else "PostgreSQL max_connections=400 (each stack capped by its own pool)"),
        "command": " ".join(["python -m bench.compare", *sys.argv[1:]]),
        "max_outstanding": args.max_outstanding,
        "rounds": args.rounds,
        "storm_limit_rps": round(limit, 1),
    }
    text = report(results, meta)
    print(text)
    write_outputs(out_path(args, backend), text, results, meta)


def main() -> None:
    args = parse_args()
    for backend in backends(args.backend):
        run_backend(args, backend)


if __name__ == "__main__":
    main()
