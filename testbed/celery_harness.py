"""A real ``celery worker`` for ``testbed.celery_project``: used by the Celery tests and ``bench.celery``.

The worker connects to MariaDB as a user of its own (:data:`USER`), so what the server
reports for that user is the worker's doing alone. It is started as a subprocess on a
queue of its own and stopped by PID with ``SIGTERM`` (Celery's warm shutdown).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from testbed.mariadb import MariaDBServer
from testbed.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
USER = "celery"
TASK = "testbed.celery_project."


def create_worker_user(server: MariaDBServer) -> None:
    """The MariaDB user the workers connect as; none of its connections left over."""
    for statement in (
        f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{USER}'",
        f"GRANT ALL ON app.* TO '{USER}'@'127.0.0.1'",
        "CREATE TABLE IF NOT EXISTS app.items "
        "(id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB",
    ):
        server.admin_query(statement)
    server.kill_user(USER)


def client_app(redis_server: RedisServer) -> Any:
    """A bare Celery app that sends tasks by name and reads their results."""
    from celery import Celery

    app = Celery("tests.client", broker=redis_server.url, backend=redis_server.url)
    app.conf.broker_connection_retry_on_startup = True
    return app


def user_connections(server: MariaDBServer) -> int:
    """Connections the server has accepted for the worker user, ever (``--userstat``)."""
    return server.user_statistics(USER).get("total_connections", 0)


class CeleryWorker:
    """One ``celery -A testbed.celery_project worker`` subprocess, stopped by PID.

    ``pool_tasks``: the keyword arguments of ``pool_tasks()``, or None for Celery's
    Django fixup alone.
    """

    def __init__(self, client: Any, server: MariaDBServer, redis_server: RedisServer,
                 log_dir: Path, pool: str, concurrency: int,
                 pool_tasks: dict[str, Any] | None) -> None:
        self.client = client
        self.queue = f"q-{pool}-{uuid.uuid4().hex[:8]}"
        self.log_path = Path(log_dir) / f"{self.queue}.log"
        env = {
            **os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "testbed.celery_settings",
            "TEST_MARIADB_PORT": str(server.port), "TEST_MARIADB_USER": USER,
            "TEST_REDIS_URL": redis_server.url,
            "TEST_POOL_TASKS": "off" if pool_tasks is None else json.dumps(pool_tasks),
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "testbed.celery_project", "worker",
                 "-P", pool, "-c", str(concurrency), "-Q", self.queue, "-n", f"{self.queue}@test",
                 "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=INFO"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while b" ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited at start-up:\n{self.log(tail=8000)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the worker was not ready within 30 s:\n{self.log()}")
            time.sleep(0.05)

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.client.send_task(TASK + name, args=args, queue=self.queue, **options)

    def run(self, name: str, *args: Any, **options: Any) -> Any:
        return self.send(name, *args, **options).get(timeout=30)

    def stop(self) -> int:
        """Warm shutdown (``SIGTERM``), as a deploy does; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise RuntimeError(f"the worker ignored SIGTERM for 30 s:\n{self.log()}") from None
        return int(self.process.returncode)
