"""gunicorn --preload in miniature: build the middleware, *then* let gevent patch.

Prints one JSON line: the connection ids two concurrent greenlets saw, how long the
pair took, and whether a third greenlet's wait at the cap let a ticker run.
"""

from __future__ import annotations

import json

from tests._proc_common import connection_id, hold, setup_django

setup_django()

from django.core.wsgi import get_wsgi_application  # noqa: E402

from wsgi_dbpool import PoolingMiddleware  # noqa: E402

app = PoolingMiddleware(get_wsgi_application(), size=2, max_outstanding=2, timeout=5)

from gevent import monkey  # noqa: E402

monkey.patch_all()

import time  # noqa: E402

import gevent  # noqa: E402

from tests.helpers import Ticker  # noqa: E402


def job() -> int:
    with app.checkout():
        first = connection_id()
        gevent.sleep(0.1)  # let the other greenlets bind theirs meanwhile
        second = hold(0.3)
        assert first == second, "a greenlet saw another greenlet's connection"
        return second


with Ticker() as ticker:
    started = time.monotonic()
    jobs = [gevent.spawn(job) for _ in range(3)]  # the third waits for a slot
    gevent.joinall(jobs, timeout=20, raise_error=True)
    elapsed = time.monotonic() - started
print(json.dumps({"ids": [j.value for j in jobs], "elapsed": elapsed, "ticks": ticker.ticks}))
