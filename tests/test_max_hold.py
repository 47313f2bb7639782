"""``max_hold``: a connection held too long is taken back, against real MariaDB and PostgreSQL.

The server's account decides: the held session is gone from ``PROCESSLIST`` /
``pg_stat_activity``, the row its transaction inserted is not in the table, and a request
waiting at the cap is served on a connection of its own while the stuck one still waits.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import gevent
import pytest

from tests import underfire_views
from tests.helpers import call, wait_until

COUNT_STUCK = "SELECT COUNT(*) FROM items WHERE name = 'stuck'"


@pytest.fixture
def views() -> Any:
    from django.test.utils import override_settings

    underfire_views.RELEASE.clear()
    with override_settings(ROOT_URLCONF="tests.underfire_views"):
        yield underfire_views
    underfire_views.RELEASE.set()


def _rows(backend: Any) -> int:
    if backend.alias == "pg":
        return int(backend.server.app_query(COUNT_STUCK)[0][0])
    return int(backend.server.admin_query("SELECT COUNT(*) FROM app.items WHERE name = 'stuck'")[0][0])


def _sessions(backend: Any) -> set[int]:
    return {int(row["id"]) for row in backend.server.processlist("app")}


@pytest.mark.parametrize(("hold_mode", "where"), [
    ("request", "app"), ("lazy", "db"), ("transaction", "app"),
])
def test_a_request_stuck_in_a_transaction_is_taken_back(
    make_app, backend, views, caplog, hold_mode, where
):
    alias = backend.alias
    app = make_app(aliases=[alias], size=1, max_outstanding=1, timeout=30, hold=hold_mode,
                   max_hold=1.0)
    caplog.set_level(logging.WARNING)
    stuck = gevent.spawn(call, app, f"/stuck/?alias={alias}&where={where}")
    wait_until(lambda: len(_sessions(backend)) == 1, what="the stuck request's session")
    (stuck_session,) = _sessions(backend)
    waiter = gevent.spawn(call, app, f"/b/id/?alias={alias}")
    status, _headers, body = waiter.get(timeout=30)
    if where == "app":  # served while the stuck request still waits: its slot came back
        assert not stuck.ready()
    assert status.startswith("200"), body
    assert int(underfire_views_json(body)["id"]) != stuck_session
    wait_until(lambda: stuck_session not in _sessions(backend), what="the stuck session ended")
    assert _rows(backend) == 0  # its uncommitted INSERT rolled back with the session
    views.RELEASE.set()
    status, _headers, _body = stuck.get(timeout=30)
    assert status.startswith("500")  # Django's answer to the error its next statement got
    errors = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert errors, "no 500 logged"
    exc = errors[-1].exc_info[1]  # type: ignore[index]
    assert "max_hold=1s took back" in str(exc)
    assert _rows(backend) == 0  # nothing committed half-way
    for _ in range(3):  # the next requests are served
        assert call(app, f"/b/id/?alias={alias}")[0].startswith("200")
    stats = app.stats()[alias]
    assert stats["taken_back"] == 1
    wait_until(lambda: app.stats()[alias]["in_use"] == 0, what="every slot back")
    # Released exactly once: one slot, and the server holds at most the one idle connection.
    assert len(_sessions(backend)) <= 1
    # The WARNING names the request, in every mode (under "request" it once named a greenlet).
    (taken,) = [r for r in caplog.records if "max_hold=1.0s: took back" in r.getMessage()]
    assert taken.levelno == logging.WARNING
    assert re.search(r"held [\d.]+s by GET /stuck/ ", taken.getMessage()), taken.getMessage()


def underfire_views_json(body: bytes) -> Any:
    import json

    return json.loads(body)


def test_checkout_held_too_long_is_taken_back(make_app, db):
    from django.db import OperationalError, connections

    from wsgi_dbpool import MaxHoldExceeded

    app = make_app(size=1, max_outstanding=1, timeout=30, max_hold=0.5)
    with app.checkout():
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            (session,) = cursor.fetchone()
        wait_until(lambda: app.stats()["default"]["taken_back"] == 1, what="taken back")
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="the slot back")
        wait_until(lambda: session not in _sessions_of(db), what="the session ended")
        # Another unit of work gets a connection while this one still holds its wrapper.
        other = gevent.spawn(call, app, "/id/")
        assert other.get(timeout=20)[0].startswith("200")
        with pytest.raises(OperationalError, match=r"max_hold=0\.5s took back") as caught:
            connections["default"].cursor().execute("SELECT 1")
        assert isinstance(caught.value.__cause__, MaxHoldExceeded)
        connections["default"].close()  # nothing said to the server: it ended the session
        with pytest.raises(OperationalError, match="max_hold"):
            connections["default"].ensure_connection()  # and it never connects again
    stats = app.stats()["default"]
    assert (stats["in_use"], stats["taken_back"]) == (0, 1)  # the slot freed once, not twice
    assert call(app, "/id/")[0].startswith("200")


def _sessions_of(db: Any) -> set[int]:
    return {int(row["id"]) for row in db.processlist("app")}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_hold": 0}, "max_hold must be > 0 seconds"),
    ({"max_hold": -1}, "max_hold must be >= 0"),
    ({"max_hold": "5"}, "max_hold must be a number of seconds"),
    ({"max_hold": 2, "statement_timeout": 5}, "max_hold=2 is not above statement_timeout=5"),
])
def test_max_hold_is_checked(kwargs, message):
    from wsgi_dbpool.settings import PoolSettings

    with pytest.raises((TypeError, ValueError), match=message):
        PoolSettings(**kwargs)


def test_behind_a_proxy_nothing_unconfirmed_is_killed(make_app, db, fault_proxy, views, caplog):
    # Through a TCP proxy the server sees the proxy's port, not ours: the id cannot be
    # confirmed as this socket's session, so it is not killed; the socket is shut down,
    # which ends the idle-in-transaction session through the proxy all the same.
    fault_proxy.set_mode("pass")
    caplog.set_level(logging.WARNING)
    app = make_app(aliases=["proxied"], size=1, max_outstanding=1, timeout=30, max_hold=1.0)
    bystander = db.processlist("app")  # nobody else's session may go
    stuck = gevent.spawn(call, app, "/stuck/?alias=proxied&where=app")
    wait_until(lambda: len(db.processlist("app")) == len(bystander) + 1, what="the session")
    (session,) = {r["id"] for r in db.processlist("app")} - {r["id"] for r in bystander}
    wait_until(lambda: app.stats()["proxied"]["taken_back"] == 1, what="taken back")
    wait_until(lambda: session not in {r["id"] for r in db.processlist("app")},
               what="the session ended through the proxy")
    assert int(db.admin_query("SELECT COUNT(*) FROM app.items WHERE name = 'stuck'")[0][0]) == 0
    assert any("not confirmed as this socket's session" in r.getMessage() for r in caplog.records)
    views.RELEASE.set()
    assert stuck.get(timeout=30)[0].startswith("500")
    assert call(app, "/id/?alias=proxied")[0].startswith("200")


@pytest.mark.parametrize("alias", ["default", "pg"], ids=["mariadb", "postgresql"])
def test_the_driver_details_max_hold_reads(request, alias):
    """What wsgi_dbpool/_internals.py lists for max_hold exists (tests/test_internals.py's
    pattern; kept here while the harness moves)."""
    from django.db import connections

    from wsgi_dbpool import max_hold

    request.getfixturevalue("db" if alias == "default" else "pg_db")
    wrapper = connections.create_connection(alias)
    raw = wrapper.get_new_connection(wrapper.get_connection_params())
    try:
        assert issubclass(wrapper.Database.OperationalError, Exception)
        assert max_hold._client_port(raw) is not None  # PyMySQL _sock / psycopg fileno()
        assert max_hold._server_id(raw, wrapper.vendor)
    finally:
        raw.close()


def test_plain_threads_without_gevent(db):
    import json
    import os
    import subprocess
    import sys

    from testbed.servers import ROOT

    env = {**os.environ, "TEST_MARIADB_PORT": str(db.port), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.proc_max_hold_threads"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["holder_waiting_when_served"] is True
    assert report["served"] != report["held"]
    assert "max_hold=0.5s took back" in report["holder_error"]
    assert report["held"] not in _sessions_of(db)
    assert int(db.admin_query("SELECT COUNT(*) FROM app.items WHERE name = 'threads'")[0][0]) == 0
    stats = report["stats"]
    assert (stats["taken_back"], stats["in_use"]) == (1, 0)


def test_pool_revoke_frees_the_slot_once_for_the_oldest_waiter():
    """The mechanism, with no server: a revoked slot goes to the waiter; no second release."""
    from wsgi_dbpool.pool import Pool

    made: list[object] = []

    def create() -> object:
        made.append(object())
        return made[-1]

    pool: Pool[object] = Pool("t", create=create, dispose=lambda obj: None, size=1,
                              max_outstanding=1)
    held, _ = pool.acquire(timeout=5)
    waiter = gevent.spawn(pool.acquire, 5)
    wait_until(lambda: pool.stats()["waiting"] == 1, what="a waiter")
    pool.revoke(taken=time.monotonic())
    served, _ = waiter.get(timeout=5)
    assert served is not held and len(made) == 2  # a new object in the freed slot
    assert pool.stats()["in_use"] == 1
    pool.release(served, reusable=True)
    assert pool.stats()["in_use"] == 0
    with pytest.raises(RuntimeError, match="revoke without a checkout"):
        pool.revoke()


def test_the_revoked_stand_in_answers_the_drivers_probe_as_in_a_transaction():
    """A front's per-statement detach reads the driver: on a taken-back carrier the answer
    must be "in a transaction" (the front stays on it, refused, to the end of the work),
    not the error the stand-in raises for any probe the real adapters would make."""
    from wsgi_dbpool import drivers
    from wsgi_dbpool.max_hold import Revoked

    stand_in = Revoked(lambda: RuntimeError("taken back"))
    assert drivers.driver_trouble(stand_in, True) == drivers.IN_TRANSACTION
    drivers.force_close(stand_in)  # nothing to close, and no error
