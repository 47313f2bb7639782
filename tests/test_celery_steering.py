"""``pool_tasks``'s pool steered while tasks run: ``resize``, ``pause``/``resume``, ``drain``.

The tasks run in this process (``Task.apply``: Celery's own tracer, no broker), wrapped by
``TaskPool.wrap_tasks`` as the worker does at start; every assertion is on what MariaDB
reports (PROCESSLIST, ``CONNECTION_ID()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from testbed.mariadb import MariaDBServer
from tests.helpers import wait_until

pytestmark = [pytest.mark.mariadb, pytest.mark.celery]


def _sleeping(server: MariaDBServer) -> int:
    return sum(1 for row in server.processlist("app") if "SLEEP(" in (row["info"] or ""))


@pytest.fixture
def tasks(db: MariaDBServer) -> Iterator[tuple[Any, Any]]:
    pytest.importorskip("celery")
    from celery import Celery
    from django.db import connection

    from wsgi_dbpool.celery import pool_tasks

    app = Celery("tests.steering")
    pool = pool_tasks(app, aliases=["default"], size=1, max_outstanding=1, timeout=60)

    @app.task(name="tests.steering.hold")
    def hold(seconds: float) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID(), SLEEP(%s)", [seconds])
            return int(cursor.fetchone()[0])

    assert pool.wrap_tasks() == 1
    try:
        yield pool, hold
    finally:
        wait_until(lambda: pool.stats()["default"]["in_use"] == 0, what="every task done")
        pool.close()


def test_task_pool_resize_pause_resume_drain(tasks, db):
    pool, hold = tasks
    # Cap 1: two tasks at once run one after the other.
    running = [gevent.spawn(hold.apply, args=(0.5,)) for _ in range(2)]
    wait_until(lambda: _sleeping(db) == 1, what="the first task's query")
    wait_until(lambda: pool.stats()["default"]["waiting"] == 1, what="the second task waiting")
    assert _sleeping(db) == 1  # the server runs one at a time
    gevent.joinall(running, raise_error=True)
    first = {g.value.get() for g in running}
    assert len(first) == 1  # one server connection served both

    # resize: cap 2, both at once on the server.
    pool.resize(max_outstanding=2)
    assert pool.stats()["default"]["max_outstanding"] == 2
    running = [gevent.spawn(hold.apply, args=(1,)) for _ in range(2)]
    wait_until(lambda: _sleeping(db) == 2, what="two tasks' queries at once")
    gevent.joinall(running, raise_error=True)

    # pause: a task waits, no query reaches the server until resume().
    pool.pause()
    waiting = gevent.spawn(hold.apply, args=(0,))
    wait_until(lambda: pool.stats()["default"]["waiting"] == 1, what="the task waiting")
    assert pool.stats()["default"]["paused"] == 1
    pool.resume()
    waiting.join(timeout=30)
    assert waiting.successful() and waiting.value.successful()

    # drain: the connection the tasks used is closed, the next task gets a new one.
    before = hold.apply(args=(0,)).get()
    pool.drain()
    wait_until(lambda: before not in {row["id"] for row in db.processlist("app")},
               what="the drained connection closed on the server")
    assert hold.apply(args=(0,)).get() != before


def test_a_task_beyond_max_waiting_is_turned_away_at_once_and_says_so(db, caplog):
    import logging

    pytest.importorskip("celery")
    from celery import Celery
    from django.db import connection

    from wsgi_dbpool import TooManyWaiting
    from wsgi_dbpool.celery import pool_tasks

    app = Celery("tests.max_waiting")
    pool = pool_tasks(app, aliases=["default"], size=1, max_outstanding=1, max_waiting=0,
                      timeout=60)

    @app.task(name="tests.max_waiting.hold")
    def hold(seconds: float) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID(), SLEEP(%s)", [seconds])
            return int(cursor.fetchone()[0])

    pool.wrap_tasks()
    caplog.set_level(logging.WARNING, logger="wsgi_dbpool")
    try:
        holder = gevent.spawn(hold.apply, args=(1,))
        wait_until(lambda: _sleeping(db) == 1, what="the first task's query")
        turned_away = hold.apply(args=(0,))
        assert isinstance(turned_away.result, TooManyWaiting)
        assert holder.get(timeout=30).successful()
        (warning,) = [r for r in caplog.records
                      if r.name == "wsgi_dbpool" and "tests.max_waiting.hold[" in r.getMessage()]
        # The log says why: max_waiting, not "within 0.000s" of a timeout it never waited.
        assert "max_waiting" in warning.getMessage() and "0.000s" not in warning.getMessage()
        assert pool.stats()["default"]["rejected"] == 1
    finally:
        wait_until(lambda: pool.stats()["default"]["in_use"] == 0, what="every task done")
        pool.close()
