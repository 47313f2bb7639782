"""A throwaway PostgreSQL cluster for the tests, beside the MariaDB one.

``initdb`` and ``postgres`` refuse to run as root, so the cluster belongs to a system
user this module creates (``wsgidbpool``); it lives in a temporary directory, listens
on a loopback port and its own socket directory, and is gone after :meth:`stop` or at
interpreter exit. The app connects as the role ``app``; admin helpers connect as the
superuser ``postgres`` over the socket.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

OS_USER = "wsgidbpool"


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


def ensure_installed() -> str:
    """The server's bin directory, installing Debian's postgresql when it is missing."""
    if _bindir() is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("install Debian's postgresql (apt-get install postgresql)")
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", OS_USER], check=True)
    return bindir


class PostgresServer:
    host = "127.0.0.1"
    user = "app"
    password = "app"
    database = "app"

    def __init__(self, *, port: int, max_connections: int = 100) -> None:
        self.bindir = ensure_installed()
        self.port = port
        self.max_connections = max_connections
        self.basedir = tempfile.mkdtemp(prefix="wsgi_dbpool-postgres-")
        self.datadir = os.path.join(self.basedir, "data")
        self.socket_dir = self.basedir
        self._process: subprocess.Popen[bytes] | None = None
        account = pwd.getpwnam(OS_USER)
        os.chown(self.basedir, account.pw_uid, account.pw_gid)
        atexit.register(self.stop)

    def start(self) -> PostgresServer:
        subprocess.run(
            [f"{self.bindir}/initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, user=OS_USER,
        )
        self._process = subprocess.Popen(
            [f"{self.bindir}/postgres", "-D", self.datadir, "-p", str(self.port),
             "-k", self.socket_dir, "-c", "listen_addresses=127.0.0.1",
             "-c", f"max_connections={self.max_connections}", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            user=OS_USER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin_query("SELECT 1")
                break
            except Exception as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not start: {exc}") from None
                time.sleep(0.1)
        self.admin_query(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.admin_query(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def django_settings(
        self, *, conn_max_age: int | None = 60, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": self.database,
            "USER": self.user,
            "PASSWORD": self.password,
            "HOST": self.host,
            "PORT": str(self.port),
            "CONN_MAX_AGE": conn_max_age,
            "OPTIONS": dict(options or {}),
        }

    def admin_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(host=self.socket_dir, port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, args)
            return list(cursor.fetchall()) if cursor.description else []

    # the same vocabulary as tests.mariadb.MariaDBServer, for the shared suite
    def processlist(self, user: str = "app") -> list[dict[str, Any]]:
        rows = self.admin_query(
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE usename = %s AND backend_type = 'client backend'",
            [user],
        )
        return [{"id": pid, "command": state, "info": query} for pid, state, query in rows]

    def connection_count(self, user: str = "app") -> int:
        return len(self.processlist(user))

    def kill(self, connection_id: int) -> None:
        with contextlib.suppress(Exception):
            self.admin_query("SELECT pg_terminate_backend(%s)", [int(connection_id)])

    def kill_user(self, user: str = "app") -> None:
        for row in self.processlist(user):
            self.kill(row["id"])
