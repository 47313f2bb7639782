"""Where the worker's CPU goes under load: ``python -m bench.profile --stack STACK --view VIEW``.

Serves one stack (``bench.djsite``, one gunicorn gevent worker, a throwaway database), warms
it up, loads one view with wrk and records the worker (not the master) with py-spy: a flame
graph of on-CPU samples (the hub's idle waits left out), written to ``docs/`` by default. The
requests/s and CPU per request printed beside it are taken under py-spy, which pauses the
worker at each sample: compare them with each other, not with ``bench.compare``'s.

Needs py-spy (``pip install py-spy``) and the right to trace the worker (root, or
``kernel.yama.ptrace_scope=0``; in a container, ``CAP_SYS_PTRACE``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.compare import STACKS, unusable
from bench.databases import BACKENDS
from bench.harness import ROOT, bench_database, run_wrk, serving

VIEWS = {"q": "/query/", "io": "/io/", "io_first": "/io_first/", "hold": "/hold/", "nodb": "/nodb/"}
CLIENTS = {"q": 50, "io": 300, "io_first": 300, "hold": 300, "nodb": 50}


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        sys.exit("py-spy is not installed: pip install py-spy (requirements-dev.txt: py-spy>=0.4)")
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--stack", default="wsgi_dbpool_transaction", help=", ".join(STACKS))
    parser.add_argument("--view", default="q", choices=list(VIEWS))
    parser.add_argument("--backend", default="postgresql", choices=list(BACKENDS))
    parser.add_argument("--clients", type=int, help="wrk connections (q 50, io 300, ...)")
    parser.add_argument("--max-outstanding", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="recorded seconds")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", help="the SVG; default docs/flame-BACKEND-STACK-VIEW.svg")
    parser.add_argument("--raw", action="store_true",
                        help="write py-spy's collapsed stacks (.txt) instead of the SVG, and print "
                             "the share of samples under wsgi_dbpool's own frames")
    args = parser.parse_args()
    problem = unusable([args.stack], [], args.backend)
    if problem:
        parser.error(problem)
    args.clients = args.clients or CLIENTS[args.view]
    args.out = Path(args.out or ROOT / "docs" / f"flame-{args.backend}-{args.stack}-{args.view}.svg")
    return args


def record(pid: int, args: argparse.Namespace) -> None:
    command = [py_spy(), "record", "--pid", str(pid), "--duration", str(round(args.seconds)),
               "--rate", str(args.rate)]
    kind, out = ("raw", args.out.with_suffix(".txt")) if args.raw else ("flamegraph", args.out)
    subprocess.run([*command, "--format", kind, "--output", str(out)], check=True, stdout=subprocess.DEVNULL)


def shares(collapsed: Path, marker: str = "wsgi_dbpool/") -> tuple[float, dict[str, float]]:
    """From py-spy's collapsed stacks: the share of samples with a ``marker`` frame anywhere
    in the stack, and the share per function of the frames under it (inclusive)."""
    total = mine = 0
    per_function: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = stack.split(";")
        ours = [f for f in frames if marker in f]
        if ours:
            mine += count
            for frame in dict.fromkeys(ours):
                per_function[frame] = per_function.get(frame, 0) + count
    top = dict(sorted(((f, c / total) for f, c in per_function.items()), key=lambda x: -x[1])[:15])
    return (mine / total if total else 0.0), top


def main() -> None:
    args = parse_args()
    path = VIEWS[args.view]
    env = {"POOL_MAX_OUTSTANDING": str(args.max_outstanding)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with bench_database(args.backend) as db, serving(args.stack, db, env) as server:
        server.warm(path, clients=args.clients, seconds=3)  # pools full, code paths hot, queue drained
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            wrk = pool.submit(run_wrk, server.url + path, clients=args.clients, seconds=args.seconds + 2)
            time.sleep(1)
            first = server.worker()
            record(first["pid"], args)
            last = server.worker()
            result = wrk.result()
    requests = last["requests"] - first["requests"] - 1
    cpu_us = 1e6 * (last["cpu"] - first["cpu"]) / max(1, requests)
    print(f"{args.stack} {path} {args.clients} clients on {args.backend}, under py-spy at {args.rate}/s: "
          f"{result['rps']:.0f} requests/s, {cpu_us:.0f} µs of worker CPU per request, "
          f"{result['non_2xx'] + result['socket_errors']} errors\n"
          f"recorded: {args.out.with_suffix('.txt') if args.raw else args.out}")
    if args.raw:
        share, top = shares(args.out.with_suffix(".txt"))
        print(f"samples under wsgi_dbpool's frames: {share:.1%}")
        for frame, part in top.items():
            print(f"  {part:6.1%}  {frame}")


if __name__ == "__main__":
    main()
