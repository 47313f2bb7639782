"""The Django site every benchmark stack serves: settings, views and WSGI in one module.

Chosen by environment variables, so one gunicorn command line serves each stack:

- ``BENCH_BACKEND``: ``mariadb`` (PyMySQL, the default) or ``postgresql`` (psycopg 3); the
  same views on the same ``items`` table;
- ``BENCH_STACK``: ``per_request`` (``CONN_MAX_AGE=0``, no pool), ``persistent``
  (``CONN_MAX_AGE=60``, no pool), ``no_cap`` (every client on its own warm connection, with
  ``max_connections`` above the client count: a pool the clients never fill; see
  ``NO_CAP_POOL``), ``old_patch``
  (django_db_pooling 0.0.4's monkey-patch), ``sqlalchemy`` (django-db-connection-pool:
  SQLAlchemy's QueuePool behind a Django backend), ``django_pool`` (PostgreSQL: Django's own
  ``OPTIONS["pool"]``, psycopg_pool), ``geventpool`` (PostgreSQL: django-db-geventpool),
  ``wsgi_dbpool``, ``wsgi_dbpool_session`` (with ``reset="session"``), ``wsgi_dbpool_lazy``
  and ``wsgi_dbpool_transaction`` (``hold="lazy"`` / ``"transaction"``);
- ``BENCH_DB_PORT``; ``POOL_SIZE`` (4), ``POOL_MAX_OUTSTANDING`` (20), ``POOL_LINGER`` (5).
  Every pool, ours and the peers', is capped at ``POOL_MAX_OUTSTANDING`` and keeps
  ``min(POOL_SIZE, POOL_MAX_OUTSTANDING)`` connections.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from django.conf import settings

from testbed.servers import site_settings

STACK = os.environ.get("BENCH_STACK", "wsgi_dbpool")
BACKEND = os.environ.get("BENCH_BACKEND", "mariadb")
HOLD_SECONDS = 0.05
POOL_MAX = int(os.environ.get("POOL_MAX_OUTSTANDING", "20"))
POOL_SIZE = min(int(os.environ.get("POOL_SIZE", "4")), POOL_MAX)
# Whose CONN_MAX_AGE is 0: each request closes, which returns to the peer's own pool.
_CLOSE_PER_REQUEST = ("per_request", "sqlalchemy", "django_pool", "geventpool")


def _mariadb(port: str) -> dict[str, Any]:
    import pymysql

    from testbed.mariadb import mysql_settings

    pymysql.install_as_MySQLdb()
    database = mysql_settings(port, conn_max_age=0 if STACK in _CLOSE_PER_REQUEST else 60)
    if STACK == "no_cap":
        # The limit, not a deployment: up to 390 connections open in the warm-up. Without TLS
        # set-up a connect costs ~2 ms of CPU instead of ~30.
        database["OPTIONS"] = {**database["OPTIONS"], "ssl_disabled": True}
    if STACK == "sqlalchemy":
        # Django "closes" at the end of each request, which returns to SQLAlchemy's pool.
        database["ENGINE"] = "dj_db_conn_pool.backends.mysql"
        database["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": POOL_MAX - POOL_SIZE}
    return database


def _postgresql(port: str) -> dict[str, Any]:
    from testbed.postgres import postgres_settings

    # No server-side cursors on any stack: hold="transaction" requires it (a cursor would outlive
    # its statement's connection), so every stack gets the same setting.
    database = postgres_settings(port, conn_max_age=0 if STACK in _CLOSE_PER_REQUEST else 60,
                                 DISABLE_SERVER_SIDE_CURSORS=True)
    if STACK == "django_pool":
        # Django's own pool (Django >= 5.1): checked out at the first query, returned when
        # Django closes at the end of the request. Not behind our middleware: wsgi_dbpool
        # refuses an alias whose OPTIONS set "pool".
        database["OPTIONS"] = {"pool": {"min_size": POOL_SIZE, "max_size": POOL_MAX, "timeout": 30}}
    if STACK == "geventpool":
        # django-db-geventpool 4: a gevent queue behind its own backend; it pings ("SELECT 1")
        # each connection it hands out. REUSE_CONNS at the cap keeps every connection open,
        # as persistent connections would (below it, the surplus is closed on return).
        database["ENGINE"] = "django_db_geventpool.backends.postgresql_psycopg3"
        database["OPTIONS"] = {"MAX_CONNS": POOL_MAX, "REUSE_CONNS": POOL_MAX}
    return database


_database = {"mariadb": _mariadb, "postgresql": _postgresql}[BACKEND](os.environ.get("BENCH_DB_PORT", "3306"))
settings.configure(**site_settings(
    {"default": _database}, urlconf="bench.djsite", SECRET_KEY="bench-only",
    LOGGING_CONFIG="logging.config.dictConfig",
    LOGGING={  # each failed request is logged, so the harness can count "Too many connections"
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False}},
    },
))

from collections.abc import Iterator  # noqa: E402

from django.db import connection  # noqa: E402
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def query(request: HttpRequest) -> HttpResponse:
    """One indexed lookup."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM items WHERE id = %s", [1 + (id(request) >> 4) % 1000])
        row = cursor.fetchone()
    return HttpResponse(row[0] if row else "-")


HOLD_SQL = {"mariadb": "SELECT SLEEP(0.05)", "postgresql": "SELECT pg_sleep(0.05)"}[BACKEND]


def hold(request: HttpRequest) -> HttpResponse:
    """Holds its connection about 50 ms, as a slow report would."""
    with connection.cursor() as cursor:
        cursor.execute(HOLD_SQL)
    return HttpResponse("held")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """20 chunks, each from its own query run while the response streams."""

    def chunks() -> Iterator[str]:
        for i in range(1, 21):
            with connection.cursor() as cursor:
                cursor.execute("SELECT name FROM items WHERE id = %s", [i])
                yield cursor.fetchone()[0] + "\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def io(request: HttpRequest) -> HttpResponse:
    """A query, 50 ms waiting on something else (an HTTP API, an LLM), another query."""
    import gevent

    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM items WHERE id = %s", [1 + (id(request) >> 4) % 1000])
        first = cursor.fetchone()[0]
    gevent.sleep(HOLD_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM items WHERE id = %s", [1 + (id(request) >> 5) % 1000])
        second = cursor.fetchone()[0]
    return HttpResponse(f"{first} {second}")


_io_requests = itertools.count()
SESSION_SQL = {  # a session variable, per backend
    "mariadb": "SET @bench_marker = %s", "postgresql": "SELECT set_config('bench.marker', %s, false)",
}[BACKEND]


def io_session(request: HttpRequest) -> HttpResponse:
    """As ``io``; one request in ten first sets a user variable (session state: under
    ``hold="transaction"`` that request keeps its connection to its end, then it is reset)."""
    if next(_io_requests) % 10 == 0:
        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL, [str(id(request))])
    return io(request)


def io_first(request: HttpRequest) -> HttpResponse:
    """50 ms waiting on something else first, then one query."""
    import gevent

    gevent.sleep(HOLD_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM items WHERE id = %s", [1 + (id(request) >> 4) % 1000])
        return HttpResponse(cursor.fetchone()[0])


def write(request: HttpRequest) -> HttpResponse:
    """One INSERT into ``app.writes`` (the soak's failover step needs writes to notice it)."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO writes (at) VALUES (NOW(6))")
    return HttpResponse("ok")


def nodb(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def stats(request: HttpRequest) -> HttpResponse:
    """This worker's pool, for the soak's sampler."""
    import json

    middleware = request.META.get("wsgi_dbpool.middleware")
    body = {"pid": os.getpid(), "stats": middleware.stats() if middleware else None}
    return HttpResponse(json.dumps(body), content_type="application/json")


urlpatterns = [
    path("query/", query), path("hold/", hold), path("stream/", stream), path("nodb/", nodb),
    path("io/", io), path("io_first/", io_first), path("io_session/", io_session),
    path("stats/", stats), path("write/", write),
]


# The no-cap stack: every request on its own warm connection. Plain persistent connections
# cannot be that: each of wrk's connections is a new greenlet, and the Django connections of
# the greenlets gone stay open until a garbage collection, so 300 clients after a warm-up
# pass max_connections (the harness's own admin connection is refused too) and each measured
# greenlet pays a connect. A pool whose cap the clients never reach (about 4 µs per request,
# bench.overhead) keeps them warm.
NO_CAP_POOL = 390  # of max_connections=400: 3 are the superuser's, one the harness's sampler


def _pooled(app: Any) -> Any:
    from wsgi_dbpool import PoolingMiddleware

    size, cap = (NO_CAP_POOL, NO_CAP_POOL) if STACK == "no_cap" else (POOL_SIZE, POOL_MAX)
    return PoolingMiddleware(
        app, size=size, max_outstanding=cap, timeout=30,
        reset="session" if STACK == "wsgi_dbpool_session" else "transaction",
        hold={"wsgi_dbpool_lazy": "lazy", "wsgi_dbpool_transaction": "transaction"}.get(STACK, "request"),
        linger=float(os.environ.get("POOL_LINGER", "5")),
        skip=lambda environ: environ["PATH_INFO"] in ("/nodb/", "/stats/"),
    )


def _application() -> Any:
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    if STACK.startswith("wsgi_dbpool") or STACK == "no_cap":
        return _pooled(app)
    if STACK == "old_patch":
        from django_db_pooling import pooling

        pooling.set_pool_size(POOL_SIZE, max_outstanding=POOL_MAX)
        pooling.apply_patch()
    return app


_counts = [0, 0]  # requests this worker has begun, and answered (start_response called)


def _counted(app: Any) -> Any:
    """Counts every request and answers ``/cpu/`` itself, outside Django and every pool:
    ``{"pid", "requests", "in_flight", "cpu", "wall"}``: the requests begun, those begun and
    not yet answered (a backlog a harness waits out after a warm-up), and this worker's own
    CPU seconds (user + system), read at one instant, so a harness can take CPU per request
    over a window of its choosing (the connects at a load's start left out)."""
    import json

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        _counts[0] += 1
        if environ["PATH_INFO"] != "/cpu/":
            def answered(*args: Any) -> Any:
                _counts[1] += 1
                return start_response(*args)

            return app(environ, answered)
        times = os.times()
        body = json.dumps({
            "pid": os.getpid(), "requests": _counts[0], "in_flight": _counts[0] - _counts[1] - 1,
            "cpu": times.user + times.system, "wall": times.elapsed,
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        _counts[1] += 1
        return [body]

    return counted


application = _counted(_application())
