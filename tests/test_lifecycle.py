"""A connection's whole life: pre-warmed, replaced over a spread of time, and a health
check that cannot hang; with the hold and connect times it reports.

Each test judges by what the server reports (``SHOW PROCESSLIST``, ``CONNECTION_ID()``).
"""

from __future__ import annotations

import logging
import time

import gevent
import pytest

from tests.helpers import call, wait_until
from tests.test_gunicorn import gunicorn

pytestmark = pytest.mark.mariadb


def _id(app, path: str = "/b/id/?alias=default") -> int:
    status, _, body = call(app, path)
    assert status.startswith("200"), body[-300:]
    import json

    return int(json.loads(body)["id"])


# -- pre-warm -------------------------------------------------------------------------


def test_prewarm_opens_connections_in_each_worker_before_any_request(db):
    # --preload: the app is built in the master, which must never connect; each worker
    # pre-warms from post_worker_init.
    with gunicorn(db, "--preload", "-w", "2", TEST_PREWARM="2", TEST_PREWARM_HOOK="1"):
        wait_until(lambda: db.connection_count("app") == 4, timeout=15, what="2 x 2 pre-warmed")
        time.sleep(0.3)
        assert db.connection_count("app") == 4  # not one more (the master's)
        assert all(row["command"] == "Sleep" for row in db.processlist("app"))


def test_prewarm_retries_with_backoff_until_the_database_answers(make_app, db, fault_proxy, caplog):
    app = make_app(aliases=["proxied"], size=2, prewarm=2)
    fault_proxy.set_mode("reset")
    try:
        with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
            app.prewarm()
            wait_until(
                lambda: "pre-warming 'proxied' failed" in caplog.text, timeout=10,
                what="the failure logged",
            )
    finally:
        fault_proxy.set_mode("pass")
    # The server sees a connection before its handshake is done: wait for the pool too.
    wait_until(lambda: app.stats()["proxied"]["idle"] == 2, timeout=10, what="pre-warmed after all")
    assert db.connection_count("app") == 2
    assert app.stats()["proxied"]["in_use"] == 0
    app.prewarm()  # once per process: a second call opens nothing more
    time.sleep(0.2)
    assert db.connection_count("app") == 2


# -- lifetime -------------------------------------------------------------------------


def test_connections_opened_together_are_replaced_over_a_spread(make_app, db):
    app = make_app(
        size=20, max_outstanding=20, max_lifetime=2.0, lifetime_jitter=0.5, ping_after=None
    )
    opened: dict[int, float] = {}  # server connection id -> when it was opened (about)
    last_used: dict[int, float] = {}  # server connection id -> when a request last returned on it

    def warm() -> None:
        connection = _id(app, "/b/sleep/300/")
        opened[connection] = time.monotonic() - 0.3  # connected just before its 300 ms query

    gevent.joinall([gevent.spawn(warm) for _ in range(20)], timeout=20, raise_error=True)
    assert len(opened) == 20  # twenty connections, opened together
    deadline = time.monotonic() + 2.7

    def busy() -> None:  # keeps all twenty connections busy, each back every ~0.1 s
        while time.monotonic() < deadline:
            last_used[_id(app, "/b/sleep/100/")] = time.monotonic()

    gevent.joinall([gevent.spawn(busy) for _ in range(20)], timeout=20, raise_error=True)
    alive = {row["id"] for row in db.processlist("app")}
    assert not alive & set(opened)  # the server saw every original closed
    # Twenty busy connections, none idle: each is closed at its first return past its
    # lifetime, which is when its last use ended.
    lifetimes = sorted(last_used[i] - opened[i] for i in opened)
    # Each drawn from [1.0, 2.0] s, give or take a request; all alike (no jitter) would
    # span ~0.1 s. On a loaded machine (make test runs three lanes on two cores) requests
    # slow down and each connection's last use falls further before its expiry, which
    # squeezes the measured spread (0.31 s seen once): 0.25 s still tells jitter from none.
    assert lifetimes[0] >= 1.0 - 0.1, lifetimes
    assert lifetimes[-1] <= 2.0 + 0.5, lifetimes
    assert lifetimes[-1] - lifetimes[0] >= 0.25, lifetimes


def test_a_connection_past_its_lifetime_is_not_handed_out(make_app, db):
    app = make_app(size=1, max_lifetime=0.5, lifetime_jitter=0, ping_after=None)
    first = _id(app)
    time.sleep(0.6)  # expired while idle in the pool
    second = _id(app)
    assert second != first
    assert {row["id"] for row in db.processlist("app")} == {second}
    assert app.stats()["default"]["closed"] == 1


# -- the bounded health check ---------------------------------------------------------


def test_a_ping_on_a_silent_socket_is_bounded_by_ping_timeout(make_app, db, fault_proxy, caplog):
    # The proxied alias's driver read_timeout is 2 s: ping_timeout must win.
    app = make_app(aliases=["proxied"], size=1, ping_after=0, ping_timeout=0.5)
    first = _id(app, "/b/id/?alias=proxied")
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    ticker = gevent.spawn(tick)
    fault_proxy.blackhole_open()  # the idle connection's link goes silent; new ones pass
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
            second = _id(app, "/b/id/?alias=proxied")
        elapsed = time.monotonic() - started
    finally:
        fault_proxy.set_mode("pass")
        ticker.kill()
    assert second != first  # served on a fresh connection
    assert 0.5 <= elapsed < 0.5 + 1.0, elapsed  # ping_timeout plus a connect
    assert ticks >= elapsed / 0.01 * 0.5  # the hub kept serving meanwhile
    assert app.stats()["proxied"]["stale"] == 1
    assert "within ping_timeout=0.5s" in caplog.text
    wait_until(lambda: first not in {r["id"] for r in db.processlist("app")}, what="old one gone")


# -- what to watch --------------------------------------------------------------------


def test_hold_and_connect_times_in_stats_and_prometheus(make_app, db):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from wsgi_dbpool.prometheus import register

    app = make_app(size=1)
    registry = CollectorRegistry()
    register(app, registry)
    call(app, "/b/sleep/150/")
    call(app, "/b/id/")
    stats = app.stats()["default"]
    assert stats["connects"] == stats["opened"] == 1
    assert 0 < stats["connect_seconds"] < 1
    assert stats["hold_seconds"] >= 0.15
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("wsgi_dbpool_hold_seconds_count", None)] == 2
    assert samples[("wsgi_dbpool_hold_seconds_bucket", "0.1")] == 1  # the quick one
    # The slow one held at least 0.15 s; a loaded CI machine stretched it past 0.25 s once,
    # so its upper bucket is only bounded far above, and the buckets must be cumulative.
    bounds = sorted(
        (float(le), value)
        for (name, le), value in samples.items()
        if name == "wsgi_dbpool_hold_seconds_bucket"
    )
    assert [value for _, value in bounds] == sorted(value for _, value in bounds)
    assert samples[("wsgi_dbpool_hold_seconds_bucket", "5.0")] == 2
    assert samples[("wsgi_dbpool_hold_seconds_sum", None)] == pytest.approx(stats["hold_seconds"], abs=1e-5)
    assert samples[("wsgi_dbpool_connect_seconds_count", None)] == 1
    assert samples[("wsgi_dbpool_failovers_total", None)] == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prewarm": -1}, ValueError, "prewarm must be at least 0"),
        ({"prewarm": 5, "size": 4}, ValueError, "prewarm=5 is above size=4"),
        ({"prewarm": 1.5}, TypeError, "prewarm must be an int"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime must be > 0"),
        ({"max_lifetime": -5}, ValueError, "max_lifetime must be >= 0"),
        ({"lifetime_jitter": 1}, ValueError, "lifetime_jitter must be >= 0 and < 1"),
        ({"lifetime_jitter": "0.1"}, TypeError, "lifetime_jitter must be a fraction"),
        ({"ping_timeout": 0}, ValueError, "ping_timeout must be > 0"),
    ],
    ids=[
        "prewarm-negative", "prewarm-above-size", "prewarm-float", "lifetime-zero",
        "lifetime-negative", "jitter-one", "jitter-str", "ping-timeout-zero",
    ],
)
def test_bad_lifecycle_arguments_fail_at_construction(django_site, kwargs, error, message):
    from wsgi_dbpool import PoolingMiddleware

    with pytest.raises(error, match=message):
        PoolingMiddleware(lambda e, s: [], **{"aliases": ["default"], **kwargs})
