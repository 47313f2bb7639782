"""Scale-out through PgBouncer in transaction mode: three gunicorn workers, each with its
own pool (max_outstanding 10), hold more client connections than the PostgreSQL server would accept, and the
server still sees no more than PgBouncer's pool."""

from __future__ import annotations

import gevent
import pytest

from tests.helpers import get, gunicorn


@pytest.mark.slow  # version-agnostic and long: once, on the newest Django
def test_three_workers_through_pgbouncer_on_a_small_server(pgbouncer):
    small = pgbouncer.server
    # Each worker may hold 10 client connections: even one busy worker alone has more
    # than the server's 7, whichever way gunicorn spreads the requests.
    with gunicorn(None, "-w", "3", "--worker-connections", "200",
                  TEST_PGBOUNCER_PORT=str(pgbouncer.port), TEST_POOL_MAX_OUTSTANDING="10") as (address, _):
        peak_server = peak_clients = 0
        jobs = [gevent.spawn(get, address, "/b/sleep/100/", timeout=60) for _ in range(150)]
        while not all(job.ready() for job in jobs):
            peak_server = max(peak_server, small.connection_count("app"))
            peak_clients = max(peak_clients, pgbouncer.clients())
            gevent.sleep(0.02)
        statuses = [job.value.status for job in jobs]
        backends = {job.value.json()["id"] for job in jobs}
    assert statuses == [200] * 150
    assert peak_clients > 7  # more client connections than the server allows ...
    assert 0 < peak_server <= 4  # ... yet the server saw only PgBouncer's pool
    assert len(backends) <= 4
