"""``max_hold`` with plain threads, no gevent anywhere: the timer is a real thread, and the
holder's return races the take-back across threads (tests/test_max_hold.py)."""

from __future__ import annotations

import json
import sys
import threading
import time

assert "gevent" not in sys.modules

from tests._proc_common import connection_id, setup_django  # noqa: E402

setup_django()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from wsgi_dbpool import PoolingMiddleware  # noqa: E402

app = PoolingMiddleware(get_wsgi_application(), size=1, max_outstanding=1, timeout=20, max_hold=0.5)
report: dict[str, object] = {}
let_go = threading.Event()


def holder() -> None:
    try:
        with app.checkout(), transaction.atomic():
            report["held"] = connection_id()
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO items (name) VALUES ('threads')")
            let_go.wait(timeout=20)
            connection_id()
    except Exception as exc:
        report["holder_error"] = str(exc)


def waiter() -> None:
    with app.checkout():
        report["served"] = connection_id()
        report["holder_waiting_when_served"] = not let_go.is_set()


first = threading.Thread(target=holder)
first.start()
while "held" not in report:
    time.sleep(0.01)
second = threading.Thread(target=waiter)
second.start()
second.join(timeout=20)
let_go.set()
first.join(timeout=20)
with app.checkout():
    report["after"] = connection_id()
report["stats"] = app.stats()["default"]
print(json.dumps(report))
assert "gevent" not in sys.modules
