"""Celery workers with ``pool_tasks``: real ``celery worker`` processes, Redis, MariaDB.

The worker runs ``testbed.celery_project`` with ``DJANGO_SETTINGS_MODULE`` set, so Celery's
own Django fixup is active (closing connections around every task), and connects as
the MariaDB user ``celery``: what the server reports for that user is the worker's
doing alone. Every assertion on connections is on what the server reports.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from testbed.celery_harness import USER, CeleryWorker, client_app, create_worker_user, user_connections
from testbed.mariadb import MariaDBServer
from testbed.redis import RedisServer, ensure_installed
from tests.helpers import wait_until

pytestmark = [pytest.mark.mariadb, pytest.mark.celery]  # slow: the tests with a worker

CAP = {"size": 2, "max_outstanding": 3, "timeout": 2, "linger": 0.5, "hold_warning": 1}


# -- the parts --------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    ensure_installed()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(mariadb: MariaDBServer) -> MariaDBServer:
    create_worker_user(mariadb)
    return mariadb


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[Any]:
    app = client_app(redis_server)
    yield app
    # AsyncResults unsubscribe when collected: let that happen while the hub still runs,
    # not at interpreter exit (where gevent refuses, noisily).
    gc.collect()
    app.close()


class Peak:
    """Samples the worker user's server connections in a greenlet; ``peak`` is the most seen."""

    def __init__(self, server: MariaDBServer) -> None:
        self.peak = 0
        self._running = True

        def sample() -> None:
            while self._running:
                self.peak = max(self.peak, server.connection_count(USER))
                gevent.sleep(0.005)

        self._greenlet = gevent.spawn(sample)

    def __enter__(self) -> Peak:
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._greenlet.join(timeout=5)


# -- arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": 0}, ValueError, "size must be at least 1"),
        ({"size": 4, "max_outstanding": 3}, ValueError, "max_outstanding=3 is below size=4"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0"),
        ({"aliases": "default"}, TypeError, "write aliases=\\['default'\\]"),
        ({"linger": None}, TypeError, "linger must be a number of seconds"),
        ({"hold_warning": 0}, ValueError, "hold_warning must be > 0"),
        ({"skip": lambda environ: True}, TypeError, "unexpected keyword argument 'skip'"),
        ({"hold": "statement"}, ValueError, "hold must be one of"),
        ({"prewarm": 5}, ValueError, "prewarm=5 is above size=4"),
        ({"lifetime_jitter": 1}, ValueError, "lifetime_jitter must be >= 0 and < 1"),
        ({"ping_timeout": 0}, ValueError, "ping_timeout must be > 0"),
    ],
    ids=["size-zero", "cap-below-size", "timeout-negative", "aliases-str", "linger-none",
         "hold-warning-zero", "skip-rejected", "hold-unknown", "prewarm-above-size",
         "jitter-one", "ping-timeout-zero"],
)
def test_pool_tasks_checks_arguments_like_the_middleware(django_site, kwargs, error, message):
    from celery import Celery

    from wsgi_dbpool.celery import pool_tasks

    with pytest.raises(error, match=message):
        pool_tasks(Celery("tests.arguments"), **{"aliases": ["default"], **kwargs})


def test_pool_tasks_wants_a_celery_app_once(django_site):
    from celery import Celery

    from wsgi_dbpool.celery import pool_tasks

    with pytest.raises(TypeError, match="app must be a Celery application"):
        pool_tasks("proj.celery", aliases=["default"])
    app = Celery("tests.once")
    pool = pool_tasks(app, aliases=["default"], size=3)
    assert (pool.size, pool.aliases, pool.stats()["default"]["in_use"]) == (3, ("default",), 0)
    with pytest.raises(RuntimeError, match="already called"):
        pool_tasks(app, aliases=["default"])


# -- gevent: one worker for the behaviours, stopped warm at the end --------------------


@pytest.fixture(scope="module")
def gevent_worker(client, server, redis_server, tmp_path_factory) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(client, server, redis_server, tmp_path_factory.mktemp("celery"),
                    "gevent", 50, CAP)
    try:
        yield worker
    finally:
        worker.stop()


def _stats(worker: CeleryWorker) -> dict[str, Any]:
    report = worker.run("pool_stats")
    return dict(report["stats"], fixup=report["fixup"])


@pytest.mark.slow
def test_gevent_burst_never_exceeds_the_cap_and_shrinks_to_size(gevent_worker, server):
    assert _stats(gevent_worker)["fixup"], "Celery's Django fixup should be active in the worker"
    with Peak(server) as connections:
        results = [gevent_worker.send("hold", 0.05) for _ in range(60)]
        ids = [r.get(timeout=30) for r in results]
    assert connections.peak <= CAP["max_outstanding"]
    assert len(set(ids)) <= CAP["max_outstanding"]
    wait_until(lambda: server.connection_count(USER) <= CAP["size"], timeout=5,
               what="the surplus closed after the linger")
    stats = _stats(gevent_worker)
    assert stats["waits"] > 0 and stats["timeouts"] == 0
    assert stats["in_use"] == 1  # pool_stats itself


@pytest.mark.slow
def test_gevent_200_tasks_open_a_handful_of_connections(gevent_worker, server):
    before = server.connections_total()
    results = [gevent_worker.send("connection_id") for _ in range(200)]
    ids = [r.get(timeout=30) for r in results]
    sequential = [gevent_worker.run("connection_id") for _ in range(10)]
    assert len(ids) == 200
    assert server.connections_opened_since(before) <= CAP["max_outstanding"]
    assert len(set(sequential)) == 1  # the fixup's closing around each task touched none of ours


@pytest.mark.slow
def test_gevent_failed_retried_and_rejected_tasks_return_their_connections(gevent_worker):
    before = _stats(gevent_worker)
    failed = gevent_worker.send("fail")
    with pytest.raises(ValueError, match="as asked"):
        failed.get(timeout=30)
    assert gevent_worker.run("retry_once")[1] == 1
    rejected = gevent_worker.send("reject")
    wait_until(lambda: f"{rejected.id}] rejected" in gevent_worker.log()
               or "Reject" in gevent_worker.log(), timeout=10, what="the rejected task ran")
    after = _stats(gevent_worker)
    assert after["in_use"] == 1 and after["waiting"] == 0
    assert after["checkouts"] - before["checkouts"] >= 5  # fail, retry_once twice, reject, stats


@pytest.mark.slow
def test_gevent_open_transaction_is_rolled_back(gevent_worker, server):
    name = uuid.uuid4().hex[:12]
    dirty_before = _stats(gevent_worker)["dirty"]
    gevent_worker.run("leave_transaction_open", name)
    for _ in range(3):
        _, autocommit, rows, django_autocommit = gevent_worker.run("autocommit_and_rows", name)
        assert (autocommit, rows, django_autocommit) == (1, 0, True)
    assert server.admin_query("SELECT COUNT(*) FROM app.items WHERE name = %s", [name])[0][0] == 0
    assert _stats(gevent_worker)["dirty"] == dirty_before + 1


def _sleeping_ids(server: MariaDBServer) -> set[int]:
    return {row["id"] for row in server.processlist(USER) if "SLEEP(" in (row["info"] or "")}


def _wait_interrupted_queries_ended(server: MariaDBServer) -> None:
    """The server counts an interrupted client in ``Aborted_clients`` only when the
    query it left behind ends (SLEEP ends, the write fails): wait for that."""
    wait_until(lambda: not _sleeping_ids(server), timeout=5, what="interrupted queries ended")


@pytest.mark.slow
def test_gevent_time_limit_and_revoke_close_the_connection(gevent_worker, server):
    before = _stats(gevent_worker)
    limited = gevent_worker.send("hold", 2, time_limit=0.5)
    wait_until(lambda: _sleeping_ids(server), timeout=5, what="the limited query running")
    cut = _sleeping_ids(server)
    with pytest.raises(Exception, match=r"TimeLimitExceeded|Hard time limit"):
        limited.get(timeout=30)
    revoked = gevent_worker.send("hold", 2)
    wait_until(lambda: _sleeping_ids(server) - cut, timeout=5, what="the revoked query running")
    cut |= _sleeping_ids(server)
    gevent_worker.client.control.revoke(revoked.id, terminate=True)
    wait_until(lambda: revoked.state == "REVOKED", timeout=10, what="the task revoked")
    after_ids = [gevent_worker.run("connection_id") for _ in range(10)]
    assert not set(after_ids) & cut  # the interrupted connections were never handed on
    after = _stats(gevent_worker)
    assert after["closed"] - before["closed"] >= 2
    assert after["in_use"] == 1 and after["waiting"] == 0


@pytest.mark.slow
def test_gevent_pool_timeout_fails_the_task_and_autoretry_retries_it(gevent_worker):
    holders = [gevent_worker.send("hold", 3) for _ in range(CAP["max_outstanding"])]
    gevent.sleep(0.3)
    plain = gevent_worker.send("connection_id")
    retrying = gevent_worker.send("connection_id_retrying")
    with pytest.raises(Exception, match="no connection for database alias 'default'"):
        plain.get(timeout=30)
    _, retries = retrying.get(timeout=30)
    assert retries >= 1
    for holder in holders:
        holder.get(timeout=30)
    assert _stats(gevent_worker)["timeouts"] >= 2
    log = gevent_worker.log(tail=20000)
    assert f"task testbed.celery_project.connection_id[{plain.id}] failed: no connection" in log
    assert f"task testbed.celery_project.hold[{holders[0].id}] has held its connections" in log


@pytest.mark.slow
def test_worker_refuses_to_start_with_a_bad_argument(client, server, redis_server, tmp_path):
    with pytest.raises(RuntimeError, match="size must be at least 1, got 0"):
        CeleryWorker(client, server, redis_server, tmp_path, "solo", 1, {"size": 0})


@pytest.mark.slow
def test_gevent_warm_shutdown_closes_idle_connections(gevent_worker, server):
    wait_until(lambda: server.connection_count(USER) > 0, what="an idle pooled connection")
    _wait_interrupted_queries_ended(server)
    aborted = server.status("Aborted_clients")
    assert gevent_worker.stop() == 0
    wait_until(lambda: server.connection_count(USER) == 0, timeout=5, what="connections gone")
    assert server.status("Aborted_clients") == aborted
    assert "idle connection(s) of 'default'" in gevent_worker.log()


# -- the other execution pools -------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "concurrency", "processes"),
    [("threads", 8, 1), ("solo", 1, 1), ("prefork", 2, 2)],
    ids=["threads", "solo", "prefork"],
)
@pytest.mark.slow
def test_other_pools_bound_reuse_and_shut_down_cleanly(
    pool, concurrency, processes, client, server, redis_server, tmp_path
):
    worker = CeleryWorker(client, server, redis_server, tmp_path, pool, concurrency, CAP)
    try:
        before = user_connections(server)
        with Peak(server) as connections:
            results = [worker.send("hold", 0.02) for _ in range(40)]
            [r.get(timeout=30) for r in results]
        assert connections.peak <= CAP["max_outstanding"] * processes
        assert user_connections(server) - before <= CAP["max_outstanding"] * processes
        with pytest.raises(ValueError, match="as asked"):
            worker.send("fail").get(timeout=30)
        assert worker.run("retry_once")[1] == 1
        if pool == "prefork":  # SoftTimeLimitExceeded lands in the middle of the query
            cut = worker.send("hold", 2, soft_time_limit=0.3)
            with pytest.raises(Exception, match="SoftTimeLimitExceeded"):
                cut.get(timeout=30)
        for _ in range(4 * processes):
            assert worker.run("connection_id") > 0  # no "Lost connection", no InterfaceError
        stats = worker.run("pool_stats")["stats"]
        assert stats["in_use"] == 1 and stats["waiting"] == 0
        _wait_interrupted_queries_ended(server)
        aborted = server.status("Aborted_clients")
    finally:
        code = worker.stop()
    assert code == 0
    wait_until(lambda: server.connection_count(USER) == 0, timeout=5, what="connections gone")
    assert server.status("Aborted_clients") == aborted
    # worker_shutdown in the main process; worker_process_shutdown in each prefork child
    assert worker.log_path.read_text().count("idle connection(s) of 'default'") >= processes


@pytest.mark.slow
def test_gevent_tasks_per_transaction_share_the_cap_between_their_queries(
    client, server, redis_server, tmp_path_factory
):
    cap = {**CAP, "hold": "transaction"}
    worker = CeleryWorker(client, server, redis_server, tmp_path_factory.mktemp("celery"),
                          "gevent", 50, cap)
    try:
        with Peak(server) as connections:
            results = [worker.send("query_wait_query", 0.2) for _ in range(40)]
            spans = [r.get(timeout=60) for r in results]
        stats = _stats(worker)
    finally:
        worker.stop()
    assert connections.peak <= cap["max_outstanding"]
    # More tasks ran at once than there are connections: they held one only per query.
    most_at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most_at_once > cap["max_outstanding"]
    assert stats["checkouts"] >= 80 and stats["timeouts"] == 0


# -- under fire: max_hold, and the running workers steered by the command ----------------


def _items(server: MariaDBServer, name: str) -> int:
    return int(server.admin_query("SELECT COUNT(*) FROM app.items WHERE name = %s", [name])[0][0])


def _session_ids(server: MariaDBServer) -> set[int]:
    return {int(row["id"]) for row in server.processlist(USER)}


@pytest.mark.parametrize(("pool", "concurrency"), [("gevent", 10), ("threads", 4)])
@pytest.mark.slow
def test_a_task_stuck_past_max_hold_is_taken_back(
    pool, concurrency, client, server, redis_server, tmp_path
):
    settings = {"size": 1, "max_outstanding": 1, "timeout": 30, "max_hold": 1}
    server.kill_user(USER)
    worker = CeleryWorker(client, server, redis_server, tmp_path, pool, concurrency, settings)
    try:
        name = f"stuck-{uuid.uuid4().hex[:8]}"
        stuck = worker.send("stuck_in_transaction", name, 8)
        wait_until(lambda: len(_session_ids(server)) == 1, timeout=20, what="the stuck session")
        (stuck_session,) = _session_ids(server)
        # Cap 1: this task is served only once the stuck one's slot is taken back.
        served = worker.send("connection_id").get(timeout=30)
        assert not stuck.ready()  # served while the stuck task still holds its wrapper
        assert served != stuck_session
        wait_until(lambda: stuck_session not in _session_ids(server), what="the session ended")
        assert _items(server, name) == 0  # its uncommitted INSERT rolled back with the session
        with pytest.raises(Exception, match=r"max_hold=1s took back"):
            stuck.get(timeout=30)  # its next statement was refused
        assert _items(server, name) == 0  # nothing committed half-way
        stats = worker.run("pool_stats")["stats"]
        assert (stats["taken_back"], stats["in_use"], stats["waiting"]) == (1, 1, 0)
        assert len(_session_ids(server)) == 1  # the slot released once: one connection
    finally:
        assert worker.stop() == 0
    log = worker.log(tail=20000)
    assert f"by task testbed.celery_project.stuck_in_transaction[{stuck.id}]" in log, log


def _control(command: str, pid: int) -> Any:
    import subprocess
    import sys

    from testbed.servers import ROOT, child_env

    return subprocess.run(
        [sys.executable, "-m", "wsgi_dbpool", command, "--pid", str(pid), "--timeout", "20"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(("pool", "concurrency", "processes"),
                         [("gevent", 10, 1), ("threads", 4, 1), ("prefork", 2, 2)])
@pytest.mark.slow
def test_the_command_drains_pauses_and_resumes_a_running_worker(
    pool, concurrency, processes, client, server, redis_server, tmp_path
):
    from wsgi_dbpool.control import CONTROL_SIGNAL, _catches, _children

    settings = {"size": 2, "max_outstanding": 2, "timeout": 30}
    server.kill_user(USER)
    worker = CeleryWorker(client, server, redis_server, tmp_path, pool, concurrency, settings)
    pid = worker.process.pid
    try:
        # The worker's main pid, as `celery worker --pidfile` writes it: the prefork
        # children are reached through it (their handlers are installed as they start,
        # before their first task), the gevent/threads worker is signalled itself.
        before = {worker.run("connection_id") for _ in range(4 * processes)}
        drained = _control("drain", pid)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert f"applied by {processes} process(es)" in drained.stdout, drained.stdout
        wait_until(lambda: not _session_ids(server) & before,
                   what="every connection from before the drain closed")
        after = {worker.run("connection_id") for _ in range(4 * processes)}
        assert not after & before  # every server connection is new

        name = f"paused-{uuid.uuid4().hex[:8]}"
        paused = _control("pause", pid)
        assert paused.returncode == 0, paused.stdout + paused.stderr
        assert f"applied by {processes} process(es)" in paused.stdout, paused.stdout
        inserts = [worker.send("insert_item", name) for _ in range(3)]
        gevent.sleep(1.5)
        assert _items(server, name) == 0  # no statement ran while paused
        assert not any(result.ready() for result in inserts)  # waiting, none refused
        resumed = _control("resume", pid)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        for result in inserts:
            assert result.get(timeout=30) > 0
        assert _items(server, name) == 3
        assert worker.process.poll() is None  # steered, not restarted
        if pool == "prefork":  # the handlers in the children that run the tasks only
            assert not _catches(pid, CONTROL_SIGNAL)
            assert all(_catches(child, CONTROL_SIGNAL) for child in _children(pid))
    finally:
        assert worker.stop() == 0
