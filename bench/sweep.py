"""How few connections each pool needs: ``python -m bench.sweep``.

The ``io`` view (a query, 50 ms waiting on something else, a query; 300 clients) served by
each of our hold modes and the best peer at caps of 2, 5, 10, 20 and 40 connections, beside
the no-cap stack (every request on its own connection: the CPU's limit), in interleaved
rounds (``bench.compare``'s), medians kept. For each stack: requests/s against the server
connections it used (sampled from the server), and the smallest cap reaching 0.9× the
no-cap throughput, the figure an operator sizes a fleet with. Writes OUT.json, OUT.md and
OUT.png (the chart) per backend, ``docs/cap-sweep-BACKEND`` by default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.compare import OURS, STACKS, Run, machine, run_rounds, summarise, unusable
from bench.databases import BACKENDS
from bench.harness import ROOT, bench_database

CAPS = (2, 5, 10, 20, 40)
BEST_PEER = {"mariadb": "old_patch", "postgresql": "django_pool"}  # on io, in docs/hold-bench.md and #21
SHARE = 0.9  # of the no-cap throughput


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="postgresql")
    parser.add_argument("--quick", action="store_true", help="short runs, one round")
    parser.add_argument("--caps", default=",".join(map(str, CAPS)))
    parser.add_argument("--stacks", help="comma-separated (default: our three hold modes and the best peer)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (8; --quick 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (3; --quick 1)")
    parser.add_argument("--out", help="OUT.json, OUT.md, OUT.png; default docs/cap-sweep-BACKEND")
    args = parser.parse_args(argv)
    args.caps = [int(c) for c in args.caps.split(",")]
    args.io_seconds = args.seconds or (2 if args.quick else 8)
    args.warmup = 1 if args.quick else 3
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.linger, args.max_outstanding, args.db_max_connections = 5.0, 20, 100
    for backend in backends(args.backend):
        problem = unusable(stacks_for(args, backend), ["io"], backend)
        if problem:
            parser.error(problem)
    return args


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


def stacks_for(args: argparse.Namespace, backend: str) -> list[str]:
    return args.stacks.split(",") if args.stacks else [*OURS, BEST_PEER[backend]]


def label(stack: str, cap: int) -> str:
    return f"{stack}@{cap}"


def plan(stacks: Sequence[str], caps: Sequence[int]) -> list[Run]:
    runs = [Run(label(s, c), s, {"POOL_MAX_OUTSTANDING": str(c)}) for c in caps for s in stacks]
    return [*runs, Run("no_cap", "no_cap")]


def curves(results: dict[str, dict[str, Any]], stacks: Sequence[str], caps: Sequence[int]) -> dict[str, Any]:
    """Per stack: a point per cap, and the smallest cap reaching SHARE of no cap (None: none did)."""
    no_cap = results["no_cap"]["io"]["rps"]
    out: dict[str, Any] = {"no_cap_rps": no_cap, "stacks": {}}
    for stack in stacks:
        points = [{"cap": c, **{k: results[label(stack, c)]["io"][k]
                                for k in ("rps", "peak", "p99_ms", "errors", "cpu_us")}} for c in caps]
        reaching = [p["cap"] for p in points if p["rps"] >= SHARE * no_cap]
        out["stacks"][stack] = {"points": points, "smallest_cap": min(reaching, default=None)}
    return out


def report(sweep: dict[str, Any], caps: Sequence[int], meta: dict[str, Any]) -> str:
    no_cap = sweep["no_cap_rps"]
    lines = [
        f"# How few connections: the cap swept on `/io` — {meta['date']}", "",
        f"{meta['machine']}; {meta['backend']}; one gunicorn gevent worker; 300 clients on a query, "
        f"50 ms waiting on something else, a query; `{meta['command']}`; median of {meta['rounds']} "
        f"interleaved round(s). No cap: {no_cap:.0f} requests/s.", "",
        "| stack | " + " | ".join(f"cap {c}" for c in caps) + f" | smallest cap ≥ {SHARE}× no cap |",
        "|---" + "|---:" * (len(caps) + 1) + "|",
    ]
    for stack, curve in sweep["stacks"].items():
        cells = [f"{p['rps']:.0f} ({p['rps'] / no_cap:.2f}×, {p['peak']} conn.)" for p in curve["points"]]
        smallest = curve["smallest_cap"]
        lines.append(f"| {STACKS[stack]} | " + " | ".join(cells) + f" | {smallest or 'none'} |")
    ours, held = sweep["stacks"].get("wsgi_dbpool_transaction"), sweep["stacks"].get("wsgi_dbpool")
    if ours and held and ours["smallest_cap"] and held["smallest_cap"]:
        mine, theirs = ours["smallest_cap"], held["smallest_cap"]
        lines += ["", f"`hold=\"transaction\"` needs {theirs / mine:.1f}× fewer connections than the "
                      f"request-held pool to reach {SHARE}× no cap ({mine} against {theirs})."]
    return "\n".join(lines)


def chart(sweep: dict[str, Any], caps: Sequence[int], backend: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.6))
    for stack, curve in sweep["stacks"].items():
        ours = stack.startswith("wsgi_dbpool")
        ax.plot([p["peak"] for p in curve["points"]], [p["rps"] for p in curve["points"]], marker="o",
                linestyle="-" if ours else "--", label=STACKS[stack])
    no_cap = sweep["no_cap_rps"]
    ax.axhline(no_cap, color="#333", linewidth=1, label=f"no cap ({no_cap:.0f}/s)")
    ax.axhline(SHARE * no_cap, color="#999", linewidth=1, linestyle=":", label=f"{SHARE}× no cap")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(caps), labels=[str(c) for c in caps])
    ax.set_xlabel("server connections (peak, sampled from the server)")
    ax.set_ylabel("requests/s")
    ax.set_title(f"/io on {backend}: a query, 50 ms elsewhere, a query; 300 clients", fontsize=10)
    highest = max([no_cap, 1.0, *(p["rps"] for c in sweep["stacks"].values() for p in c["points"])])
    ax.set_ylim(0, highest * 1.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_backend(args: argparse.Namespace, backend: str) -> None:
    stacks = stacks_for(args, backend)
    with bench_database(backend, max_connections=args.db_max_connections) as db:
        rounds = run_rounds(db, plan(stacks, args.caps), ["io"], args)
    sweep = curves(summarise(rounds), stacks, args.caps)
    meta = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "backend": backend,
        "command": " ".join(["python -m bench.sweep", *sys.argv[1:]]), "rounds": args.rounds,
    }
    text = report(sweep, args.caps, meta)
    print(text)
    out = Path(args.out) if args.out else ROOT / "docs" / "cap-sweep"
    out = out.with_name(f"{out.name}-{backend}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "sweep": sweep}, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    chart(sweep, args.caps, backend, out.with_suffix(".png"))


def main() -> None:
    args = parse_args()
    for backend in backends(args.backend):
        run_backend(args, backend)


if __name__ == "__main__":
    main()
