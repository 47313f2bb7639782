"""The Celery app of the Celery tests (and ``bench.celery``): a Django project's ``celery.py``.

``celery -A testbed.celery_project worker``, with ``DJANGO_SETTINGS_MODULE`` set to
``testbed.celery_settings`` and, from the environment: ``TEST_REDIS_URL`` (broker and
results), ``TEST_MARIADB_PORT``, and ``TEST_POOL_TASKS``, the ``pool_tasks()`` keyword
arguments as JSON (unset or ``"off"``: no pool, Celery's Django fixup alone).
"""

from __future__ import annotations

import json
import logging
import os
import time

import pymysql
from celery import Celery

from wsgi_dbpool import PoolTimeout

pymysql.install_as_MySQLdb()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.celery_settings")

app = Celery("testbed.celery_project")
app.conf.update(
    broker_url=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=False,
    worker_prefetch_multiplier=50,
)

logging.getLogger("wsgi_dbpool").setLevel(os.environ.get("TEST_POOL_LOG_LEVEL", "INFO"))
_POOL_TASKS = os.environ.get("TEST_POOL_TASKS", "off")
pool = None
if _POOL_TASKS != "off":
    from wsgi_dbpool.celery import pool_tasks

    pool = pool_tasks(app, **json.loads(_POOL_TASKS))


def _one(sql: str, args: list[object] | None = None) -> tuple[object, ...]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        return tuple(cursor.fetchone())


def _connection_id() -> int:
    return int(_one("SELECT CONNECTION_ID()")[0])


@app.task
def connection_id() -> int:
    """The server connection the task ran on."""
    return _connection_id()


@app.task
def hold(seconds: float) -> int:
    """A query that keeps the server busy ``seconds`` (a time limit lands inside it)."""
    return int(_one("SELECT CONNECTION_ID(), SLEEP(%s)", [seconds])[0])


@app.task
def query_then_wait(seconds: float) -> int:
    """The benchmark's task: one query, then ``seconds`` of other I/O."""
    found = int(_one("SELECT CONNECTION_ID()")[0])
    time.sleep(seconds)  # cooperative under -P gevent: Celery patched time
    return found


@app.task
def query_wait_query(seconds: float) -> list[float]:
    """A query, ``seconds`` waiting on something else, a query: when the task ran."""
    started = time.monotonic()
    _connection_id()
    time.sleep(seconds)
    _connection_id()
    return [started, time.monotonic()]


@app.task
def fail() -> None:
    _connection_id()
    raise ValueError("the task failed, as asked")


@app.task(bind=True, max_retries=3)
def retry_once(self) -> list[int]:
    found = _connection_id()
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return [found, self.request.retries]


@app.task(bind=True)
def reject(self) -> None:
    from celery.exceptions import Reject

    _connection_id()
    raise Reject("rejected, as asked", requeue=False)


@app.task(bind=True, autoretry_for=(PoolTimeout,), retry_kwargs={"max_retries": 5, "countdown": 0.2})
def connection_id_retrying(self) -> list[int]:
    """Retried by Celery when the pool times out."""
    return [_connection_id(), self.request.retries]


@app.task
def leave_transaction_open(name: str) -> list[object]:
    """Autocommit off and an uncommitted row: the pool must roll it back on return."""
    from django.db import connection

    connection.set_autocommit(False)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO app.items (name) VALUES (%s)", [name])
        cursor.execute("SELECT CONNECTION_ID()")
        return [int(cursor.fetchone()[0])]


@app.task
def autocommit_and_rows(name: str) -> list[object]:
    from django.db import connection

    found = _one("SELECT CONNECTION_ID(), @@autocommit")
    # Not in one statement: MariaDB answers @@autocommit = 0 beside an aggregate.
    rows = _one("SELECT COUNT(*) FROM app.items WHERE name = %s", [name])
    return [int(found[0]), int(found[1]), int(rows[0]), connection.get_autocommit()]


@app.task
def pool_stats() -> dict[str, object]:
    """This worker process's pid and pool, and whether Celery's Django fixup is active."""
    import weakref

    from celery import signals

    fixup = []
    for signal in (signals.task_prerun, signals.task_postrun):
        for _, receiver in signal.receivers:
            if isinstance(receiver, weakref.ReferenceType):
                receiver = receiver()
            fixup.append(getattr(receiver, "__qualname__", ""))
    return {
        "pid": os.getpid(),
        "stats": pool.stats()["default"] if pool is not None else None,
        "fixup": sorted(name for name in fixup if "DjangoWorkerFixup" in name),
    }


@app.task
def stuck_in_transaction(name: str, seconds: float) -> int:
    """INSERTs a row inside ``atomic()``, then holds the connection ``seconds`` doing
    nothing (a task stuck on something else), then one more statement and the commit."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO app.items (name) VALUES (%s)", [name])
        time.sleep(seconds)  # cooperative under -P gevent
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


@app.task
def insert_item(name: str) -> int:
    """One row written (autocommit): the pause tests count them on the server."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO app.items (name) VALUES (%s)", [name])
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])
