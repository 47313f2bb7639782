"""OpenTelemetry metrics for the pool (``pip install wsgi_dbpool[otel]``).

``instrument(application)`` registers, through the OpenTelemetry metrics API (the
global ``MeterProvider`` unless one is given), the database-client connection-pool
metrics of the semantic conventions 1.44.0 (status: development), one pool per alias,
named by ``db.client.connection.pool.name``:

- observed at each collection from ``stats()``: ``db.client.connection.count``
  (``db.client.connection.state`` ``idle`` / ``used``), ``db.client.connection.max``
  (``max_outstanding``; none without a cap), ``db.client.connection.idle.max``
  (``size``), ``db.client.connection.pending_requests`` (asynchronous up-down
  counters) and ``db.client.connection.timeouts`` (an asynchronous counter);
- ``db.client.connection.wait_time``, ``.use_time`` and ``.create_time``
  (histograms, seconds), copied from the histograms the pool keeps anyway (those the
  Prometheus exporter reads), so nothing is added to the request path. The API has no
  asynchronous histogram: at each collection, what the pool counted since the last one
  is recorded into synchronous histograms whose advised bucket bounds are the pool's,
  one value per event, chosen inside its bucket so that the counts per bucket, the
  count and the sum are the pool's exactly (the minimum and maximum are not).

Call it in the process that serves: once per gunicorn worker (``post_worker_init``),
or for a Celery worker's ``pool_tasks(...)`` pool. The core never imports OpenTelemetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from . import _concurrency
from .pool import IDLE, IN_USE, MAX_OUTSTANDING, SIZE, TIMEOUTS, WAIT_BUCKETS, WAITING, Pool

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, MeterProvider

SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

# The histograms: OpenTelemetry name, description, the Pool method that reads it.
HISTOGRAMS = (
    ("db.client.connection.wait_time", "The time it took to obtain an open connection from the pool.",
     "wait_histogram"),
    ("db.client.connection.use_time",
     "The time between borrowing a connection and returning it to the pool.", "hold_histogram"),
    ("db.client.connection.create_time", "The time it took to create a new connection.",
     "connect_histogram"),
)


class PoolInstruments:
    """What :func:`instrument` registered for one middleware (or Celery task pool)."""

    def __init__(self, source: Any, meter: metrics.Meter, name: Callable[[str], str]) -> None:
        self.source = source
        self.name = name
        self._guard = _concurrency.new_guard_lock()
        # (alias, method): the per-bucket counts and the sum already recorded.
        self._recorded: dict[tuple[str, str], tuple[list[int], float]] = {}
        self._histograms: list[tuple[Histogram, str]] = [
            (meter.create_histogram(
                name, unit="s", description=description,
                explicit_bucket_boundaries_advisory=list(WAIT_BUCKETS),
            ), method)
            for name, description, method in HISTOGRAMS
        ]
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [self._count], unit="{connection}",
            description="The number of connections that are currently in state described by "
            "the `state` attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [self._setting(MAX_OUTSTANDING)], unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max", [self._setting(SIZE)], unit="{connection}",
            description="The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", [self._setting(WAITING)], unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts", [self._setting(TIMEOUTS)], unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to "
            "obtain a connection from the pool.",
        )

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        self.record_histograms()  # once per collection: this callback runs at every one
        for alias, numbers in self.source.stats().items():
            yield Observation(numbers[IDLE] or 0, {POOL_NAME: self.name(alias), STATE: "idle"})
            yield Observation(numbers[IN_USE] or 0, {POOL_NAME: self.name(alias), STATE: "used"})

    def _setting(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for alias, numbers in self.source.stats().items():
                if numbers.get(key) is not None:  # no cap, no db.client.connection.max
                    yield Observation(numbers[key], {POOL_NAME: self.name(alias)})

        return observe

    def record_histograms(self) -> None:
        """Record into the histograms what the pool counted since the last call."""
        pools: dict[str, Pool[Any]] = self.source.pools()
        for alias, pool in pools.items():
            attributes = {POOL_NAME: self.name(alias)}
            for histogram, method in self._histograms:
                cumulative, seconds, _count = getattr(pool, method)()
                counts = _per_bucket(cumulative)
                with self._guard:  # two collections at once: each event recorded once
                    before, before_seconds = self._recorded.get((alias, method), ([0] * len(counts), 0.0))
                    new = [now - then for now, then in zip(counts, before, strict=True)]
                    if any(n < 0 for n in new):  # a new process (fork): counted from 0 again
                        new, before_seconds = counts, 0.0
                    self._recorded[(alias, method)] = (counts, seconds)
                for value in _values(new, seconds - before_seconds):
                    histogram.record(value, attributes)


def instrument(
    middleware: Any, *, meter_provider: MeterProvider | None = None, name_prefix: str = ""
) -> PoolInstruments:
    """Register ``middleware``'s pool metrics (a :class:`~wsgi_dbpool.PoolingMiddleware`,
    or the ``TaskPool`` of ``pool_tasks``) with ``meter_provider`` (default: the global
    one). Each alias is a pool named ``name_prefix + alias``."""
    from . import __version__

    meter = metrics.get_meter(
        "wsgi_dbpool", __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
    )
    return PoolInstruments(middleware, meter, lambda alias: f"{name_prefix}{alias}")


def _per_bucket(cumulative: list[tuple[float, int]]) -> list[int]:
    """Cumulative (bound, count) pairs, as the pool gives them, back to counts per bucket
    (the first also holds the checkouts that did not wait: 0 s)."""
    counts, below = [], 0
    for _bound, running in cumulative:
        counts.append(running - below)
        below = running
    return counts


def _values(new: list[int], seconds: float) -> list[float]:
    """``sum(new)`` values, ``new[i]`` of them inside bucket ``i`` (``(bound[i-1],
    bound[i]]``, the last one above every bound), adding up to ``seconds``."""
    bounds = (0.0, *WAIT_BUCKETS)
    finite = [(bounds[i], bounds[i + 1], n) for i, n in enumerate(new[:-1]) if n]
    above = new[-1]
    low = sum(lo * n for lo, _hi, n in finite)
    high = sum(hi * n for _lo, hi, n in finite)
    values: list[float] = []
    if above:
        # Values above the last bound: what the others cannot hold, and each above the bound.
        share = max((seconds - high) / above, math.nextafter(WAIT_BUCKETS[-1], math.inf))
        values.extend([share] * above)
        seconds -= share * above
    # Where in each bucket, the same fraction for all: the sum comes out as measured.
    spread = 1.0 if high == low else min(max((seconds - low) / (high - low), 0.0), 1.0)
    for lo, hi, n in finite:
        value = min(max(lo + spread * (hi - lo), math.nextafter(lo, math.inf)), hi)
        values.extend([value] * n)
    return values
