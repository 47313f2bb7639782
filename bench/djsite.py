"""The Django site every benchmark stack serves: settings, views and WSGI in one module.

Chosen by environment variables, so one gunicorn command line serves each stack:

- ``BENCH_STACK``: ``per_request`` (``CONN_MAX_AGE=0``, no pool), ``persistent``
  (``CONN_MAX_AGE=60``, no pool), ``no_cap`` (the same, measured with ``max_connections``
  above the client count: every greenlet on its own warm connection), ``old_patch``
  (django_db_pooling 0.0.4's monkey-patch), ``sqlalchemy`` (django-db-connection-pool:
  SQLAlchemy's QueuePool behind a Django backend), ``wsgi_dbpool``,
  ``wsgi_dbpool_session`` (with ``reset="session"``), ``wsgi_dbpool_lazy`` and
  ``wsgi_dbpool_transaction`` (``hold="lazy"`` / ``"transaction"``);
- ``BENCH_DB_PORT``; ``POOL_SIZE`` (4), ``POOL_MAX_OUTSTANDING`` (20), ``POOL_LINGER`` (5).
"""

from __future__ import annotations

import itertools
import os

import pymysql
from django.conf import settings

from tests.mariadb import mysql_settings
from tests.servers import site_settings

pymysql.install_as_MySQLdb()

STACK = os.environ.get("BENCH_STACK", "wsgi_dbpool")
HOLD_SECONDS = 0.05
POOL_SIZE = int(os.environ.get("POOL_SIZE", "4"))
POOL_MAX = int(os.environ.get("POOL_MAX_OUTSTANDING", "20"))

_database = mysql_settings(
    os.environ.get("BENCH_DB_PORT", "3306"),
    conn_max_age=0 if STACK in ("per_request", "sqlalchemy") else 60,
)
if STACK == "no_cap":
    # The limit, not a deployment: each of wrk's 300 connections is served by a greenlet
    # that opens its own database connection when the run starts. Without TLS set-up a
    # connect costs ~2 ms of CPU instead of ~30, so the run measures the view, not 300
    # connects.
    _database["OPTIONS"] = {**_database["OPTIONS"], "ssl_disabled": True}
if STACK == "sqlalchemy":
    # Django "closes" at the end of each request, which returns to SQLAlchemy's pool.
    _database["ENGINE"] = "dj_db_conn_pool.backends.mysql"
    _database["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": POOL_MAX - POOL_SIZE}
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


def hold(request: HttpRequest) -> HttpResponse:
    """Holds its connection about 50 ms, as a slow report would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(0.05)")
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


def io_session(request: HttpRequest) -> HttpResponse:
    """As ``io``; one request in ten first sets a user variable (session state: under
    ``hold="transaction"`` that request keeps its connection to its end, then it is reset)."""
    if next(_io_requests) % 10 == 0:
        with connection.cursor() as cursor:
            cursor.execute("SET @bench_marker = %s", [id(request)])
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


def _application():  # type: ignore[no-untyped-def]
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    if STACK.startswith("wsgi_dbpool"):
        from wsgi_dbpool import PoolingMiddleware

        return PoolingMiddleware(
            app, size=POOL_SIZE, max_outstanding=POOL_MAX, timeout=30,
            reset="session" if STACK == "wsgi_dbpool_session" else "transaction",
            hold={"wsgi_dbpool_lazy": "lazy", "wsgi_dbpool_transaction": "transaction"}.get(
                STACK, "request"
            ),
            linger=float(os.environ.get("POOL_LINGER", "5")),
            skip=lambda environ: environ["PATH_INFO"] in ("/nodb/", "/stats/"),
        )
    if STACK == "old_patch":
        from django_db_pooling import pooling

        pooling.set_pool_size(POOL_SIZE, max_outstanding=POOL_MAX)
        pooling.apply_patch()
    return app


application = _application()
