"""The OpenTelemetry extra: the database-client pool metrics through the metrics API, read
back with the SDK's in-memory reader while a real server is under load."""

from __future__ import annotations

import subprocess
import sys

import gevent
import pytest

from tests.helpers import get, serve, wait_until

pytest.importorskip("opentelemetry.sdk.metrics")


def collect(reader):
    """{metric name: [data points]} of one collection."""
    found = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def point(points, state=None):
    """The one data point of pool 'default' (in ``state``, for the count)."""
    wanted = {"db.client.connection.pool.name": "default"}
    if state is not None:
        wanted["db.client.connection.state"] = state
    [only] = [p for p in points if dict(p.attributes) == wanted]
    return only


def test_pool_metrics_under_load_match_the_pool_and_the_server(make_app, db):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from wsgi_dbpool import otel
    from wsgi_dbpool.pool import WAIT_BUCKETS

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    app = make_app(size=2, max_outstanding=3, timeout=0.5, linger=0)
    otel.instrument(app, meter_provider=provider)
    with serve(app) as address:
        jobs = [gevent.spawn(get, address, "/sleep/300/", timeout=20) for _ in range(12)]
        wait_until(lambda: app.stats()["default"]["waiting"] >= 5, timeout=10, what="a queue")
        # The server's count: all three connected and sleeping.
        wait_until(lambda: db.connection_count("app") == 3, timeout=5, what="three on the server")
        during = collect(reader)
        in_use = db.connection_count("app")
        gevent.joinall(jobs, timeout=30, raise_error=True)
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="every connection back")
        after = collect(reader)
        idle_on_server = db.connection_count("app")
    stats = app.stats()["default"]
    statuses = [job.value.status for job in jobs]
    served = statuses.count(200)
    ids = {job.value.json()["id"] for job in jobs if job.value.status == 200}

    # While loaded: three used (what the server holds), the rest pending.
    assert point(during["db.client.connection.count"], state="used").value == 3 == in_use
    assert point(during["db.client.connection.pending_requests"]).value >= 5
    assert point(during["db.client.connection.max"]).value == 3
    assert point(during["db.client.connection.idle.max"]).value == 2
    # After: the timeouts are the 503s the clients got; idle is what the server still holds.
    assert statuses.count(503) > 0 and served + statuses.count(503) == 12
    assert point(after["db.client.connection.timeouts"]).value == statuses.count(503)
    assert point(after["db.client.connection.count"], state="idle").value == idle_on_server == 2
    assert point(after["db.client.connection.count"], state="used").value == 0
    assert point(after["db.client.connection.pending_requests"]).value == 0
    # Histograms: every connect, checkout and return, once, in the pool's buckets.
    create = point(after["db.client.connection.create_time"])
    assert create.count == stats["connects"] == stats["opened"] == len(ids) == 3
    assert create.sum == pytest.approx(stats["connect_seconds"], abs=1e-5)
    wait = point(after["db.client.connection.wait_time"])
    assert wait.count == 12 == stats["checkouts"] + stats["timeouts"]
    assert wait.sum == pytest.approx(stats["wait_seconds"], abs=1e-5)
    assert list(wait.explicit_bounds) == list(WAIT_BUCKETS)
    pool_buckets = [c for c in _per_bucket(app.pools()["default"].wait_histogram()[0])]
    assert list(wait.bucket_counts) == pool_buckets
    use = point(after["db.client.connection.use_time"])
    assert use.count == served
    assert use.sum == pytest.approx(stats["hold_seconds"], abs=1e-5)
    assert use.min > 0.25  # each held >= 300 ms: in the (0.25, 0.5] bucket, where its value is put

    # A later collection adds nothing that did not happen (each event recorded once).
    again = collect(reader)
    assert point(again["db.client.connection.wait_time"]).count == 12
    assert point(again["db.client.connection.create_time"]).count == 3
    provider.shutdown()


def _per_bucket(cumulative):
    counts, below = [], 0
    for _bound, running in cumulative:
        counts.append(running - below)
        below = running
    return counts


@pytest.mark.parametrize("seed", range(5))
def test_replayed_values_keep_the_pools_buckets_and_sum(seed):
    import bisect
    import random

    from wsgi_dbpool.otel import _values
    from wsgi_dbpool.pool import WAIT_BUCKETS

    rng = random.Random(seed)
    measured = [rng.choice([0.0, rng.uniform(0, 0.001), rng.expovariate(5), rng.uniform(30, 90)])
                for _ in range(rng.randint(1, 300))]
    buckets = [0] * (len(WAIT_BUCKETS) + 1)
    for value in measured:
        buckets[bisect.bisect_left(WAIT_BUCKETS, value)] += 1  # as the pool counts
    replayed = _values(buckets, sum(measured))
    again = [0] * len(buckets)
    for value in replayed:
        again[bisect.bisect_left(WAIT_BUCKETS, value)] += 1
    assert again == buckets
    assert sum(replayed) == pytest.approx(sum(measured), rel=1e-9, abs=1e-9)


def test_the_core_does_not_import_opentelemetry():
    code = (
        "import sys, wsgi_dbpool, wsgi_dbpool.middleware, wsgi_dbpool.celery, wsgi_dbpool.checks; "
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
