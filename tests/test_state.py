"""Behaviours 3 and 5: never hand out dirty state; notice stale connections first."""

from __future__ import annotations

import json
import logging

import gevent

from tests.helpers import call, get, serve, wait_until


def _session(address: str) -> dict:
    return get(address, "/session/").json()


def test_autocommit_off_with_uncommitted_rows_is_rolled_back(make_app, db, caplog):
    app = make_app(size=1)
    with serve(app) as address, caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        dirty_id = get(address, "/uncommitted/").json()["id"]
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
        after = _session(address)
    # Same server session, yet nothing of the previous request's transaction.
    assert after["id"] == dirty_id or app.stats()["default"]["opened"] == 2
    assert after["rows"] == 0
    assert after["autocommit"] == 1 and after["django_autocommit"] is True
    assert db.admin_query("SELECT COUNT(*) FROM app.items")[0][0] == 0
    assert app.stats()["default"]["dirty"] + app.stats()["default"]["closed"] >= 1


def test_transaction_begun_by_hand_is_rolled_back(make_app, db, caplog):
    app = make_app(size=1)
    with serve(app) as address, caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        dirty_id = get(address, "/begin/").json()["id"]
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
        after = _session(address)
    assert after["id"] == dirty_id  # kept: the rollback made it clean
    assert after["rows"] == 0
    assert db.admin_query("SELECT COUNT(*) FROM app.items")[0][0] == 0
    assert app.stats()["default"]["dirty"] == 1
    assert "rolled back a transaction" in caplog.text


def test_stream_abandoned_inside_atomic_is_rolled_back_by_django(make_app, db):
    # Django closes the streaming generator on close(): its atomic() exits by rollback.
    app = make_app(size=1)
    result = app(_environ("/atomic/"), lambda *a: None)
    first_id = json.loads(next(iter(result)))["id"]
    result.close()
    with serve(app) as address:
        after = _session(address)
    assert after == {
        "id": first_id, "autocommit": 1, "django_autocommit": True, "rows": 0,
        "in_atomic_block": False,
    }
    assert app.stats()["default"]["dirty"] == 0


def test_wrapper_left_inside_atomic_is_replaced(make_app, db, caplog):
    from django.db import connection, transaction

    seen: dict[str, int] = {}

    def careless(environ, start_response):
        # A non-Django app (no request_finished) that never leaves its atomic block.
        transaction.atomic().__enter__()
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO items (name) VALUES ('atomic')")
            cursor.execute("SELECT CONNECTION_ID()")
            seen["id"] = cursor.fetchone()[0]
        start_response("200 OK", [])
        return [b""]

    from django.core.wsgi import get_wsgi_application

    django_app = get_wsgi_application()
    app = make_app(
        lambda e, s: (careless if e["PATH_INFO"] == "/careless/" else django_app)(e, s), size=1
    )
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        call(app, "/careless/")
    with serve(app) as address:
        after = _session(address)
    assert after["id"] != seen["id"]
    assert after["in_atomic_block"] is False and after["autocommit"] == 1
    assert after["rows"] == 0
    assert app.stats()["default"]["dirty"] == 1
    assert "inside an atomic block" in caplog.text
    wait_until(lambda: db.connection_count("app") == 1, what="the dirty connection closed")


def test_clean_path_costs_no_extra_round_trip(make_app, db):
    app = make_app(size=1)
    with serve(app) as address:
        get(address, "/id/")  # connect and let Django initialise the session
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
        before = db.user_statistics("app")
        for _ in range(50):
            get(address, "/id/")
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
        after = db.user_statistics("app")
    # What the server counted for the app user: the 50 SELECTs and nothing else.
    assert after["select_commands"] - before["select_commands"] == 50
    for kind in ("other_commands", "update_commands", "rollback_transactions"):
        assert after[kind] == before[kind], kind


def test_conn_max_age_reached_closes_the_connection(make_app, db):
    app = make_app(aliases=["short"])
    with serve(app) as address:
        first = get(address, "/id/?alias=short").json()["id"]
        gevent.sleep(1.2)
        second = get(address, "/id/?alias=short").json()["id"]
    assert first != second
    assert app.stats()["short"]["closed"] >= 1
    wait_until(lambda: db.connection_count("app") == 1, what="the obsolete connection closed")


def test_killed_idle_connection_is_noticed_before_use(make_app, db, caplog):
    app = make_app(ping_after=0)
    with serve(app) as address:
        first = get(address, "/id/").json()["id"]
        wait_until(lambda: app.stats()["default"]["idle"] == 1, what="idle")
        db.kill(first)
        with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
            response = get(address, "/id/")
    assert response.status == 200
    assert response.json()["id"] != first
    assert app.stats()["default"]["stale"] == 1
    assert "stale" in caplog.text


def test_recently_used_connection_is_not_pinged(make_app, db):
    app = make_app(ping_after=30)
    with serve(app) as address:
        get(address, "/id/")
        pings = db.status("Com_admin_commands")
        for _ in range(20):
            get(address, "/id/")
    assert db.status("Com_admin_commands") == pings


def test_wait_timeout_expiry_is_noticed(make_app, db):
    app = make_app(ping_after=0.5)
    with serve(app) as address:
        first = get(address, "/id/").json()["id"]
        db.admin_query("SET GLOBAL wait_timeout = 1")
        try:
            # Only new sessions take the global: open a fresh one by closing the pool.
            wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
            app.close()
            second = get(address, "/id/").json()["id"]
            gevent.sleep(2.5)  # the server drops the idle session
            wait_until(lambda: db.connection_count("app") == 0, what="server-side timeout")
            response = get(address, "/id/")
        finally:
            db.admin_query("SET GLOBAL wait_timeout = 28800")
    assert first != second
    assert response.status == 200 and response.json()["id"] != second


def test_server_restart_is_survived(make_app, db):
    app = make_app(ping_after=0)
    with serve(app) as address:
        first = get(address, "/id/").json()["id"]
        wait_until(lambda: app.stats()["default"]["idle"] == 1, what="idle")
        db.restart()
        response = get(address, "/id/")
    assert response.status == 200
    assert app.stats()["default"]["stale"] == 1
    del first


def test_database_error_keeps_pool_healthy(make_app, db):
    app = make_app(size=1)
    status, _, _ = call(app, "/boom/")
    assert status.startswith("500")
    status, _, _ = call(app, "/session/")
    assert status == "200 OK"
    assert app.stats()["default"]["in_use"] == 0


def _environ(path: str) -> dict:
    from webob import Request

    return Request.blank(path).environ


def test_checkout_leaving_autocommit_off_is_rolled_back_and_restored(make_app, db):
    # No Django request cycle here, so Django's own request_finished check never runs.
    from django.db import connection, transaction

    app = make_app(size=1)
    with app.checkout():
        transaction.set_autocommit(False)
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO items (name) VALUES ('left uncommitted')")
            cursor.execute("SELECT CONNECTION_ID()")
            first = cursor.fetchone()[0]
    with app.checkout():
        django_autocommit = connection.get_autocommit()
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID(), @@autocommit, (SELECT COUNT(*) FROM items)")
            row = cursor.fetchone()
    assert django_autocommit is True
    assert row == (first, 1, 0)  # same session, autocommit back on, the row rolled back
    assert app.stats()["default"]["dirty"] == 1
