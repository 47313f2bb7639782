"""The under-fire series in Prometheus (issues #20, #22): each provoked against a real server,
then read back by scraping a real registry in the exposition format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.helpers import call, wait_until
from tests.test_prometheus import scrape

# stats() keys deliberately not exported as a gauge or counter of their own: the settings'
# size, and what the three histograms carry (their _count and _sum) or the logs tell.
NOT_EXPORTED = {
    "size", "waits", "wait_seconds", "handoffs", "created", "discarded", "hold_seconds",
    "connects", "connect_seconds",
}


@pytest.fixture
def proxy(fault_proxy: Any) -> Iterator[Any]:
    fault_proxy.set_mode("pass")
    yield fault_proxy
    fault_proxy.set_mode("pass")


def exported(app: Any, alias: str = "default") -> dict[str, float]:
    """What a scrape of a registry holding only ``app``'s collector says, by metric name."""
    from wsgi_dbpool.prometheus import register

    registry = CollectorRegistry()
    register(app, registry)
    return {
        name: value
        for (name, labels), value in scrape(generate_latest(registry).decode()).items()
        if dict(labels).get("alias") == alias and "le" not in dict(labels)
    }


def series(samples: dict[str, float], key: str) -> float:
    """The sample for a stats() key: a gauge by its name, a counter with ``_total``."""
    name = f"wsgi_dbpool_{key}"
    return samples[name] if name in samples else samples[f"{name}_total"]


def test_every_stats_key_is_exported(make_app, db):
    app = make_app(max_hold=30)
    assert call(app, "/id/")[0].startswith("200")
    samples = exported(app)
    for key, value in app.stats()["default"].items():
        if key not in NOT_EXPORTED:
            assert series(samples, key) == float(value or 0), key


def test_breaker_and_fast_answers(make_app, db, proxy):
    app = make_app(aliases=["proxied"])
    proxy.set_mode("reset")
    assert call(app, "/id/?alias=proxied")[0].startswith("500")  # the failed connect opens it
    for _ in range(3):
        assert call(app, "/id/?alias=proxied")[0].startswith("503")  # answered at once
    samples, stats = exported(app, "proxied"), app.stats()["proxied"]
    assert samples["wsgi_dbpool_breaker_open"] == stats["breaker_open"] == 1
    assert samples["wsgi_dbpool_unavailable_total"] == stats["unavailable"] >= 3
    proxy.set_mode("pass")
    wait_until(lambda: app.stats()["proxied"]["breaker_open"] == 0, timeout=10, what="closed")
    assert exported(app, "proxied")["wsgi_dbpool_breaker_open"] == 0


def test_max_waiting_rejects(make_app, db):
    app = make_app(size=1, max_outstanding=1, timeout=10, max_waiting=0)
    holder = gevent.spawn(call, app, "/sleep/300/")
    wait_until(lambda: app.stats()["default"]["in_use"] == 1, what="the holder in")
    assert call(app, "/id/")[0].startswith("503")
    assert holder.get(timeout=10)[0].startswith("200")
    assert exported(app)["wsgi_dbpool_rejected_total"] == app.stats()["default"]["rejected"] == 1


def test_max_hold_take_backs(make_app, db):
    app = make_app(size=1, max_outstanding=1, timeout=10, max_hold=0.5)
    call(app, "/sleep/3000/")  # its SLEEP ended by the server when it is taken back
    wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="the slot back")
    assert exported(app)["wsgi_dbpool_taken_back_total"] == app.stats()["default"]["taken_back"] == 1
    assert call(app, "/id/")[0].startswith("200")


def test_pinned_paused_drained(make_app, db):
    app = make_app(size=1, max_outstanding=2, timeout=10)
    assert call(app, "/run/?sql=SET @marker := 1")[0].startswith("200")  # session state: pinned
    app.pause()
    samples = exported(app)
    assert samples["wsgi_dbpool_paused"] == app.stats()["default"]["paused"] == 1
    app.resume()
    app.drain()
    samples, stats = exported(app), app.stats()["default"]
    assert samples["wsgi_dbpool_paused"] == 0
    assert samples["wsgi_dbpool_pinned_total"] == stats["pinned"] == 1
    assert samples["wsgi_dbpool_drained_total"] == stats["drained"] == 1
