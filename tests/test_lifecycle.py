"""A connection's whole life: pre-warmed, replaced over a spread of time, and a health
check that cannot hang; with the hold and connect times it reports.

Each test judges by what the server reports (``SHOW PROCESSLIST``, ``CONNECTION_ID()``).
"""

from __future__ import annotations

import logging
import time

import gevent
import pytest

from tests.conftest import call, wait_until
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
    wait_until(lambda: db.connection_count("app") == 2, timeout=10, what="pre-warmed after all")
    stats = app.stats()["proxied"]
    assert stats["idle"] == 2 and stats["in_use"] == 0
    app.prewarm()  # once per process: a second call opens nothing more
    time.sleep(0.2)
    assert db.connection_count("app") == 2


# -- lifetime -------------------------------------------------------------------------


class _Lifetimes:
    """Samples the server's process list: when each connection id appeared and vanished."""

    def __init__(self, db, every: float = 0.02) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._running = True

        def sample() -> None:
            while self._running:
                now = time.monotonic()
                for row in db.processlist("app"):
                    self.first.setdefault(row["id"], now)
                    self.last[row["id"]] = now
                gevent.sleep(every)

        self._greenlet = gevent.spawn(sample)

    def stop(self) -> None:
        self._running = False
        self._greenlet.join(timeout=5)


def test_connections_opened_together_are_replaced_over_a_spread(make_app, db):
    app = make_app(
        size=20, max_outstanding=20, max_lifetime=2.0, lifetime_jitter=0.5, ping_after=None
    )
    sampler = _Lifetimes(db)
    warm = [gevent.spawn(call, app, "/b/sleep/300/") for _ in range(20)]
    gevent.joinall(warm, timeout=20, raise_error=True)
    originals = set(sampler.first)
    assert len(originals) == 20
    stop = False

    def busy() -> None:  # keeps every connection going out and coming back
        while not stop:
            call(app, "/b/sleep/20/")

    workers = [gevent.spawn(busy) for _ in range(20)]
    try:
        wait_until(
            lambda: sampler.last and all(
                sampler.last[i] < max(sampler.last.values()) - 0.1 for i in originals
            ),
            timeout=10, what="every original connection replaced",
        )
    finally:
        stop = True
        gevent.joinall(workers, timeout=10, raise_error=True)
        sampler.stop()
    lifetimes = sorted(sampler.last[i] - sampler.first[i] for i in originals)
    # Each drawn from [1.0, 2.0] s, closed at the first return after it (a few tens of
    # ms later), sampled every 20 ms; all alike (no jitter) would span ~0.1 s.
    assert lifetimes[0] >= 1.0 - 0.1, lifetimes
    assert lifetimes[-1] <= 2.0 + 0.4, lifetimes
    assert lifetimes[-1] - lifetimes[0] >= 0.5, lifetimes


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
    assert samples[("wsgi_dbpool_hold_seconds_bucket", "0.25")] == 2
    assert samples[("wsgi_dbpool_hold_seconds_sum", None)] == pytest.approx(stats["hold_seconds"])
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
