"""Under real gunicorn gevent workers: graceful stop, --preload with several workers, sendfile."""

from __future__ import annotations

import signal
import time

import gevent
import pytest

from testbed.servers import ROOT
from tests.helpers import get, gunicorn, wait_until


@pytest.mark.parametrize("close_on_exit", [True, False], ids=["worker_exit-closes", "no-hook"])
def test_graceful_stop_and_aborted_connections(db, close_on_exit):
    env = {} if close_on_exit else {"TEST_SKIP_WORKER_EXIT": "1"}
    aborted = db.status("Aborted_clients")
    with gunicorn(db, **env) as (address, process):
        jobs = [gevent.spawn(get, address, "/sleep/50/") for _ in range(4)]
        gevent.joinall(jobs, timeout=20, raise_error=True)
        assert db.connection_count("app") >= 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    wait_until(lambda: db.connection_count("app") == 0, what="connections gone")
    time.sleep(0.2)
    # Without the hook the worker dies with its sockets open: the server counts each as
    # an aborted client. With application.close() in worker_exit, it counts none.
    if close_on_exit:
        assert db.status("Aborted_clients") == aborted
    else:
        assert db.status("Aborted_clients") > aborted


@pytest.mark.parametrize("hold", ["request", "transaction"])
def test_preload_workers_never_share_a_connection(db, hold):
    with gunicorn(db, "--preload", "-w", "2", TEST_POOL_HOLD=hold) as (address, _):
        seen: dict[int, set[int]] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            jobs = [gevent.spawn(get, address, "/twice/") for _ in range(8)]
            gevent.joinall(jobs, timeout=20, raise_error=True)
            for job in jobs:
                # 500 here: a greenlet was handed another greenlet's connection mid-request
                assert job.value.status == 200, job.value.body[-300:]
                body = job.value.json()
                if hold == "request":  # one connection for the whole request
                    assert body["first"] == body["second"]
                seen.setdefault(body["pid"], set()).update((body["first"], body["second"]))
        server_ids = {row["id"] for row in db.processlist("app")}
    assert len(seen) == 2, "both workers should have answered"
    first, second = seen.values()
    assert not first & second  # no server connection is used by both processes
    assert first | second <= server_ids  # each id a live session of its own on the server


def test_file_response_keeps_sendfile_and_returns_the_connection(db, tmp_path):
    log = tmp_path / "sendfile.log"
    with gunicorn(db, SENDFILE_LOG=str(log)) as (address, _):
        response = get(address, "/download/")
        assert response.status == 200
        assert response.body == (ROOT / "tests" / "site.py").read_bytes()
        ids = {get(address, "/id/").json()["id"] for _ in range(5)}
    assert log.read_text().split()[1] == "True"  # gunicorn took the sendfile() path
    assert len(ids) == 1  # and the download's connection came back to the pool
