"""The worker's CPU per request, counted in instructions: ``python -m bench.instructions``.

``bench.compare`` reads the worker's CPU time per request under wrk, and on a shared 2-core
VM that figure moves by 10-30% from round to round: it cannot show a 5% difference. This
benchmark counts *instructions* instead, which do not depend on what else the machine is
doing. Each stack's site (``bench.djsite``: the settings, views and pools ``bench.compare``
serves) runs under valgrind's callgrind against a real throwaway database:

- ``--server gunicorn`` (the default): one gunicorn gevent worker, loaded over HTTP by
  ``--clients`` keep-alive connections; the worker's own count (the master's left out);
- ``--server inprocess``: the WSGI app called in one gevent process, as a server does (call,
  iterate, close): stricter, since gunicorn's HTTP work is not in the denominator.

Each stack runs twice, with ``--warm`` and with ``--warm + --requests`` requests; the
difference divided by ``--requests`` is what one request costs, start-up and shutdown left
out. With one client (the default) little depends on timing: in-process on PostgreSQL the
same code gives the same count run after run, to the instruction. What does depend on it is
whether a read finds its answer already there: one that does not parks the greenlet and runs
the hub (epoll, greenlet switches), tens of thousands of instructions, and how often that
happens follows the server's timing (on MariaDB, 4% to 30% of the requests in one run; the
count moves by up to ±15,000 instructions per request with it). Hence ``--rounds``: each
round counts every stack once, interleaved, and the table gives the median and the spread.
More clients interleave requests by when the database answers, which moves the count too.

What it leaves out: the kernel's share of the worker's CPU (the socket calls, the same for
every stack; 13-18% of the worker's CPU on ``/query/`` under wrk here), so a ratio here is
an upper bound for the whole CPU's. And timing: callgrind slows the worker ~50×, so a cap
is reached less often than under real load; below the cap (the default, 1 client on 20) is
what this is for: the pool's own cost.

Needs valgrind (Debian's; installed when missing, as root). About two minutes per stack.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BASELINE = "persistent"
DEFAULT_STACKS = {
    "mariadb": ["persistent", "wsgi_dbpool", "wsgi_dbpool_lazy", "wsgi_dbpool_transaction"],
    "postgresql": ["persistent", "django_pool", "wsgi_dbpool", "wsgi_dbpool_lazy", "wsgi_dbpool_transaction"],
}
PATHS = {"q": "/query/", "nodb": "/nodb/"}
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


# -- the child: one stack's site, driven in-process ------------------------------------------

def drive(path: str, clients: int, requests: int) -> None:
    """``clients`` greenlets share ``requests`` calls of the site's WSGI app on ``path``; each
    request is called, iterated and closed as a WSGI server does. Exits non-zero on any
    status but 200."""
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from bench import djsite

    app = djsite.application
    base = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "wsgi.version": (1, 0),
    }
    statuses: list[str] = []
    left = [requests]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            environ = dict(base)
            environ["wsgi.input"] = io.BytesIO(b"")
            result = app(environ, start_response)
            try:
                for _ in result:
                    pass
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    gevent.joinall([gevent.spawn(client) for _ in range(clients)], raise_error=True)
    bad = [s for s in statuses if not s.startswith("200")]
    if bad or len(statuses) != requests:
        sys.exit(f"{len(bad)} of {len(statuses)} requests failed: {bad[:3]}")


# -- the parent: databases, valgrind, the table ------------------------------------------------

def count(stack: str, db: Any, args: argparse.Namespace, requests: int) -> int:
    """Instructions the serving process executed for ``requests`` requests, start to exit."""
    from testbed.servers import child_env

    env = child_env(BENCH_STACK=stack, BENCH_BACKEND=db.backend, BENCH_DB_PORT=str(db.port),
                    POOL_MAX_OUTSTANDING=str(args.max_outstanding), PYTHONHASHSEED="0")
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    if args.server == "gunicorn":
        return _count_gunicorn(valgrind, env, args, requests)
    command = [*valgrind, sys.executable, "-m", "bench.instructions", "--child", "--path",
               PATHS[args.view], "--clients", str(args.clients), "--requests", str(requests)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    found = COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{stack}: the child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return int(found[-1])


def _count_gunicorn(valgrind: list[str], env: dict[str, str], args: argparse.Namespace,
                    requests: int) -> int:
    """One gunicorn gevent worker under callgrind, ``requests`` requests from ``--clients``
    keep-alive connections, then a graceful stop: the worker's own count (the master's is
    left out)."""
    import tempfile
    import urllib.request

    from bench.harness import ROOT
    from testbed.servers import free_port, stop_process, wait_for_port

    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [*valgrind, sys.executable, "-m", "gunicorn", "-c", "bench/gunicorn_conf.py",
             "-b", f"127.0.0.1:{port}", "bench.djsite:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for_port(port, process=process, timeout=600, what="gunicorn under valgrind")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cpu/", timeout=600) as response:
                worker = json.loads(response.read())["pid"]
            try:
                _load(port, PATHS[args.view], args.clients, requests)
            except RuntimeError as exc:  # what the worker logged says why
                stop_process(process, timeout=600)
                log.seek(0)
                raise RuntimeError(f"{exc}\nthe worker's log ends:\n{log.read()[-4000:]}") from None
        finally:
            stop_process(process, timeout=600)
        log.seek(0)
        text = log.read()
    found = re.findall(rf"=={worker}== Collected\s*:\s*(\d+)", text)
    if not found:
        raise RuntimeError(f"no count for the worker {worker}:\n{text[-3000:]}")
    return int(found[-1])


def _load(port: int, path: str, clients: int, requests: int) -> None:
    """Exactly ``requests`` GETs of ``path`` over ``clients`` keep-alive connections (threads:
    the client runs at native speed beside a worker slowed by valgrind)."""
    import http.client
    import threading

    left = [requests]
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(f"{response.status} {response.reason}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {requests} requests failed: {failures[:3]}")


def per_request(stack: str, db: Any, args: argparse.Namespace) -> dict[str, Any]:
    db.kill_user("app")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # the two runs side by side
        short = pool.submit(count, stack, db, args, args.warm)
        long = pool.submit(count, stack, db, args, args.warm + args.requests)
        low, high = short.result(), long.result()
    db.kill_user("app")
    return {"instructions": (high - low) / args.requests, "short": low, "long": high}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A stack's rounds: the median per request (what the table compares), and each round's."""
    each = [r["instructions"] for r in rounds]
    return {"instructions": statistics.median(each), "rounds": each, "runs": rounds}


def report(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    base = results.get(BASELINE, {}).get("instructions")
    lines = [
        f"# Instructions per request: {meta['backend']}, {meta['view']} ({meta['path']}), "
        f"{meta['clients']} client(s), cap {meta['max_outstanding']}, {meta['server']}",
        "",
        f"{meta['python']}, Django {meta['django']}; `{meta['command']}`. Counted by callgrind over "
        f"{meta['requests']} requests after {meta['warm']} (the difference of two runs); "
        f"median of {meta.get('rounds', 1)} interleaved round(s). The count does not depend on "
        "the machine's load, except through the reads that wait (see `bench/instructions.py`).",
        "",
        "| stack | instructions per request | more than persistent | ÷ persistent | rounds |",
        "|---|---:|---:|---:|---|",
    ]
    from bench.compare import STACKS

    for stack, result in results.items():
        ours = result["instructions"]
        extra, ratio = (f"{ours - base:+,.0f}", f"{ours / base:.3f}×") if base else ("—", "—")
        each = ", ".join(f"{r:,.0f}" for r in result.get("rounds", [ours]))
        lines.append(f"| {STACKS.get(stack, stack)} | {ours:,.0f} | {extra} | {ratio} | {each} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", default="postgresql", choices=["mariadb", "postgresql"])
    parser.add_argument("--stacks", help="comma-separated (default: persistent, the peer, ours)")
    parser.add_argument("--view", default="q", choices=list(PATHS))
    parser.add_argument("--server", default="gunicorn", choices=["gunicorn", "inprocess"],
                        help="gunicorn: its gevent worker under valgrind, loaded over HTTP (the "
                             "worker's whole CPU, as bench.compare reads it); inprocess: the WSGI "
                             "app called directly (stricter: no HTTP work in the denominator)")
    parser.add_argument("--clients", type=int, default=1,
                        help="concurrent clients (1: the same count every run)")
    parser.add_argument("--max-outstanding", type=int, default=20)
    parser.add_argument("--warm", type=int, default=100, help="requests before the measured ones")
    parser.add_argument("--requests", type=int, default=500, help="measured requests")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds; the table gives each stack's median")
    parser.add_argument("--out", help="also write the table (.md) and the figures (.json) here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        drive(args.path, args.clients, args.requests)
        return
    from bench.compare import ONLY_ON, STACKS
    from bench.harness import bench_database
    from testbed.servers import ensure_binary

    ensure_binary("valgrind", "valgrind")
    stacks = args.stacks.split(",") if args.stacks else DEFAULT_STACKS[args.backend]
    wrong = [s for s in stacks if s not in STACKS or ONLY_ON.get(s, args.backend) != args.backend]
    if wrong:
        sys.exit(f"not a stack on {args.backend}: {wrong}")
    import django

    meta = {
        "backend": args.backend, "view": args.view, "server": args.server, "path": PATHS[args.view],
        "clients": args.clients,
        "max_outstanding": args.max_outstanding, "warm": args.warm, "requests": args.requests,
        "rounds": args.rounds,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "django": django.get_version(), "command": "python -m bench.instructions " + " ".join(sys.argv[1:]),
    }
    rounds: dict[str, list[dict[str, Any]]] = {stack: [] for stack in stacks}
    # Two runs side by side, each with up to --clients connections of its own (persistent
    # connections, no cap): MariaDB's default of 100 would refuse some at 50 clients. And a
    # worker slowed ~50x by valgrind, opening ten connections at once, may take longer than
    # MariaDB's connect_timeout (10 s) to answer a handshake: the server resets it.
    with bench_database(args.backend, max_connections=400,
                        mariadb_args=["--connect-timeout=300"]) as db:
        for number in range(1, args.rounds + 1):
            for stack in stacks:  # interleaved: a drift in the machine's timing hits them all
                rounds[stack].append(per_request(stack, db, args))
                print(f"round {number}, {stack}: {rounds[stack][-1]['instructions']:,.0f} "
                      "instructions per request", file=sys.stderr, flush=True)
    results = {stack: summarise(counted) for stack, counted in rounds.items()}
    text = report(results, meta)
    print(text)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    if os.environ.get("BENCH_STACK") is None and "--child" in sys.argv:
        sys.exit("the child runs from the parent: python -m bench.instructions")
    main()
