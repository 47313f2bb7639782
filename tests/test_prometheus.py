"""The prometheus extra: scraped in the real exposition format, one process and several."""

from __future__ import annotations

import gevent
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import get, gunicorn, serve, wait_until


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_collector_exports_what_stats_says(make_app, db):
    from wsgi_dbpool.prometheus import register

    app = make_app(size=1, max_outstanding=1, timeout=5)
    registry = CollectorRegistry()
    register(app, registry)
    with serve(app) as address:
        jobs = [gevent.spawn(get, address, "/sleep/50/") for _ in range(4)]  # three must wait
        gevent.joinall(jobs, timeout=20, raise_error=True)
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
    samples = scrape(generate_latest(registry).decode())
    stats = app.stats()["default"]
    alias = (("alias", "default"),)
    assert samples[("wsgi_dbpool_checkouts_total", alias)] == stats["checkouts"] == 4
    assert samples[("wsgi_dbpool_opened_total", alias)] == stats["opened"] == 1
    assert samples[("wsgi_dbpool_idle", alias)] == 1 == db.connection_count("app")
    assert samples[("wsgi_dbpool_in_use", alias)] == 0
    assert samples[("wsgi_dbpool_max_outstanding", alias)] == 1
    assert samples[("wsgi_dbpool_wait_seconds_count", alias)] == 4
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items() if name == "wsgi_dbpool_wait_seconds_bucket"
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and counts[-1] == 4  # cumulative, +Inf holds them all
    assert dict(buckets)[0.001] <= 1  # only the first request got its connection at once
    assert samples[("wsgi_dbpool_wait_seconds_sum", alias)] > 0.05  # the others waited


def test_multiprocess_workers_add_up(db, tmp_path):
    with gunicorn(db, "-w", "2", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)) as (address, _):
        jobs = [gevent.spawn(get, address, "/id/") for _ in range(20)]
        gevent.joinall(jobs, timeout=20, raise_error=True)
        assert all(job.value.status == 200 for job in jobs)

        def settled() -> tuple[float, float]:
            samples = scrape(get(address, "/metrics/").body.decode())
            return (samples.get(("wsgi_dbpool_checkouts_total", (("alias", "default"),)), 0),
                    samples.get(("wsgi_dbpool_in_use", (("alias", "default"),)), -1))

        # A checkout counts when taken, in_use drops when the server closes the response,
        # after the client has its body: a loaded machine scraped in between once (in_use 2).
        wait_until(lambda: settled() == (20, 0), timeout=20, state=settled,
                   what="both workers' checkouts summed, every connection back")
        samples = scrape(get(address, "/metrics/").body.decode())
        idle = samples[("wsgi_dbpool_idle", (("alias", "default"),))]
        assert samples[("wsgi_dbpool_in_use", (("alias", "default"),))] == 0
        assert idle == db.connection_count("app")  # what the server sees, summed over workers
