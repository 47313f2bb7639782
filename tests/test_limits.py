"""Behaviours 4, 8 and 11: bounded, fair, cooperative; killed greenlets; skipped requests."""

from __future__ import annotations

import logging
import time

import gevent
import pytest

from testbed.servers import PeakSampler
from tests.helpers import Ticker, call, get, serve, wait_until


@pytest.mark.parametrize("linger", [0, 0.5], ids=["close-surplus-at-once", "linger-0.5s"])
def test_300_clients_never_exceed_the_cap(make_app, db, linger):
    app = make_app(size=2, max_outstanding=5, timeout=30, linger=linger)
    with PeakSampler(db, every=0.005) as connections, serve(app) as address:
        jobs = [gevent.spawn(get, address, "/sleep/20/", timeout=60) for _ in range(300)]
        gevent.joinall(jobs, timeout=90, raise_error=True)
        statuses = [job.value.status for job in jobs]
    peak = connections.peak
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) == 300  # timeout=30 is ample for 300 x 20 ms / 5
    assert 0 < peak <= 5
    stats = app.stats()["default"]
    assert stats["opened"] <= 5
    assert stats["handoffs"] > 0
    if linger == 0:
        assert stats["idle"] <= 2
    else:  # surplus stays open for `linger` seconds, then goes
        wait_until(lambda: app.stats()["default"]["idle"] <= 2, timeout=5, what="surplus closed")
    wait_until(lambda: db.connection_count("app") <= 2, what="at most size connections left")


def test_waiters_are_served_in_arrival_order(make_app, db):
    app = make_app(size=1, max_outstanding=1, timeout=30)
    order: list[int] = []
    with serve(app) as address:
        holder = gevent.spawn(get, address, "/sleep/300/")
        wait_until(lambda: app.stats()["default"]["in_use"] == 1, what="holder")

        def client(n: int) -> None:
            get(address, "/sleep/10/")
            order.append(n)

        jobs = []
        for n in range(8):
            jobs.append(gevent.spawn(client, n))
            wait_until(lambda n=n: app.stats()["default"]["waiting"] == n + 1, what=f"waiter {n}")
        gevent.joinall([holder, *jobs], timeout=30, raise_error=True)
    assert order == list(range(8))
    assert app.stats()["default"]["handoffs"] >= 8


def test_timeout_answers_503_without_calling_the_app(make_app, db, caplog):
    calls = []

    def inner(environ, start_response):
        calls.append(environ["PATH_INFO"])
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application()(environ, start_response)

    app = make_app(inner, size=1, max_outstanding=1, timeout=0.2)
    with serve(app) as address:
        holder = gevent.spawn(get, address, "/sleep/1000/")
        wait_until(lambda: app.stats()["default"]["in_use"] == 1, what="holder")
        with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
            started = time.monotonic()
            response = get(address, "/id/")
            waited = time.monotonic() - started
        holder.get(timeout=10)
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert 0.15 < waited < 5
    assert calls == ["/sleep/1000/"]
    assert app.stats()["default"]["timeouts"] == 1
    assert "'default'" in caplog.text and "503" in caplog.text


def test_checkout_raises_pool_timeout(make_app, db):
    from wsgi_dbpool import PoolTimeout

    app = make_app(size=1, max_outstanding=1, timeout=0.1)
    with app.checkout():
        def other():
            with app.checkout():
                pass

        with pytest.raises(PoolTimeout, match=r"'default'.*max_outstanding"):
            gevent.spawn(other).get(timeout=5)
    assert app.stats()["default"]["timeouts"] == 1


def test_waiting_does_not_block_the_hub(make_app, db):
    from wsgi_dbpool import PoolTimeout

    app = make_app(size=1, max_outstanding=1, timeout=1)

    def waiter():
        with app.checkout():
            pass

    with Ticker() as ticker, app.checkout(), pytest.raises(PoolTimeout):
        gevent.spawn(waiter).get(timeout=5)
    assert ticker.ticks >= 50  # the ticker ran all through the one-second wait


def test_killed_waiter_loses_no_slot(make_app, db):
    app = make_app(size=1, max_outstanding=2, timeout=30)
    with serve(app) as address:
        holders = [gevent.spawn(get, address, "/sleep/300/") for _ in range(2)]
        wait_until(lambda: app.stats()["default"]["in_use"] == 2, what="holders")
        waiter = gevent.spawn(app.checkout().__enter__)
        wait_until(lambda: app.stats()["default"]["waiting"] == 1, what="waiter")
        waiter.kill(timeout=5)
        assert app.stats()["default"]["waiting"] == 0
        gevent.joinall(holders, timeout=10, raise_error=True)
        # Both slots still usable at once.
        both = [gevent.spawn(get, address, "/sleep/100/") for _ in range(2)]
        gevent.joinall(both, timeout=10, raise_error=True)
    assert [job.value.status for job in both] == [200, 200]
    stats = app.stats()["default"]
    assert stats["in_use"] == 0 and stats["waiting"] == 0


def test_greenlet_killed_while_holding_returns_and_closes(make_app, db):
    from django.db import connection

    app = make_app(size=1, max_outstanding=1, timeout=5)

    def job():
        with app.checkout():
            with connection.cursor() as cursor:
                cursor.execute("SELECT SLEEP(5)")

    worker = gevent.spawn(job)
    wait_until(lambda: db.connection_count("app") == 1, what="query running")
    gevent.sleep(0.1)
    worker.kill(timeout=5)
    stats = app.stats()["default"]
    assert stats["in_use"] == 0
    # Killed mid-query: the connection was closed, not handed on mid-protocol.
    status, _, _ = call(app, "/session/")
    assert status == "200 OK"
    assert app.stats()["default"]["opened"] == 2


def test_gevent_timeout_while_holding(make_app, db):
    app = make_app(size=1, max_outstanding=1, timeout=5)
    with gevent.Timeout(0.3, False):
        call(app, "/sleep/3000/")
    assert app.stats()["default"]["in_use"] == 0
    status, _, _ = call(app, "/id/")
    assert status == "200 OK"


def test_skipped_requests_do_not_queue_behind_the_cap(make_app, db):
    app = make_app(
        size=1, max_outstanding=2, timeout=0.2,
        skip=lambda environ: environ["PATH_INFO"] == "/nodb/",
    )
    with serve(app) as address:
        holders = [gevent.spawn(get, address, "/sleep/1000/") for _ in range(2)]
        wait_until(lambda: app.stats()["default"]["in_use"] == 2, what="all slots taken")
        started = time.monotonic()
        health = get(address, "/nodb/")
        health_seconds = time.monotonic() - started
        blocked = get(address, "/id/")
        gevent.joinall(holders, timeout=10, raise_error=True)
    assert health.status == 200 and health.body == b"ok"
    assert health_seconds < 0.2  # answered while every slot was taken, not after a wait
    assert blocked.status == 503
    assert app.stats()["default"]["checkouts"] == 2


def test_skipped_request_that_uses_the_database_leaves_nothing_behind(make_app, db):
    app = make_app(size=1, skip=lambda environ: environ["PATH_INFO"] == "/id/")
    with serve(app) as address:
        assert get(address, "/session/").status == 200  # pooled: stays idle
        assert get(address, "/id/").status == 200  # skipped, yet it queried
        wait_until(lambda: db.connection_count("app") == 1, what="the skipped request's connection closed")
    assert app.stats()["default"]["checkouts"] == 1
