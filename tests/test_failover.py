"""Failover: a demoted server that still answers pings must not keep the pool.

Two MariaDB servers behind the in-test TCP proxy: the pool is warmed on A, the proxy
is pointed at B (the new primary), and A is made read-only for the ``app`` user
(which has no SUPER privilege, so ``read_only`` applies to it). Then at most ``size``
requests may fail, and every one after succeeds on B, with its rows stored in B.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import gevent
import pytest

from testbed.mariadb import MariaDBServer
from tests.helpers import call, wait_until

pytestmark = pytest.mark.mariadb


@pytest.fixture(scope="module")
def server_b() -> Iterator[MariaDBServer]:
    server = MariaDBServer()
    server.start()
    server.create_items()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def failed_over(db, fault_proxy, server_b) -> Iterator[MariaDBServer]:
    """Undoes the failover afterwards: A writable, the proxy back on A, B empty."""
    server_b.admin_query("TRUNCATE TABLE app.items")
    try:
        yield server_b
    finally:
        db.set_global("read_only", 0)
        fault_proxy.retarget(db.port)
        server_b.kill_user("app")


def _insert(app, name: str) -> tuple[int, int | None]:
    status, _, body = call(app, f"/insert/?alias=proxied&name={name}")
    code = int(status.split()[0])
    return code, (json.loads(body)["id"] if code == 200 else None)


@pytest.mark.parametrize("hold", ["request", "transaction"])
@pytest.mark.parametrize(
    "at_once", [4, 1], ids=["four-notice-it-together", "one-notices-it-alone"]
)
def test_a_read_only_error_moves_the_pool_to_the_new_server(
    make_app, db, fault_proxy, failed_over, caplog, at_once, hold
):
    server_b = failed_over
    app = make_app(aliases=["proxied"], size=4, max_outstanding=4, hold=hold)
    warm = [gevent.spawn(call, app, "/b/sleep/100/?alias=proxied") for _ in range(4)]
    gevent.joinall(warm, timeout=20, raise_error=True)
    assert db.connection_count("app") == 4  # all four on A

    fault_proxy.retarget(server_b.port)  # new connections reach B
    db.set_global("read_only", 1)  # A is demoted: it still answers pings
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        # Four at once take all of A's connections; one alone leaves three idle on A,
        # which the burst below would take if they were not closed with it.
        first = [gevent.spawn(_insert, app, f"first{i}") for i in range(at_once)]
        gevent.joinall(first, timeout=20, raise_error=True)
        later = [_insert(app, f"later{i}") for i in range(10)]
        burst = [gevent.spawn(_insert, app, f"burst{i}") for i in range(8)]
        gevent.joinall(burst, timeout=20, raise_error=True)

    codes = [job.value[0] for job in first]
    failed = codes.count(500)
    assert 1 <= failed <= at_once
    assert all(code == 200 for code, _ in later)
    assert all(job.value[0] == 200 for job in burst)
    assert db.admin_query("SELECT COUNT(*) FROM app.items")[0][0] == 0  # nothing on A
    stored = server_b.admin_query("SELECT COUNT(*) FROM app.items")[0][0]
    assert stored == 18 + (at_once - failed)  # every success is a row in B
    b_ids = {row["id"] for row in server_b.processlist("app")}
    assert {cid for _, cid in later} <= b_ids
    assert db.connection_count("app") == 0  # A's connections all closed, idle ones too
    # One failover, however many requests noticed it.
    assert app.stats()["proxied"]["failovers"] == 1
    assert caplog.text.count("failover on 'proxied'") == 1


def test_a_connection_busy_during_the_failover_is_not_handed_out_again(
    make_app, db, fault_proxy, failed_over
):
    server_b = failed_over
    app = make_app(aliases=["proxied"], size=2, max_outstanding=2)
    warm = [gevent.spawn(call, app, "/b/sleep/100/?alias=proxied") for _ in range(2)]
    gevent.joinall(warm, timeout=20, raise_error=True)
    reading = gevent.spawn(call, app, "/b/sleep/500/?alias=proxied")  # a read on A, under way
    gevent.sleep(0.1)
    fault_proxy.retarget(server_b.port)
    db.set_global("read_only", 1)
    assert _insert(app, "noticed")[0] == 500  # the other A connection notices the failover
    reading.join(timeout=10)
    assert reading.value[0].startswith("200")  # a read works on A: it comes back clean
    ids = {_insert(app, f"after{i}")[1] for i in range(5)}
    assert ids <= {row["id"] for row in server_b.processlist("app")}
    assert db.connection_count("app") == 0


def test_failover_errors_are_recognised_by_code():
    import psycopg.errors
    import pymysql.err

    from wsgi_dbpool.failover import failover_error

    for code in (1290, 1792, 1836, 2006, 2013):
        assert failover_error(pymysql.err.OperationalError(code, "x")) is not None
    assert failover_error(pymysql.err.IntegrityError(1062, "duplicate")) is None
    assert failover_error(psycopg.errors.ReadOnlySqlTransaction()) is not None  # 25006
    assert failover_error(psycopg.errors.AdminShutdown()) is not None  # 57P01
    assert failover_error(psycopg.errors.UniqueViolation()) is None
    wrapped = RuntimeError("django's copy")  # Django raises its own class `from` the driver's
    wrapped.__cause__ = psycopg.errors.AdminShutdown()
    assert failover_error(wrapped) is not None


@pytest.fixture
def pg_read_only(postgres) -> Iterator[None]:
    """Every PostgreSQL session read-only from its next statement, as on a demoted primary."""
    postgres.kill_user("app")
    yield
    postgres.admin_query("ALTER SYSTEM RESET default_transaction_read_only")
    postgres.admin_query("SELECT pg_reload_conf()")


def test_a_postgresql_read_only_error_closes_the_alias_connections(
    make_app, postgres, pg_read_only, caplog
):

    app = make_app(aliases=["pg"], size=2, max_outstanding=2)
    warm = [gevent.spawn(call, app, "/b/sleep/100/?alias=pg") for _ in range(2)]
    gevent.joinall(warm, timeout=20, raise_error=True)
    assert postgres.connection_count("app") == 2
    postgres.admin_query("ALTER SYSTEM SET default_transaction_read_only = on")
    postgres.admin_query("SELECT pg_reload_conf()")
    gevent.sleep(0.3)  # the sessions read the new setting before their next statement
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        status, _, _ = call(app, "/insert/?alias=pg")
    assert status.startswith("500")  # SQLSTATE 25006
    assert "SQLSTATE 25006" in caplog.text
    assert app.stats()["pg"]["failovers"] == 1
    wait_until(lambda: postgres.connection_count("app") == 0, what="both pg connections closed")
