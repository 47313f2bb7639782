"""The core behaviours once per backend: MariaDB through PyMySQL, PostgreSQL through
psycopg 3, both under gevent, and in each ``hold`` mode. One suite, parametrised; each
assertion asks the server."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent

from testbed.servers import PeakSampler
from tests.helpers import call, get, serve, wait_until


def _run(alias: str, sql: str, params: Any = None) -> Any:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0] if cursor.description else None



def test_sequential_requests_reuse_one_server_connection(make_app, hold, backend):
    app = make_app(hold=hold, aliases=[backend.alias], size=2)
    with serve(app) as address:
        ids = {get(address, f"/b/id/?alias={backend.alias}").json()["id"] for _ in range(50)}
        assert len(ids) == 1
        assert [row["id"] for row in backend.server.processlist("app")] == list(ids)
    assert app.stats()[backend.alias]["opened"] == 1


def test_streaming_response_keeps_its_connection(make_app, hold, backend):
    app = make_app(hold=hold, aliases=[backend.alias])
    with serve(app) as address:
        chunks = get(address, f"/b/stream/?alias={backend.alias}").lines()
    assert [c["chunk"] for c in chunks] == [0, 1, 2, 3] and len({c["id"] for c in chunks}) == 1
    wait_until(lambda: app.stats()[backend.alias]["in_use"] == 0, what="released on close()")


def test_bounded_under_300_clients(make_app, hold, backend):
    app = make_app(hold=hold, aliases=[backend.alias], size=2, max_outstanding=5, timeout=30, linger=0)
    with PeakSampler(backend.server, every=0.005) as connections, serve(app) as address:
        jobs = [gevent.spawn(get, address, f"/b/sleep/20/?alias={backend.alias}", timeout=60)
                for _ in range(300)]
        gevent.joinall(jobs, timeout=90, raise_error=True)
    assert [job.value.status for job in jobs] == [200] * 300
    assert 0 < connections.peak <= 5
    wait_until(lambda: backend.server.connection_count("app") <= 2, what="at most size left")


def test_waiting_on_the_database_is_cooperative(make_app, hold, backend):
    # Two queries sleeping 0.4 s at once must overlap: the driver yields to the hub.
    app = make_app(hold=hold, aliases=[backend.alias], size=2, max_outstanding=2)
    with serve(app) as address:
        get(address, f"/b/id/?alias={backend.alias}")
        started = time.monotonic()
        jobs = [gevent.spawn(get, address, f"/b/sleep/400/?alias={backend.alias}") for _ in range(2)]
        gevent.joinall(jobs, timeout=10, raise_error=True)
        elapsed = time.monotonic() - started
    assert elapsed < 0.75, f"the two 0.4 s queries took {elapsed:.2f} s: the driver blocked the hub"


def test_uncommitted_rows_are_rolled_back(make_app, hold, backend):
    from django.db import connections, transaction

    app = make_app(hold=hold, aliases=[backend.alias], size=1)
    with app.checkout():
        transaction.set_autocommit(False, using=backend.alias)
        _run(backend.alias, "INSERT INTO items (name) VALUES ('uncommitted')")
        first = _run(backend.alias, backend.connection_id_sql)
    with app.checkout():
        autocommit = connections[backend.alias].get_autocommit()
        same = _run(backend.alias, backend.connection_id_sql) == first
        rows = _run(backend.alias, "SELECT COUNT(*) FROM items")
    assert (autocommit, same, rows) == (True, True, 0)
    assert app.stats()[backend.alias]["dirty"] == 1


def test_killed_idle_connection_is_replaced_before_use(make_app, hold, backend):
    app = make_app(hold=hold, aliases=[backend.alias], ping_after=0)
    with serve(app) as address:
        first = get(address, f"/b/id/?alias={backend.alias}").json()["id"]
        wait_until(lambda: app.stats()[backend.alias]["idle"] == 1, what="idle")
        backend.server.kill(first)
        wait_until(lambda: backend.server.connection_count("app") == 0, what="killed")
        response = get(address, f"/b/id/?alias={backend.alias}")
    assert response.status == 200 and response.json()["id"] != first
    assert app.stats()[backend.alias]["stale"] == 1


def test_greenlet_killed_mid_query_closes_its_connection(make_app, hold, backend):
    app = make_app(hold=hold, aliases=[backend.alias], size=1, max_outstanding=1)

    def job() -> None:
        with app.checkout():
            _run(backend.alias, backend.sleep_sql, [5])

    worker = gevent.spawn(job)
    wait_until(lambda: backend.server.connection_count("app") == 1, what="query running")
    gevent.sleep(0.2)
    worker.kill(timeout=5)
    assert app.stats()[backend.alias]["in_use"] == 0
    with app.checkout():
        assert _run(backend.alias, "SELECT 1") == 1  # a fresh connection, in protocol sync
    assert app.stats()[backend.alias]["opened"] == 2


def test_forked_child_never_touches_inherited_connections(make_app, hold, backend, tmp_path):
    app = make_app(hold=hold, aliases=[backend.alias], size=1)
    parent = json.loads(call(app, f"/b/id/?alias={backend.alias}")[2])["id"]
    report = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:
        try:
            report.write_text(call(app, f"/b/id/?alias={backend.alias}")[2].decode())
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = json.loads(report.read_text())["id"]
    assert child != parent
    assert json.loads(call(app, f"/b/id/?alias={backend.alias}")[2])["id"] == parent
    assert parent in {row["id"] for row in backend.server.processlist("app")}
