"""The Django site the tests serve: views that report what the database sees.

Each view answers with what the *server* says (``CONNECTION_ID()``, ``@@autocommit``,
rows), so the tests judge the pool by the database's own account.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.db import connection, connections, transaction
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path


def _one(sql: str, alias: str = "default", params: Any = None) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def conn_id(request: HttpRequest) -> HttpResponse:
    alias = request.GET.get("alias", "default")
    return JsonResponse({"id": _one("SELECT CONNECTION_ID()", alias)})


def both(request: HttpRequest) -> HttpResponse:
    return JsonResponse({a: _one("SELECT CONNECTION_ID()", a) for a in ("default", "other")})


def session(request: HttpRequest) -> HttpResponse:
    """What the connection carries: autocommit, transaction, rows visible."""
    return JsonResponse(
        {
            "id": _one("SELECT CONNECTION_ID()"),
            "autocommit": _one("SELECT @@autocommit"),
            "django_autocommit": connection.get_autocommit(),
            "rows": _one("SELECT COUNT(*) FROM items"),
            "in_atomic_block": connection.in_atomic_block,
        }
    )


def sleep(request: HttpRequest, ms: int) -> HttpResponse:
    slept = _one("SELECT SLEEP(%s)", params=[ms / 1000])
    return JsonResponse({"id": _one("SELECT CONNECTION_ID()"), "slept": slept})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    chunks = int(request.GET.get("chunks", "3"))
    pause = float(request.GET.get("pause", "0"))

    def generate() -> Iterator[str]:
        for i in range(chunks):
            # Queries after the view returned: the connection must still be bound.
            ident = _one("SELECT CONNECTION_ID()")
            if pause:
                _one("SELECT SLEEP(%s)", params=[pause])
            yield json.dumps({"chunk": i, "id": ident}) + "\n"
        if request.GET.get("fail"):
            raise RuntimeError("the generator failed")

    return StreamingHttpResponse(generate(), content_type="application/x-ndjson")


def uncommitted(request: HttpRequest) -> HttpResponse:
    """Leaves autocommit off with an INSERT not committed."""
    transaction.set_autocommit(False)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO items (name) VALUES ('uncommitted')")
    return JsonResponse({"id": _one("SELECT CONNECTION_ID()")})


def atomic_left_open(request: HttpRequest) -> StreamingHttpResponse:
    """Enters atomic() in a generator that is never resumed to leave it."""

    def generate() -> Iterator[str]:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO items (name) VALUES ('atomic')")
            yield json.dumps({"id": _one("SELECT CONNECTION_ID()")}) + "\n"
            yield "never sent\n"

    return StreamingHttpResponse(generate())


def raw_begin(request: HttpRequest) -> HttpResponse:
    """Opens a transaction by hand in autocommit mode: Django's flags miss it."""
    alias = _alias(request)
    with connections[alias].cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO items (name) VALUES ('raw')")
    return JsonResponse({"id": _one("SELECT CONNECTION_ID()", alias)})


def nodb(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def unpooled(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"id": _one("SELECT CONNECTION_ID()", "other")})


def worker(request: HttpRequest) -> HttpResponse:
    """Which process served this, on which server connection."""
    import os

    return JsonResponse({"pid": os.getpid(), "id": _one("SELECT CONNECTION_ID()")})


def twice(request: HttpRequest) -> HttpResponse:
    """Two queries with a pause between, in which other greenlets run their requests."""
    import os
    import time

    first = _one("SELECT CONNECTION_ID()")
    time.sleep(0.05)  # cooperative once gevent has patched time
    return JsonResponse({"pid": os.getpid(), "first": first, "second": _one("SELECT CONNECTION_ID()")})


def run(request: HttpRequest, n: int = 0) -> HttpResponse:
    """Runs each ``sql`` parameter in order (the state-changing SQL of the clean-state
    tests), and answers with what the last one returned and the connection's id."""
    alias = _alias(request)
    results = []
    with connections[alias].cursor() as cursor:
        for sql in request.GET.getlist("sql"):
            cursor.execute(sql)
            results.append(list(cursor.fetchone()) if cursor.description else None)
    return JsonResponse({"id": _backend_id(alias), "results": results}, safe=False)


def insert(request: HttpRequest) -> HttpResponse:
    """An ordinary write in an ordinary request: one unqualified INSERT."""
    alias = _alias(request)
    with connections[alias].cursor() as cursor:
        cursor.execute("INSERT INTO items (name) VALUES (%s)", [request.GET.get("name", "row")])
    return JsonResponse({"id": _backend_id(alias)})


def bounded(request: HttpRequest) -> HttpResponse:
    """Bounds a slow query with gevent's own idiom and answers normally."""
    import gevent

    alias = _alias(request)
    finished = False
    with gevent.Timeout(0.2, False):
        _one(_SLEEP[connections[alias].vendor], alias, [2])
        finished = True
    return JsonResponse({"finished": finished})


def spawn(request: HttpRequest) -> HttpResponse:
    """Spawns greenlets that use the ORM without checkout(), and waits for them."""
    import gevent

    jobs = [gevent.spawn(_backend_id, "default") for _ in range(int(request.GET.get("n", "3")))]
    gevent.joinall(jobs, raise_error=True)
    return JsonResponse({"ids": [job.value for job in jobs]})


# How many /io/ requests are inside their wait at once (this process), and the most seen.
IO_WAITING = {"now": 0, "peak": 0}


def io(request: HttpRequest) -> HttpResponse:
    """A query, a 50 ms wait on something else (an HTTP API, say), another query."""
    import gevent

    alias = _alias(request)
    first = _backend_id(alias)
    middleware = request.META.get("wsgi_dbpool.middleware")
    in_use = middleware.stats()[alias]["in_use"] if middleware else None
    IO_WAITING["now"] += 1
    IO_WAITING["peak"] = max(IO_WAITING["peak"], IO_WAITING["now"])
    try:
        gevent.sleep(float(request.GET.get("wait", "0.05")))
    finally:
        IO_WAITING["now"] -= 1
    return JsonResponse({"first": first, "second": _backend_id(alias), "in_use_while_waiting": in_use})


def marked_transaction(request: HttpRequest) -> HttpResponse:
    """A transaction that marks its session, waits, and checks nobody else touched it."""
    import gevent

    alias = _alias(request)
    me = request.GET.get("me", "?")
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SELECT @owner := %s, CONNECTION_ID()", [me])
        ident = cursor.fetchone()[1]
        cursor.execute("INSERT INTO items (name) VALUES (%s)", [me])
        cursor.execute("SELECT id FROM items WHERE id = LAST_INSERT_ID() FOR UPDATE")
        gevent.sleep(0.01)
        cursor.execute("SELECT @owner, CONNECTION_ID()")
        owner, again = cursor.fetchone()
    with connections[alias].cursor() as cursor:  # an autocommit statement that marks too
        cursor.execute("SELECT @owner := %s", [f"{me}-auto"])
    return JsonResponse({"me": me, "owner": owner, "id": ident, "again": again})


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of every worker (multiprocess mode), as an operator runs it."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return HttpResponse(generate_latest(registry), content_type="text/plain")


def download(request: HttpRequest) -> FileResponse:
    """A file response (gunicorn may send it with sendfile), after a query."""
    _one("SELECT 1")
    return FileResponse(open(__file__, "rb"), content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    _one("SELECT 1")
    raise ValueError("the view failed")


# The shared, backend-neutral views (tests/test_backends.py): ?alias= picks the database.
_CONNECTION_ID = {"mysql": "SELECT CONNECTION_ID()", "postgresql": "SELECT pg_backend_pid()"}
_SLEEP = {"mysql": "SELECT SLEEP(%s)", "postgresql": "SELECT pg_sleep(%s)"}


def _alias(request: HttpRequest) -> str:
    return request.GET.get("alias", "default")


def _backend_id(alias: str) -> int:
    return int(_one(_CONNECTION_ID[connections[alias].vendor], alias))


def b_id(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"id": _backend_id(_alias(request))})


def b_sleep(request: HttpRequest, ms: int) -> HttpResponse:
    alias = _alias(request)
    ident = _backend_id(alias)
    _one(_SLEEP[connections[alias].vendor], alias, [ms / 1000])
    return JsonResponse({"id": ident})


def b_stream(request: HttpRequest) -> StreamingHttpResponse:
    alias = _alias(request)

    def generate() -> Iterator[str]:
        for i in range(4):
            yield json.dumps({"chunk": i, "id": _backend_id(alias)}) + "\n"

    return StreamingHttpResponse(generate(), content_type="application/x-ndjson")


urlpatterns = [
    path("b/id/", b_id),
    path("run/", run),
    path("run/<int:n>/", run),  # one view, many paths
    path("io/", io),
    path("marked/", marked_transaction),
    path("insert/", insert),
    path("bounded/", bounded),
    path("spawn/", spawn),
    path("b/sleep/<int:ms>/", b_sleep),
    path("b/stream/", b_stream),
    path("id/", conn_id),
    path("both/", both),
    path("session/", session),
    path("sleep/<int:ms>/", sleep),
    path("stream/", stream),
    path("uncommitted/", uncommitted),
    path("atomic/", atomic_left_open),
    path("begin/", raw_begin),
    path("nodb/", nodb),
    path("unpooled/", unpooled),
    path("boom/", boom),
    path("worker/", worker),
    path("twice/", twice),
    path("metrics/", metrics),
    path("download/", download),
]
