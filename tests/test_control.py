"""``python -m wsgi_dbpool drain|pause|resume --pid``: every worker of a running gunicorn
steered without a restart, with and without ``--preload``.

The server's account decides: ``CONNECTION_ID()``s before and after a drain, across the
three workers (``/worker/`` answers with its pid and its connection), and rows written
while paused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import gevent
import pytest

from testbed.servers import ROOT, child_env
from tests.helpers import get, gunicorn, wait_until
from wsgi_dbpool.control import CONTROL_SIGNAL, _catches, _children


def control(command: str, pid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgi_dbpool", command, "--pid", str(pid), "--timeout", "20"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )


def by_workers(address: str, workers: int) -> set[int]:
    return set(by_worker(address, workers=workers))


def by_worker(address: str, rounds: int = 200, workers: int = 3) -> dict[int, set[int]]:
    """Until all ``workers`` answered: each worker's pid and the connections it used."""
    seen: dict[int, set[int]] = {}
    for _ in range(rounds):
        jobs = [gevent.spawn(get, address, "/twice/") for _ in range(12)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        for job in jobs:
            assert job.value.status == 200, job.value.body[-300:]
            body = job.value.json()
            seen.setdefault(body["pid"], set()).update((body["first"], body["second"]))
        if len(seen) == workers:
            return seen
    raise AssertionError(f"only {len(seen)} workers answered")


@pytest.mark.parametrize(("worker_class", "preload"), [
    ("gevent", False), ("gevent", True), ("sync", True),
], ids=["gevent", "gevent-preload", "sync-preload"])
def test_drain_pause_resume_every_worker_of_a_running_gunicorn(db, worker_class, preload):
    args = ["-w", "3", "-k", worker_class, *(["--preload"] if preload else [])]
    with gunicorn(db, *args) as (address, process):
        before = by_worker(address)
        before_ids = set().union(*before.values())
        assert before_ids <= {row["id"] for row in db.processlist("app")}
        # Drain under load: nothing fails, and afterwards every worker runs on new connections.
        statuses: list[int] = []
        running = True

        def client() -> None:
            while running:
                statuses.append(get(address, "/twice/").status)

        clients = [gevent.spawn(client) for _ in range(6)]
        try:
            gevent.sleep(0.3)
            drained = control("drain", process.pid)
            assert drained.returncode == 0, drained.stdout + drained.stderr
            assert "applied by 3 process(es)" in drained.stdout
            gevent.sleep(0.3)
        finally:
            running = False
            gevent.joinall(clients, timeout=30, raise_error=True)
        assert statuses and set(statuses) == {200}  # 0 errors
        wait_until(lambda: not {row["id"] for row in db.processlist("app")} & before_ids,
                   what="every connection from before the drain closed")
        after = by_worker(address)
        assert set(after) == set(before)  # the same three workers: no restart
        assert not set().union(*after.values()) & before_ids  # every connection new, in each
        # Connections in use at the drain were closed on return, not cut: the 0 errors above.
        # (A PROCESSLIST read just after the drain, once asserted non-empty here, can find
        # none at all: idle ones closed, busy ones returned, new ones not yet open; seen in CI.)

        # Pause: no statement runs in any worker until resume, then every request is served.
        def rows() -> int:
            return int(db.admin_query("SELECT COUNT(*) FROM app.items")[0][0])

        paused = control("pause", process.pid)
        assert paused.returncode == 0 and "applied by 3 process(es)" in paused.stdout, paused
        start_rows = rows()
        inserts = [gevent.spawn(get, address, f"/insert/?name=p{i}") for i in range(9)]
        gevent.sleep(1.5)
        assert rows() == start_rows  # nothing written while paused
        assert not any(job.ready() for job in inserts)  # all waiting, none refused
        resumed = control("resume", process.pid)
        assert resumed.returncode == 0 and "applied by 3 process(es)" in resumed.stdout, resumed
        gevent.joinall(inserts, timeout=30, raise_error=True)
        assert [job.value.status for job in inserts] == [200] * 9
        assert rows() == start_rows + 9
        assert process.poll() is None  # the master, never signalled, still runs
        assert not _catches(process.pid, CONTROL_SIGNAL)  # handlers in the workers only


def test_a_worker_started_while_paused_starts_paused(db):
    def rows() -> int:
        return int(db.admin_query("SELECT COUNT(*) FROM app.items")[0][0])

    with gunicorn(db, "-w", "1") as (address, process):
        (old,) = by_workers(address, 1)
        assert control("pause", process.pid).returncode == 0
        os.kill(old, signal.SIGKILL)  # gunicorn starts another worker
        wait_until(lambda: _children(process.pid) not in ([], [old]), timeout=30,
                   what="a new worker")
        insert = gevent.spawn(get, address, "/insert/?name=late")
        gevent.sleep(1.5)
        assert rows() == 0 and not insert.ready()  # it read the control file: paused
        resumed = control("resume", process.pid)
        assert "applied by 1 process(es)" in resumed.stdout, resumed
        assert insert.get(timeout=30).status == 200
        assert rows() == 1


def test_the_command_refuses_an_unknown_pid_and_keeps_plan():
    missing = control("drain", 2**22 + 12345)
    assert missing.returncode == 2 and "no process" in missing.stderr
    usage = subprocess.run([sys.executable, "-m", "wsgi_dbpool"], cwd=ROOT, env=child_env(),
                           capture_output=True, text=True, timeout=60, check=False)
    assert "drain|pause|resume --pid" in usage.stderr and "plan" in usage.stderr


def test_a_process_that_never_served_is_not_signalled(tmp_path: Any):
    # A child that catches nothing: a real-time signal would kill it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_until(lambda: child.pid > 0, what="started")
        result = control("drain", child.pid)
        assert result.returncode == 0, result.stderr
        assert "applied by 0 process(es)" in result.stdout and str(child.pid) in result.stdout
        time.sleep(0.2)
        assert child.poll() is None  # still alive
    finally:
        child.kill()
        child.wait()
