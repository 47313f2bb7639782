"""Plain threads, no gevent anywhere: the pool must bound and serve them too."""

from __future__ import annotations

import json
import sys
import threading

assert "gevent" not in sys.modules

from tests._proc_common import hold, setup_django  # noqa: E402

setup_django()

from django.core.wsgi import get_wsgi_application  # noqa: E402

from wsgi_dbpool import PoolingMiddleware  # noqa: E402

app = PoolingMiddleware(
    get_wsgi_application(), size=2, max_outstanding=3, timeout=20, linger=0.2
)
ids: list[int] = []
errors: list[str] = []


def job() -> None:
    try:
        with app.checkout():
            ids.append(hold(0.05))
    except Exception as exc:  # reported to the test
        errors.append(repr(exc))


threads = [threading.Thread(target=job) for _ in range(24)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=30)
import time  # noqa: E402

time.sleep(0.6)  # the linger timer (a real thread here) closes what is over size
print(json.dumps({"ids": ids, "errors": errors, "stats": app.stats()["default"]}))
assert "gevent" not in sys.modules
