"""A throwaway PostgreSQL cluster for the tests, beside the MariaDB one.

``initdb`` and ``postgres`` refuse to run as root, so the cluster belongs to a system
user :func:`ensure_installed` creates (``wsgidbpool``); it lives in a temporary
directory, listens on a loopback port and its own socket directory, and is gone
(process and files) after :meth:`PostgresServer.stop` or at interpreter exit. The
application connects as the role ``app`` over TCP, so that what ``pg_stat_activity``
reports for that role is the application's doing alone; the admin helpers connect as
the superuser ``postgres`` over the unix socket.

``python -m testbed.postgres`` starts one and waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from testbed.servers import ThrowawayServer, apt_install, free_port, run_until_interrupted, stop_process

OS_USER = "wsgidbpool"


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


def ensure_installed() -> str:
    """The server's bin directory, installing Debian's postgresql when it is missing, and
    the system user the cluster runs as, created when missing (we run as root on CI)."""
    if _bindir() is None:
        apt_install("postgresql")
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/postgres was found")
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", OS_USER], check=True)
    return bindir


def version() -> str | None:
    """``postgres --version`` without starting anything (None when not installed)."""
    bindir = _bindir()
    if bindir is None:
        return None
    done = subprocess.run([f"{bindir}/postgres", "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or None


def postgres_settings(
    port: int | str, *, conn_max_age: int | None = 60, options: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A ``DATABASES`` entry for the ``app`` role on ``port`` (a cluster or a PgBouncer)."""
    entry: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PostgresServer.database,
        "USER": PostgresServer.user,
        "PASSWORD": PostgresServer.password,
        "HOST": PostgresServer.host,
        "PORT": str(port),
        "CONN_MAX_AGE": conn_max_age,
        **extra,
    }
    if options:
        entry["OPTIONS"] = dict(options)
    return entry


class PostgresServer(ThrowawayServer):
    """One ``postgres`` cluster in a temporary directory, for as long as the caller needs it.

    Call :func:`ensure_installed` first: the constructor installs nothing.
    """

    host = "127.0.0.1"
    user = "app"
    password = "app"
    database = "app"

    def __init__(self, *, port: int | None = None, max_connections: int = 100) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: call testbed.postgres.ensure_installed() first")
        try:
            account = pwd.getpwnam(OS_USER)
        except KeyError:
            raise RuntimeError(
                f"no system user {OS_USER!r} to run the cluster:"
                " call testbed.postgres.ensure_installed() first"
            ) from None
        self.bindir = bindir
        self.port = port or free_port()
        self.max_connections = max_connections
        self.basedir = tempfile.mkdtemp(prefix="wsgi_dbpool-postgres-")
        self.datadir = os.path.join(self.basedir, "data")
        self.socket_dir = self.basedir
        self.log_path = os.path.join(self.basedir, "postgres.log")
        self._process: subprocess.Popen[bytes] | None = None
        os.chown(self.basedir, account.pw_uid, account.pw_gid)
        atexit.register(self.stop)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Create the cluster, start ``postgres``, wait until it answers, and create the
        ``app`` role and database."""
        done = subprocess.run(
            [f"{self.bindir}/initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8"],
            capture_output=True, text=True, user=OS_USER,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [f"{self.bindir}/postgres", "-D", self.datadir, "-p", str(self.port),
                 "-k", self.socket_dir, "-c", "listen_addresses=127.0.0.1",
                 "-c", f"max_connections={self.max_connections}", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                user=OS_USER, stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_until_answering()
        self.admin_query(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.admin_query(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def _wait_until_answering(self, timeout: float = 60) -> None:
        import psycopg

        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"postgres exited at start-up:\n{tail}")
            try:
                self.admin_query("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    tail = self._log_tail()
                    self.stop()
                    raise RuntimeError(
                        f"postgres did not answer within {timeout:.0f} s ({exc}):\n{tail}"
                    ) from None
            time.sleep(0.1)

    def _log_tail(self) -> str:
        return self._tail(self.log_path)

    def stop(self) -> None:
        """Shut the server down (fast shutdown) and remove its files; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, sig=signal.SIGINT, timeout=30)  # SIGINT: fast shutdown
        shutil.rmtree(self.basedir, ignore_errors=True)

    # -- Django -------------------------------------------------------------------

    def django_settings(
        self, *, conn_max_age: int | None = 60, options: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A ``DATABASES`` entry for the application role."""
        return postgres_settings(self.port, conn_max_age=conn_max_age, options=options, **extra)

    def create_items(self, rows: int = 0) -> None:
        """The ``items`` table the test views query, owned by ``app``, with ``rows`` rows
        named ``item 1`` to ``item N`` (already there: left as it is)."""
        self.app_query("CREATE TABLE IF NOT EXISTS items (id SERIAL PRIMARY KEY, name VARCHAR(50) NOT NULL)")
        if rows:
            self.app_query(
                "INSERT INTO items (id, name) SELECT n, 'item ' || n FROM generate_series(1, %s) AS n "
                "ON CONFLICT DO NOTHING",
                [int(rows)],
            )

    # -- what the server says -------------------------------------------------------

    def admin_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as ``postgres`` on a fresh autocommit connection over the unix
        socket (so it never shows up under ``app``) and return every row."""
        import psycopg

        with psycopg.connect(host=self.socket_dir, port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, args)
            return list(cursor.fetchall()) if cursor.description else []

    def app_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as ``app`` in its database, autocommit (it counts as ``app``'s
        connection while it runs); every row."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname=self.database, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, args)
            return list(cursor.fetchall()) if cursor.description else []

    def processlist(self, user: str = "app") -> list[dict[str, Any]]:
        """``user``'s client connections as ``pg_stat_activity`` shows them, in the keys of
        ``MariaDBServer.processlist``: id (the backend pid), command (the state), info (the query)."""
        rows = self.admin_query(
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE usename = %s AND backend_type = 'client backend'",
            [user],
        )
        return [{"id": pid, "command": state, "info": query} for pid, state, query in rows]

    def connection_count(self, user: str = "app") -> int:
        """How many client connections the server holds for ``user``."""
        return len(self.processlist(user))

    def kill(self, connection_id: int) -> None:
        """Terminate one backend; one that is already gone is not an error (PostgreSQL
        answers false and a warning for it)."""
        self.admin_query("SELECT pg_terminate_backend(%s)", [int(connection_id)])

    def kill_user(self, user: str = "app") -> None:
        """Terminate every backend of ``user``, as a server-side failure would."""
        for row in self.processlist(user):
            self.kill(row["id"])


def main() -> None:
    """``python -m testbed.postgres``: one cluster for a person to poke at, until Ctrl-C."""
    ensure_installed()
    server = PostgresServer()
    run_until_interrupted(
        server,
        lambda: (
            f"postgresql://{server.user}:{server.password}@{server.host}:{server.port}/{server.database}\n"
            f"admin: psql -h {server.socket_dir} -p {server.port} -U postgres   (Ctrl-C stops and cleans up)"
        ),
    )


if __name__ == "__main__":
    main()
