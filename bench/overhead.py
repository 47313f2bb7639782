"""The middleware's own cost per request, beside other pools measured in the same run.

    python -m bench.overhead            # or: make bench-overhead

Warm pool, one alias, an inner app that does no work, called in-process the way a
server does (call, iterate, close). The figure is the time per request minus the
bare inner app's. Peers: SQLAlchemy's QueuePool checkout+checkin, a bare deque under
a lock, and Django's own binding (``connections[alias] = w``) alone. Runs under
gevent (patched first), as in a gunicorn gevent worker. Several rounds; the median
is reported, since these machines are noisy.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


def setup_django(path: str) -> None:
    import django
    from django.conf import settings

    from testbed.servers import site_settings

    settings.configure(**site_settings(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "CONN_MAX_AGE": None}},
        SECRET_KEY="bench",
    ))
    django.setup()


def per_call(fn: Callable[[], Any], n: int) -> float:
    """Seconds per call of fn, over n calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def median_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    fn()  # warm
    return statistics.median(per_call(fn, n) for _ in range(rounds)) * 1e6


# What Django's ORM sends for a list view: the session-state watch's everyday input.
ORM_SQL = (
    "SELECT `app_item`.`id`, `app_item`.`name`, `app_item`.`created`, `app_item`.`owner_id`, "
    "`auth_user`.`id`, `auth_user`.`username`, `auth_user`.`email` FROM `app_item` INNER JOIN "
    "`auth_user` ON (`app_item`.`owner_id` = `auth_user`.`id`) WHERE (`app_item`.`name` LIKE %s "
    "AND `app_item`.`created` >= %s) ORDER BY `app_item`.`created` DESC LIMIT 21"
)


def watch_cost(n: int, rounds: int) -> float:
    """What the session-state watch adds to one statement: Django wraps each execute wrapper
    in a ``functools.partial`` and calls it (``CursorWrapper._execute_with_wrappers``); the
    statement itself is a no-op here, so only the watch is measured. SQLite is not watched,
    so the MySQL classifier runs on a plain object standing for a pooled wrapper."""
    import functools

    from wsgi_dbpool import failover, session_state
    from wsgi_dbpool.record import Record

    watch = session_state.watcher("mysql", "pin", failover.note)

    class Wrapper:  # what the watch reads and writes: the pooled wrapper's record
        def __init__(self) -> None:
            self._wsgi_dbpool = Record(None)  # type: ignore[arg-type]  # no alias pool here

    context = {"connection": Wrapper(), "cursor": None}
    # A new str per statement, as Django's compiler builds (so its hash is computed anew).
    head, tail = ORM_SQL[:200], ORM_SQL[200:]

    def execute(sql: str, params: Any, many: bool, context: dict[str, Any]) -> None:
        return None

    def bare() -> None:
        execute(head + tail, (), False, context)

    def watched() -> None:
        functools.partial(watch, execute)(head + tail, (), False, context)

    return median_us(watched, n, rounds) - median_us(bare, n, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "bench.sqlite3")
    setup_django(path)

    from django.db import connections

    from wsgi_dbpool import PoolingMiddleware

    def inner(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    app = PoolingMiddleware(inner, size=4, max_outstanding=20, aliases=["default"])
    with app.checkout():  # warm: one real connection in the pool
        connections["default"].ensure_connection()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        return None

    def serve(wsgi: Callable[..., Any]) -> Callable[[], None]:
        def request() -> None:
            result = wsgi(dict(environ), start_response)
            for _ in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

        return request

    from sqlalchemy.pool import QueuePool

    queue_pool = QueuePool(lambda: sqlite3.connect(path), pool_size=4, max_overflow=16)

    def queue_pool_cycle() -> None:
        queue_pool.connect().close()

    idle: collections.deque[object] = collections.deque([object()])
    lock = threading.Lock()

    def deque_cycle() -> None:
        with lock:
            item = idle.pop()
        with lock:
            idle.append(item)

    wrapper = connections.create_connection("default")

    def django_bind_cycle() -> None:
        connections["default"] = wrapper
        del connections["default"]

    n, rounds = args.n, args.rounds
    bare = median_us(serve(inner), n, rounds)
    pooled = median_us(serve(app), n, rounds)
    per_transaction = PoolingMiddleware(
        inner, size=4, max_outstanding=20, aliases=["default"], hold="transaction"
    )
    lazy_request = median_us(serve(per_transaction), n, rounds)  # no query: nothing taken
    with per_transaction.checkout():
        front = connections["default"]

        def statement_cycle() -> None:  # what every statement adds: attach, then detach
            front.ensure_connection()
            front._wsgi_dbpool.front.detach_if_idle(front)

        per_statement = median_us(statement_cycle, n, rounds)
    session_watch = watch_cost(n, rounds)
    figures = {
        "wsgi_dbpool middleware (per request, minus the bare app)": pooled - bare,
        "hold=\"transaction\": per request, before any statement (minus the bare app)": lazy_request - bare,
        "hold=\"transaction\": per statement (take a connection, give it back)": per_statement,
        "session-state watch, per statement (ORM-shaped SQL, MySQL classifier)": session_watch,
        "SQLAlchemy QueuePool checkout+checkin": median_us(queue_pool_cycle, n, rounds),
        "bare deque + lock, pop+append": median_us(deque_cycle, n, rounds),
        "Django binding alone (connections[alias] = w; del)": median_us(django_bind_cycle, n, rounds),
    }
    ours = figures["wsgi_dbpool middleware (per request, minus the bare app)"]
    print(f"# middleware overhead, {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} cores, gevent patched, median of {rounds} x {n} calls")
    print()
    print("| what | µs per request | ÷ wsgi_dbpool |")
    print("|---|---:|---:|")
    for name, us in figures.items():
        print(f"| {name} | {us:.2f} | {us / ours:.2f}× |")
    print(f"\n(bare inner app alone: {bare:.2f} µs; through the middleware: {pooled:.2f} µs)")
    stats = app.stats()["default"]
    assert stats["opened"] == 1 and stats["in_use"] == 0, stats
    stats = per_transaction.stats()["default"]
    assert stats["opened"] == 1 and stats["in_use"] == 0 and stats["checkouts"] > n, stats
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"figures_us": figures, "bare_us": bare, "n": n, "rounds": rounds}, fh, indent=2)


if __name__ == "__main__":
    main()
