"""Behaviour 7 and plain threads: fork safety, --preload ordering, no gevent at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from testbed.servers import PeakSampler
from tests.helpers import call, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, db, *, timeout: float = 60) -> dict:
    env = {**os.environ, "TEST_MARIADB_PORT": str(db.port), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_forked_child_never_touches_inherited_connections(make_app, db, tmp_path):
    app = make_app(size=1)
    parent_id = json.loads(call(app, "/id/")[2])["id"]
    report = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked from a --preload master
        try:
            body = call(app, "/id/")[2]
            stats = app.stats()["default"]
            report.write_text(json.dumps({"id": json.loads(body)["id"], "stats": stats}))
            app.close()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, "the forked child did not finish"
        time.sleep(0.05)
    child = json.loads(report.read_text())
    assert child["id"] != parent_id
    assert child["stats"]["opened"] == 1 and child["stats"]["checkouts"] == 1
    # The parent's session survived the child: same server connection, still there.
    assert json.loads(call(app, "/id/")[2])["id"] == parent_id
    ids = {row["id"] for row in db.processlist("app")}
    assert parent_id in ids and child["id"] not in ids


def test_preload_builds_before_gevent_patches(db):
    result = _run("tests.proc_preload", db)
    first, second, third = result["ids"]
    assert first != second  # two greenlets, two connections: the binding is per greenlet
    assert third in (first, second)  # the third waited and reused one
    assert result["elapsed"] < 1.2  # the first two overlapped: 0.4 s each, 2 at a time
    assert result["ticks"] >= 40  # the waiting greenlet never blocked the hub
    wait_until(lambda: db.connection_count("app") == 0, what="subprocess connections gone")


def test_plain_threads_without_gevent(db):
    with PeakSampler(db, every=0.01) as connections:
        result = _run("tests.proc_threads", db)
    peak = connections.peak
    assert result["errors"] == []
    assert len(result["ids"]) == 24
    assert len(set(result["ids"])) <= 3
    assert peak <= 3
    assert result["stats"]["in_use"] == 0 and result["stats"]["idle"] <= 2
