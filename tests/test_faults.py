"""Faults on loopback: a restart mid-load, a server down at start, KILLs, a full server,
and a proxy that blackholes, resets or slows the traffic. After each: no hang, no leak,
recovery without restarting anything.
"""

from __future__ import annotations

import time

import gevent
import pymysql
import pytest

from tests.helpers import get, serve, wait_until


@pytest.fixture
def proxy(fault_proxy):
    fault_proxy.set_mode("pass")
    yield fault_proxy
    fault_proxy.set_mode("pass")


def assert_no_leak(app, db, alias: str = "default") -> None:
    wait_until(lambda: app.stats()[alias]["in_use"] == 0, what="every connection returned")
    stats = app.stats()[alias]
    assert stats["waiting"] == 0
    wait_until(lambda: app.stats()[alias]["idle"] <= stats["size"], timeout=10, what="idle <= size")
    wait_until(lambda: db.connection_count("app") <= stats["size"], timeout=10,
               what="server holds at most size connections")


def timed_get(address: str, path: str) -> tuple[int, float]:
    started = time.monotonic()
    response = get(address, path, timeout=30)
    return response.status, time.monotonic() - started


def test_server_restarted_mid_load(make_app, db):
    app = make_app(size=2, max_outstanding=5, timeout=5, linger=0)
    results: list[tuple[int, float]] = []
    running = True

    def client() -> None:
        while running:
            results.append(timed_get(address, "/id/"))

    with serve(app) as address:
        clients = [gevent.spawn(client) for _ in range(20)]
        gevent.sleep(1.0)
        db.restart()
        gevent.sleep(1.0)
        running = False
        gevent.joinall(clients, timeout=30, raise_error=True)
        after = [get(address, "/id/").status for _ in range(10)]
    statuses = {status for status, _ in results}
    assert statuses <= {200, 500, 503}
    assert 200 in statuses
    assert max(seconds for _, seconds in results) < 10  # nobody hung
    assert after == [200] * 10  # the first requests after the restart succeed
    assert_no_leak(app, db)


def test_server_down_at_start_then_up(make_app, db):
    db.kill_server()
    try:
        app = make_app(size=2, max_outstanding=4, timeout=5)  # builds without a database
        with serve(app) as address:
            down = [timed_get(address, "/id/") for _ in range(3)]
            # The first connect is refused; then fail_fast answers without trying.
            assert [status for status, _ in down] == [500, 503, 503]
            assert max(seconds for _, seconds in down) < 5  # refused at once, not a hang
            assert app.stats()["default"]["in_use"] == 0
            db.start_again()
            wait_until(lambda: app.stats()["default"]["breaker_open"] == 0, timeout=35,
                       what="the breaker's probe through")
            assert get(address, "/id/").status == 200
    finally:
        if not db.running:
            db.start_again()
    assert_no_leak(app, db)


def test_kill_of_an_in_use_connection(make_app, db):
    app = make_app(size=1, max_outstanding=2, timeout=5)
    with serve(app) as address:
        first = get(address, "/id/").json()["id"]
        slow = gevent.spawn(get, address, "/sleep/3000/")
        wait_until(lambda: any(r["info"] and "SLEEP" in r["info"] for r in db.processlist("app")),
                   what="the query running")
        db.kill(first)
        assert slow.get(timeout=10).status == 500
        response = get(address, "/id/")
    assert response.status == 200 and response.json()["id"] != first
    assert_no_leak(app, db)


def test_kill_of_idle_connections(make_app, db):
    app = make_app(size=3, max_outstanding=3, timeout=5, ping_after=0)
    with serve(app) as address:
        jobs = [gevent.spawn(get, address, "/sleep/100/") for _ in range(3)]
        gevent.joinall(jobs, timeout=10, raise_error=True)
        wait_until(lambda: app.stats()["default"]["idle"] == 3, what="three idle")
        db.kill_user("app")
        statuses = [get(address, "/id/").status for _ in range(6)]
    assert statuses == [200] * 6
    assert app.stats()["default"]["stale"] >= 1
    assert_no_leak(app, db)


def test_server_full_of_someone_elses_connections(make_app, db):
    app = make_app(size=2, max_outstanding=4, timeout=5)
    hogs: list[pymysql.Connection] = []
    db.set_global("max_connections", 6)
    try:
        for _ in range(10):  # take every connection the server will give
            try:
                hogs.append(pymysql.connect(host=db.host, port=db.port, user="app",
                                            password="app", database="app"))
            except pymysql.OperationalError:  # not pymysql.err.*: see MariaDBServer.kill
                break
        with serve(app) as address:
            refused = timed_get(address, "/id/")
            for hog in hogs:
                hog.close()
            hogs.clear()
            wait_until(lambda: db.connection_count("app") == 0, what="hogs gone")
            recovered = get(address, "/id/")
    finally:
        for hog in hogs:
            hog.close()
        db.set_global("max_connections", 200)
    assert refused[0] == 500 and refused[1] < 5
    assert recovered.status == 200
    assert_no_leak(app, db)


def test_network_blackhole_fails_within_the_driver_timeout(make_app, db, proxy):
    app = make_app(aliases=["proxied"], size=1, max_outstanding=2, timeout=5)
    with serve(app) as address:
        assert get(address, "/id/?alias=proxied").status == 200
        proxy.set_mode("blackhole")
        status, seconds = timed_get(address, "/id/?alias=proxied")
        assert status == 500 and seconds < 10  # read_timeout=2 (and a connect_timeout=2)
        proxy.set_mode("pass")
        assert get(address, "/id/?alias=proxied").status == 200
    assert_no_leak(app, db, "proxied")


def test_network_reset(make_app, db, proxy):
    app = make_app(aliases=["proxied"], size=1, max_outstanding=2, timeout=5, ping_after=0)
    with serve(app) as address:
        first = get(address, "/id/?alias=proxied").json()["id"]
        proxy.set_mode("reset")
        status, seconds = timed_get(address, "/id/?alias=proxied")
        assert status == 500 and seconds < 5
        assert timed_get(address, "/id/?alias=proxied")[0] == 503  # fail_fast: no connect
        proxy.set_mode("pass")
        wait_until(lambda: app.stats()["proxied"]["breaker_open"] == 0, timeout=3,
                   what="the breaker's probe through")
        response = get(address, "/id/?alias=proxied")
    assert response.status == 200 and response.json()["id"] != first
    assert_no_leak(app, db, "proxied")


@pytest.mark.slow  # version-agnostic and long: once, on the newest Django
def test_slow_network_still_serves(make_app, db, proxy):
    app = make_app(aliases=["proxied"], size=2, max_outstanding=3, timeout=10)
    proxy.set_mode("slow")
    with serve(app) as address:
        jobs = [gevent.spawn(timed_get, address, "/id/?alias=proxied") for _ in range(6)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
    assert [job.value[0] for job in jobs] == [200] * 6
    assert min(job.value[1] for job in jobs) >= 0.2  # the delay was really there
    assert_no_leak(app, db, "proxied")


def test_client_gives_up_before_the_view_finishes(make_app, db):
    import socket

    app = make_app(size=1, max_outstanding=1, timeout=5)
    with serve(app) as address:
        host, port = address.split(":")
        impatient = socket.create_connection((host, int(port)))
        impatient.settimeout(0.3)
        impatient.sendall(b"GET /sleep/1500/ HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TimeoutError):
            impatient.recv(1024)  # the client's patience runs out first
        impatient.close()
        assert app.stats()["default"]["in_use"] == 1  # the view still runs, holding its slot
        # ... and the slot comes back when it ends: the next request is served.
        response = get(address, "/id/")
    assert response.status == 200
    assert_no_leak(app, db)
