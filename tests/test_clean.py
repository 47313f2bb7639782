"""Hand on only what is truly clean: the return path judged by the connection's real state.

One test per defect found by black-box probes (the issue "Hand on only what is truly
clean"), numbered as there, plus what a sweep of the same family found. Each asserts on
what the server stores and reports, not only on ``stats()``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import gevent
import pytest

from tests.helpers import call, environ_for, get, serve, wait_until

pytestmark = pytest.mark.mariadb


def _settled(app) -> None:
    """Wait until every connection is back: the server closes a response after sending it."""
    wait_until(lambda: all(s["in_use"] == 0 for s in app.stats().values()), what="returned")


def _get(app, address: str, path: str):
    response = get(address, path)
    _settled(app)
    return response


def _run(app, address: str, *sql: str, alias: str = "default") -> dict:
    response = _get(app, address, "/run/?" + urlencode([("alias", alias)] + [("sql", s) for s in sql]))
    assert response.status == 200, response.body[-500:]
    return response.json()


@contextlib.contextmanager
def _slow_network(fault_proxy, delay: float = 0.5) -> Iterator[None]:
    """Every packet through the proxy waits ``delay`` seconds, for as long as the block."""
    fault_proxy.delay = delay
    fault_proxy.set_mode("slow")
    try:
        yield
    finally:
        fault_proxy.set_mode("pass")
        fault_proxy.delay = 0.2


def _rows(db, table: str = "app.items") -> list[str]:
    return [row[0] for row in db.admin_query(f"SELECT name FROM {table} ORDER BY name")]


# -- 1. autocommit switched off by SQL --------------------------------------------------


def test_1_autocommit_off_by_sql_never_costs_the_next_request_its_write(make_app, db):
    app = make_app(size=1)
    with serve(app) as address:
        first = _run(app, address, "SET autocommit = 0")["id"]
        written = _get(app, address, "/insert/?name=from-B")
        after = _run(app, address, "SELECT @@autocommit")
    assert written.status == 200 and written.json()["id"] == first  # the same connection
    assert _rows(db) == ["from-B"]  # B's write is stored, not rolled back
    assert after["results"] == [[1]]
    assert app.stats()["default"]["dirty"] >= 1


def test_1_autocommit_off_by_sql_is_restored_within_checkout(make_app, db):
    from django.db import connection

    app = make_app(size=1)
    with app.checkout(), connection.cursor() as cursor:
        cursor.execute("SET autocommit = 0")
    with app.checkout(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO items (name) VALUES ('kept')")
    assert _rows(db) == ["kept"]


# -- 2. reset="session" must give back a connection like a fresh one --------------------

_SESSION_PROBE = (
    "SELECT @@sql_mode, @@autocommit, @@tx_isolation, @@time_zone, @@character_set_client, "
    "@@collation_connection, DATABASE(), @from_init"
)


def test_2_session_reset_gives_back_a_connection_like_a_fresh_one(make_app, db):
    app = make_app(size=1, reset="session", aliases=["tuned"])
    with serve(app) as address:
        fresh = _run(app, address, _SESSION_PROBE, alias="tuned")
        reset = _run(app, address, _SESSION_PROBE, alias="tuned")
    assert reset["id"] == fresh["id"]  # reset, not reconnected
    assert "TRADITIONAL" in fresh["results"][0][0]  # init_command's sql_mode
    assert fresh["results"][0][2:4] == ["REPEATABLE-READ", "+03:00"]
    assert reset["results"] == fresh["results"]


def test_2_session_reset_keeps_the_strict_sql_mode_of_init_command(make_app, db):
    app = make_app(size=1, reset="session", aliases=["tuned"])
    db.admin_query("SET GLOBAL sql_mode = ''")  # only init_command makes the alias strict
    try:
        with serve(app) as address:
            long_name = "x" * 40
            sql = f"INSERT INTO short_names (name) VALUES ('{long_name}')"
            first = _get(app, address, "/run/?" + urlencode([("alias", "tuned"), ("sql", sql)]))
            second = _get(app, address, "/run/?" + urlencode([("alias", "tuned"), ("sql", sql)]))
    finally:
        db.admin_query("SET GLOBAL sql_mode = DEFAULT")
        db.admin_query(
            "SET GLOBAL sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,"
            "NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION'"
        )
    assert (first.status, second.status) == (500, 500)  # refused both times, as when fresh
    assert _rows(db, "app.short_names") == []


_PG_SESSION_PROBE = (
    "SELECT current_setting('statement_timeout') || ' ' || current_setting('application_name') "
    "|| ' ' || current_setting('TimeZone') || ' ' || current_setting('search_path') || ' ' "
    "|| current_setting('transaction_isolation') || ' ' || current_database()"
)


def test_2_session_reset_on_postgresql_gives_back_a_connection_like_a_fresh_one(
    make_app, db, pg_db
):
    app = make_app(size=1, reset="session", aliases=["pg_tuned"])
    with serve(app) as address:
        fresh = _run(app, address, _PG_SESSION_PROBE, alias="pg_tuned")
        _run(app, address, "SET statement_timeout = 54321", "SET TIME ZONE '+05'",
             "SET search_path = pg_catalog", alias="pg_tuned")
        reset = _run(app, address, _PG_SESSION_PROBE, alias="pg_tuned")
    assert reset["id"] == fresh["id"]  # reset, not reconnected
    assert fresh["results"][0][0].startswith("12345ms tuned ")  # the alias's own options
    assert reset["results"] == fresh["results"]


# -- 3. USE otherdb -------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs", [{"reset": "session"}, {}], ids=["reset-session", "default-sees-the-USE"]
)
def test_3_session_reset_brings_back_the_configured_database(make_app, db, knobs):
    # By default the execute seam sees the USE: the session is reset on return, only then.
    app = make_app(size=1, **knobs)
    with serve(app) as address:
        used = _run(app, address, "USE app_other")["id"]
        written = _get(app, address, "/insert/?name=where-am-i")
        current = _run(app, address, "SELECT DATABASE()")
    assert written.json()["id"] == used  # reset, not reconnected
    assert _rows(db, "app.items") == ["where-am-i"]
    assert _rows(db, "app_other.items") == []
    assert current["results"] == [["app"]]


def test_3_session_state_ignore_keeps_the_current_database_as_documented(make_app, db):
    # docs/isolation.md: with session_state="ignore", `USE` is handed on.
    app = make_app(size=1, session_state="ignore")
    with serve(app) as address:
        _run(app, address, "USE app_other")
        assert _run(app, address, "SELECT DATABASE()")["results"] == [["app_other"]]
        _run(app, address, "USE app")


# -- 4. interrupts ----------------------------------------------------------------------


def test_4_query_bounded_by_gevent_timeout_does_not_fail_the_next_request(make_app, db):
    app = make_app(size=1)
    with serve(app) as address:
        before = _get(app, address, "/id/").json()["id"]
        bounded = _get(app, address, "/bounded/")
        after = _get(app, address, "/id/")
    assert bounded.status == 200 and bounded.json() == {"finished": False}
    assert after.status == 200, after.body[-300:]
    assert after.json()["id"] != before
    assert app.stats()["default"]["broken"] == 1
    wait_until(lambda: before not in [row["id"] for row in db.processlist("app")],
               what="the server noticed the interrupted connection is gone")


def test_4_query_bounded_by_gevent_timeout_on_postgresql(make_app, db, pg_db):
    app = make_app(size=1, aliases=["pg"])
    with serve(app) as address:
        before = _get(app, address, "/b/id/?alias=pg").json()["id"]
        bounded = _get(app, address, "/bounded/?alias=pg")
        after = _get(app, address, "/b/id/?alias=pg")
    assert bounded.status == 200 and bounded.json() == {"finished": False}
    assert after.status == 200, after.body[-300:]
    assert after.json()["id"] != before
    assert app.stats()["pg"]["broken"] == 1
    wait_until(lambda: before not in [row["id"] for row in pg_db.processlist("app")],
               what="the interrupted connection is gone from the server")


def test_4_gevent_timeout_inside_the_return_path_closes_the_connection(make_app, db, fault_proxy):
    app = make_app(size=1, aliases=["proxied"])
    fault_proxy.set_mode("pass")
    # Leave a transaction open, so that the return path must roll it back.
    result = app(environ_for("/begin/?alias=proxied"), lambda *a: None)
    dirty_id = int(b"".join(result).split(b":")[1].strip(b" }"))
    with _slow_network(fault_proxy), pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
        result.close()  # the rollback's answer is 0.5 s away
    assert app.stats()["proxied"]["in_use"] == 0
    status, _, body = call(app, "/id/?alias=proxied")
    assert status == "200 OK", body[-300:]
    assert str(dirty_id).encode() not in body
    wait_until(lambda: dirty_id not in [r["id"] for r in db.processlist("app")],
               what="the interrupted connection closed")
    assert _rows(db) == []  # the open transaction never committed


def test_4_interrupted_close_of_the_response_counts_as_broken(make_app, db):
    from django.db import connection

    class SlowClose:
        def __iter__(self):
            yield b"ok"

        def close(self):
            with connection.cursor() as cursor:
                cursor.execute("SELECT SLEEP(2)")

    def inner(environ, start_response):
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            seen["id"] = cursor.fetchone()[0]
        start_response("200 OK", [])
        return SlowClose()

    seen: dict[str, int] = {}
    app = make_app(inner, size=1)
    result = app(environ_for("/"), lambda *a: None)
    list(result)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
        result.close()
    assert app.stats()["default"]["in_use"] == 0
    with app.checkout(), connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        assert cursor.fetchone()[0] != seen["id"]


def test_4_interrupt_in_the_return_path_of_a_session_reset(make_app, db, fault_proxy):
    app = make_app(size=1, aliases=["proxied"], reset="session")
    fault_proxy.set_mode("pass")
    result = app(environ_for("/id/?alias=proxied"), lambda *a: None)
    first = int(b"".join(result).split(b":")[1].strip(b" }"))
    with _slow_network(fault_proxy), pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
        result.close()  # the session reset's answer is 0.5 s away
    status, _, body = call(app, "/id/?alias=proxied")
    assert status == "200 OK", body[-300:]
    assert str(first).encode() not in body


# -- 5. a greenlet never keeps a binding to a connection it no longer holds -------------


@pytest.mark.parametrize("hold", ["request", "lazy", "transaction"])
@pytest.mark.parametrize("released_by", ["close-from-another-greenlet", "finaliser"])
def test_5_no_greenlet_uses_a_connection_it_no_longer_holds(make_app, db, released_by, hold):
    from django.db import connections

    app = make_app(
        size=1, max_outstanding=1, skip=lambda e: e["PATH_INFO"] == "/id/", hold=hold
    )
    seen: dict[str, object] = {}

    def keep_alive_client() -> None:
        # One greenlet serving two requests in turn, like a keep-alive connection.
        seen["result"] = app(environ_for("/b/id/"), lambda *a: None)
        seen["pooled"] = int(b"".join(seen["result"]).split(b":")[1].strip(b" }"))
        if released_by == "close-from-another-greenlet":
            gevent.spawn(seen.pop("result").close).join(timeout=5)
        else:
            while "result" in seen:  # dropped by the test, from another greenlet
                gevent.sleep(0.01)
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="released elsewhere")
        holder = gevent.spawn(hold_the_pooled_connection)
        wait_until(lambda: "held" in seen, what="another request holds the connection")
        # Direct use of the old binding must not reach the socket another request uses.
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                seen["direct"] = cursor.fetchone()[0]
        except Exception as exc:
            seen["direct"] = type(exc).__name__
        seen["skipped"] = call(app, "/id/")
        holder.join(timeout=10)

    def hold_the_pooled_connection() -> None:
        with app.checkout(), connections["default"].cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            seen["held"] = cursor.fetchone()[0]
            cursor.execute("SELECT SLEEP(0.5)")

    client = gevent.spawn(keep_alive_client)
    if released_by == "finaliser":
        wait_until(lambda: "result" in seen, what="the response")
        del seen["result"]
        gc.collect()
    client.join(timeout=20)
    assert client.successful(), client.exception
    status, _, body = seen["skipped"]
    assert status == "200 OK", body[-300:]
    assert seen["held"] == seen["pooled"]
    assert str(seen["pooled"]).encode() not in body  # the skipped request had its own
    assert seen["direct"] != seen["pooled"]


# -- 6. a dropped response wakes a waiter -----------------------------------------------


def test_6_dropped_response_wakes_the_waiter_at_once(make_app, db):
    app = make_app(size=1, max_outstanding=1, timeout=5)
    holder = {"result": app(environ_for("/id/"), lambda *a: None)}
    list(holder["result"])
    waiter = gevent.spawn(call, app, "/id/")
    wait_until(lambda: app.stats()["default"]["waiting"] == 1, what="a waiter")
    started = time.monotonic()
    del holder["result"]
    gc.collect()
    waiter.join(timeout=5)
    assert waiter.successful()
    assert waiter.value[0] == "200 OK"
    assert time.monotonic() - started < 1.0  # not at its 5 s timeout
    assert app.stats()["default"]["timeouts"] == 0


# -- 7. greenlets spawned by a view -------------------------------------------------------


def test_7_connections_of_spawned_greenlets_close_when_they_end(make_app, db, caplog):
    app = make_app(size=1, max_outstanding=2)
    aborted = db.status("Aborted_clients")
    gc.disable()  # closed when their greenlets end, not when collected
    try:
        with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"), serve(app) as address:
            jobs = [gevent.spawn(get, address, "/spawn/?n=3") for _ in range(6)]
            gevent.joinall(jobs, timeout=30, raise_error=True)
            assert [job.value.status for job in jobs] == [200] * 6
            wait_until(lambda: db.connection_count("app") <= 2,
                       what="the spawned greenlets' connections closed")
    finally:
        gc.enable()
    assert db.status("Aborted_clients") == aborted
    assert app.stats()["default"]["overflow"] == 18
    warnings = [r for r in caplog.records if "checkout()" in r.getMessage()]
    assert len(warnings) == 1


# -- 8. the DEBUG query log -----------------------------------------------------------------


@pytest.mark.parametrize("alias", ["default", "pg"])
def test_8_debug_query_log_is_cleared_between_holders(make_app, db, pg_db, alias):
    from django.db import connections
    from django.test.utils import override_settings

    app = make_app(size=1, aliases=[alias])
    with override_settings(DEBUG=True):
        with app.checkout(), connections[alias].cursor() as cursor:
            cursor.execute("SELECT %s", ["secret-token"])
        with app.checkout():
            logged = [q["sql"] for q in connections[alias].queries]
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
    assert not any("secret-token" in sql for sql in logged)


# -- 9. stats()["created"] --------------------------------------------------------------------


def test_9_replacement_wrappers_are_counted_as_created(make_app, db):
    from django.db import connection, transaction

    app = make_app(size=1)
    with app.checkout():
        transaction.atomic().__enter__()  # never left
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    stats = app.stats()["default"]
    assert stats["created"] == 2
    assert stats["idle"] == 1


# -- found by the sweep ---------------------------------------------------------------------


def test_unread_result_of_an_unbuffered_cursor_is_not_handed_on(make_app, db):
    import pymysql.cursors
    from django.db import connection

    app = make_app(size=1)
    with app.checkout():
        connection.ensure_connection()
        raw_cursor = connection.connection.cursor(pymysql.cursors.SSCursor)
        raw_cursor.execute("SELECT seq FROM seq_1_to_1000")
        raw_cursor.fetchone()  # the rest is still on the wire
        first = connection.connection.thread_id()
    with app.checkout(), connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        second = cursor.fetchone()[0]
    assert second != first
    assert app.stats()["default"]["broken"] == 1
