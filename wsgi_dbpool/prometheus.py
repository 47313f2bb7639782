"""Prometheus metrics for the pool (``pip install wsgi_dbpool[prometheus]``).

Two ways in, for the two ways gunicorn runs:

- one process, or one scrape port per worker: ``register(application)`` adds a
  collector that reads ``stats()`` at scrape time;
- several workers behind one ``/metrics`` (``PROMETHEUS_MULTIPROC_DIR`` set, see
  prometheus_client's multiprocess mode): ``export_multiprocess(application)`` in each
  worker copies the numbers into prometheus_client's multiprocess-aware metrics every
  ``interval`` seconds (gauges summed over live workers, counters added up).

Metric names (label ``alias``): ``wsgi_dbpool_idle``, ``wsgi_dbpool_in_use``,
``wsgi_dbpool_waiting``, ``wsgi_dbpool_max_outstanding``, ``wsgi_dbpool_paused``,
``wsgi_dbpool_breaker_open`` (gauges); ``wsgi_dbpool_rejected_total``,
``wsgi_dbpool_unavailable_total``, ``wsgi_dbpool_drained_total``,
``wsgi_dbpool_taken_back_total``,
``wsgi_dbpool_opened_total``, ``wsgi_dbpool_closed_total``,
``wsgi_dbpool_checkouts_total``, ``wsgi_dbpool_timeouts_total``,
``wsgi_dbpool_dirty_total``, ``wsgi_dbpool_stale_total``, ``wsgi_dbpool_broken_total``,
``wsgi_dbpool_overflow_total``, ``wsgi_dbpool_spawned_total``,
``wsgi_dbpool_failovers_total``, ``wsgi_dbpool_pinned_total`` (counters); histograms, each named after the
OpenTelemetry database-client metric it matches: ``wsgi_dbpool_wait_seconds`` (the
time to get a connection: ``db.client.connection.wait_time``),
``wsgi_dbpool_hold_seconds`` (checkout to return: ``db.client.connection.use_time``),
``wsgi_dbpool_connect_seconds`` (each connect attempt:
``db.client.connection.create_time``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from . import _concurrency
from .alias_pool import BREAKER_OPEN
from .pool import CHECKOUTS, IDLE, IN_USE, MAX_OUTSTANDING, PAUSED, REJECTED, TIMEOUTS, WAITING, Pool

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .middleware import PoolingMiddleware

# Metric name (after ``wsgi_dbpool_``) = stats() key; the pool's keys come from pool.py.
GAUGES = {
    IDLE: "Connections idle in the pool",
    IN_USE: "Connections checked out by requests",
    WAITING: "Requests waiting for a connection",
    MAX_OUTSTANDING: "The cap on connections checked out at once (0: none)",
    PAUSED: "1 while the pool is paused (new checkouts wait)",
    BREAKER_OPEN: "1 while fail_fast's breaker is open (the database was unreachable)",
}
COUNTERS = {
    CHECKOUTS: "Connections handed to requests",
    TIMEOUTS: "Requests that gave up waiting (503 or PoolTimeout)",
    REJECTED: "Requests turned away at once at max_waiting (503 or TooManyWaiting)",
    # events counted by the Django policy (wsgi_dbpool.alias_pool.POLICY_EVENTS)
    "opened": "Server connections opened by pooled wrappers",
    "closed": "Server connections closed by pooled wrappers",
    "dirty": "Connections returned inside a transaction and rolled back or replaced",
    "stale": "Connections found dead on checkout",
    "broken": "Connections closed on return because they could not be handed on (interrupted)",
    "overflow": "Connections opened outside the pool by greenlets with no checkout()",
    "spawned": "Greenlets spawned by a view that took a pooled connection under the cap",
    "failovers": "Read-only or failover errors that closed the alias's connections",
    "pinned": "Units of work that left state on their session: reset on return, and kept "
    "their connection to their end under hold='transaction'",
    "unavailable": "Requests answered at once while the breaker was open (503 or DatabaseUnavailable)",
    "drained": "Calls of drain(): every connection replaced",
    "taken_back": "Connections taken back at max_hold: server session ended, slot given on",
}
# name: (help, the Pool method that reads it, the OpenTelemetry metric it matches)
HISTOGRAMS = {
    "wait_seconds": ("Time a request waited for a connection", "wait_histogram"),
    "hold_seconds": ("Time a connection was checked out, to its return", "hold_histogram"),
    "connect_seconds": ("Time a connect attempt took", "connect_histogram"),
}


class PoolCollector:
    """Reads the middleware's ``stats()`` when Prometheus scrapes this process."""

    def __init__(self, middleware: PoolingMiddleware) -> None:
        self.middleware = middleware

    def collect(self) -> Iterator[Any]:
        stats = self.middleware.stats()
        for name, doc in GAUGES.items():
            family = GaugeMetricFamily(f"wsgi_dbpool_{name}", doc, labels=["alias"])
            for alias, numbers in stats.items():
                family.add_metric([alias], float(numbers.get(name) or 0))
            yield family
        for name, doc in COUNTERS.items():
            counter = CounterMetricFamily(f"wsgi_dbpool_{name}", doc, labels=["alias"])
            for alias, numbers in stats.items():
                counter.add_metric([alias], float(numbers.get(name) or 0))
            yield counter
        for name, (doc, method) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(f"wsgi_dbpool_{name}", doc, labels=["alias"])
            for alias, pool in pools(self.middleware).items():
                buckets, seconds, _count = getattr(pool, method)()
                histogram.add_metric([alias], [(_bound(b), float(c)) for b, c in buckets], seconds)
            yield histogram


def register(
    middleware: PoolingMiddleware, registry: CollectorRegistry = REGISTRY
) -> PoolCollector:
    """Export ``middleware``'s pool through ``registry`` (the default one unless given)."""
    collector = PoolCollector(middleware)
    registry.register(collector)
    return collector


def export_multiprocess(middleware: PoolingMiddleware, interval: float = 5.0) -> None:
    """In a worker: keep prometheus_client's multiprocess files up to date with the pool.

    Call it once per worker (gunicorn ``post_worker_init``), with
    ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported. The
    histograms are not exported this way (their buckets cannot be replayed into
    prometheus_client's); their sums and counts are, as counters named
    ``wsgi_dbpool_wait_seconds_sum`` and ``_count`` (and ``hold_seconds``,
    ``connect_seconds`` alike).
    """
    from prometheus_client import Counter, Gauge

    gauges = {
        name: Gauge(f"wsgi_dbpool_{name}", doc, ["alias"], multiprocess_mode="livesum")
        for name, doc in GAUGES.items()
    }
    counters = {
        name: Counter(f"wsgi_dbpool_{name}", doc, ["alias"]) for name, doc in COUNTERS.items()
    }
    for name, (doc, _method) in HISTOGRAMS.items():
        counters[f"{name}_sum"] = Counter(f"wsgi_dbpool_{name}_sum", f"{doc}: sum", ["alias"])
        counters[f"{name}_count"] = Counter(f"wsgi_dbpool_{name}_count", f"{doc}: count", ["alias"])
    exported: dict[tuple[str, str], float] = {}

    def copy() -> None:
        every_pool = pools(middleware)
        for alias, numbers in middleware.stats().items():
            for name, (_doc, method) in HISTOGRAMS.items():
                _, seconds, count = getattr(every_pool[alias], method)()
                numbers = {**numbers, f"{name}_sum": seconds, f"{name}_count": count}
            for name, gauge in gauges.items():
                gauge.labels(alias).set(float(numbers.get(name) or 0))
            for name, counter in counters.items():
                value = float(numbers.get(name) or 0)
                delta = value - exported.get((alias, name), 0.0)
                if delta > 0:
                    counter.labels(alias).inc(delta)
                exported[(alias, name)] = value
        _concurrency.call_later(interval, copy)

    copy()


def pools(middleware: PoolingMiddleware) -> dict[str, Pool[Any]]:
    """The middleware's pools by alias, for their wait histograms (its public accessor)."""
    return middleware.pools()


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
