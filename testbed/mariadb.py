"""A throwaway MariaDB server for the tests, the demo and the benchmarks.

It lives in a temporary datadir, listens on a loopback port and its own socket, and
is gone (process and files) after :meth:`MariaDBServer.stop` or at interpreter exit.
The application connects as a dedicated user ``app``, so that what the server
reports for that user (``SHOW PROCESSLIST``) is the application's doing alone; the
admin helpers connect as ``root`` over the unix socket.

``python -m testbed.mariadb`` starts one and waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from testbed.servers import (
    ThrowawayServer,
    apt_install,
    free_port,
    run_until_interrupted,
    stop_process,
    which,
)

logger = logging.getLogger("testbed.mariadb")

_ER_NO_SUCH_THREAD = 1094  # "Unknown thread id": KILL of a connection that already ended


def ensure_installed() -> None:
    """Install Debian's MariaDB server when it is missing (we run as root on CI)."""
    if which("mariadbd") and which("mariadb-install-db"):
        return
    apt_install("mariadb-server", "mariadb-client")
    if not which("mariadbd"):
        raise RuntimeError("apt-get installed mariadb-server but no mariadbd binary was found")


def version() -> str | None:
    """``mariadbd --version`` without starting anything (None when not installed)."""
    mariadbd = which("mariadbd")
    if mariadbd is None:
        return None
    done = subprocess.run([mariadbd, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or None


def install_pymysql() -> None:
    """Let Django's MySQL backend use PyMySQL, as a user's wsgi.py does.

    No version shim is needed: Django 5.2 refuses a ``MySQLdb.version_info`` below
    (1, 4, 3) and Django 6 one below (2, 2, 1); PyMySQL >= 1.1.3 reports (2, 2, 8)
    (1.1.0 to 1.1.2 report (1, 4, 6), which Django 6 refuses: hence the floor).
    """
    import pymysql

    pymysql.install_as_MySQLdb()


def mysql_settings(
    port: int | str, *, conn_max_age: int | None = 60, options: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A ``DATABASES`` entry for the ``app`` user of a server on ``port`` (for the
    subprocesses that know only the port; :meth:`MariaDBServer.django_settings` in-process)."""
    return {
        "ENGINE": "django.db.backends.mysql",
        "NAME": MariaDBServer.database,
        "USER": MariaDBServer.user,
        "PASSWORD": MariaDBServer.password,
        "HOST": MariaDBServer.host,
        "PORT": str(port),
        "CONN_MAX_AGE": conn_max_age,
        "OPTIONS": {"charset": "utf8mb4", **(options or {})},
        **extra,
    }


class MariaDBServer(ThrowawayServer):
    """One ``mariadbd`` in a temporary datadir, for as long as the caller needs it."""

    host = "127.0.0.1"
    user = "app"
    password = "app"
    database = "app"

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 100,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.max_connections = max_connections
        self.extra_args = list(extra_args)
        self.basedir = tempfile.mkdtemp(prefix="wsgi_dbpool-mariadb-")
        self.datadir = os.path.join(self.basedir, "data")
        self.socket_path = os.path.join(self.basedir, "mysqld.sock")
        self.error_log_path = os.path.join(self.basedir, "error.log")
        self._process: subprocess.Popen[bytes] | None = None
        self._initialised = False
        atexit.register(self.stop)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> MariaDBServer:
        """Initialise the datadir (first time only), start ``mariadbd`` and wait until it
        answers; the first start also creates the ``app`` database and users."""
        if not self._initialised:
            self._install_datadir()
        self._spawn()
        if not self._initialised:
            self._create_app_user()
            self._initialised = True
        return self

    def _install_datadir(self) -> None:
        installer = which("mariadb-install-db") or which("mysql_install_db")
        if installer is None:
            raise RuntimeError("mariadb-install-db not found: run ensure_installed() first")
        done = subprocess.run(
            [
                installer, "--no-defaults", "--user=root", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
            ],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout}\n{done.stderr}")

    def _spawn(self) -> None:
        mariadbd = which("mariadbd") or which("mysqld")
        if mariadbd is None:
            raise RuntimeError("mariadbd not found: run ensure_installed() first")
        args = [
            mariadbd, "--no-defaults", "--user=root",
            f"--datadir={self.datadir}", f"--socket={self.socket_path}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
            f"--pid-file={os.path.join(self.basedir, 'mysqld.pid')}",
            f"--log-error={self.error_log_path}", f"--max-connections={self.max_connections}",
            "--innodb-buffer-pool-size=64M", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=2",
            "--performance-schema=OFF", "--userstat=1",
            *self.extra_args,
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"mariadbd exited at start-up:\n{self._log_tail()}")
            try:
                # A bare socket first: PyMySQL leaks its socket when a connect fails.
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1)
                    probe.connect(self.socket_path)
                self._root_connection().close()
                # The app and the pool tests come in over TCP: wait for that listener too.
                with socket.create_connection((self.host, self.port), timeout=1):
                    pass
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    tail = self._log_tail()  # before stop() removes the log
                    self.stop()
                    raise RuntimeError(f"mariadbd did not answer within 60 s ({exc}):\n{tail}") from None
                time.sleep(0.05)

    def _create_app_user(self) -> None:
        for statement in (
            f"CREATE DATABASE IF NOT EXISTS {self.database} CHARACTER SET utf8mb4",
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
            "GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
            f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}'",
            f"CREATE USER IF NOT EXISTS '{self.user}'@'localhost' IDENTIFIED BY '{self.password}'",
            f"GRANT ALL ON {self.database}.* TO '{self.user}'@'127.0.0.1'",
            f"GRANT ALL ON {self.database}.* TO '{self.user}'@'localhost'",
        ):
            self.admin_query(statement)

    def _log_tail(self) -> str:
        return self._tail(self.error_log_path)

    def _terminate(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, sig=sig, timeout=30)

    def stop(self) -> None:
        """Shut the server down and remove its files; safe to call twice."""
        self._terminate(signal.SIGTERM)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port and datadir (data is kept)."""
        self._terminate(signal.SIGTERM)
        self._spawn()

    def kill_server(self) -> None:
        """SIGKILL the server, as a crash would; :meth:`start_again` brings it back."""
        self._terminate(signal.SIGKILL)

    def start_again(self) -> None:
        """Start the server again after :meth:`kill_server`, on the same port and datadir."""
        self._spawn()

    @property
    def pid(self) -> int | None:
        """The ``mariadbd`` process id while one is started, for tests that check it is gone."""
        return self._process.pid if self._process is not None else None

    # -- Django -------------------------------------------------------------------

    def django_settings(
        self, *, conn_max_age: int | None = 60, options: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A ``DATABASES`` entry for the application user."""
        return mysql_settings(self.port, conn_max_age=conn_max_age, options=options, **extra)

    def create_items(self, rows: int = 0) -> None:
        """The ``items`` table the test and bench views query, with ``rows`` rows named
        ``item 1`` to ``item N`` (already there: left as it is)."""
        self.admin_query(
            f"CREATE TABLE IF NOT EXISTS {self.database}.items "
            "(id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB"
        )
        if rows:
            self.admin_query(
                f"INSERT IGNORE INTO {self.database}.items "
                f"SELECT seq, CONCAT('item ', seq) FROM {self.database}.seq_1_to_{int(rows)}"
            )

    # -- what the server says -------------------------------------------------------

    def _root_connection(self) -> Any:
        import pymysql

        return pymysql.connect(
            unix_socket=self.socket_path, user="root", autocommit=True, connect_timeout=5
        )

    @contextlib.contextmanager
    def _admin(self) -> Iterator[Any]:
        conn = self._root_connection()
        try:
            with conn.cursor() as cursor:
                yield cursor
        finally:
            conn.close()

    def admin_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root on a fresh autocommit connection (over the unix
        socket, so it never shows up under the ``app`` user) and return every row."""
        with self._admin() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def processlist(self, user: str = "app") -> list[dict[str, Any]]:
        """The server's view of ``user``'s connections: id, user, host, db, command, time,
        state, info (``information_schema.PROCESSLIST``)."""
        rows = self.admin_query(
            "SELECT ID, USER, HOST, DB, COMMAND, TIME, STATE, INFO "
            "FROM information_schema.PROCESSLIST WHERE USER = %s",
            [user],
        )
        keys = ("id", "user", "host", "db", "command", "time", "state", "info")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def connection_count(self, user: str = "app") -> int:
        """How many connections the server holds for ``user`` (the admin one is root's)."""
        return len(self.processlist(user))

    def status(self, name: str) -> int:
        """One ``SHOW GLOBAL STATUS`` counter as an int (0 when the server has no such name)."""
        rows = self.admin_query("SHOW GLOBAL STATUS LIKE %s", [name])
        return int(rows[0][1]) if rows else 0

    def connections_total(self) -> int:
        """``Connections``: every connection attempt the server has seen (this one's too)."""
        return self.status("Connections")

    def connections_opened_since(self, before: int) -> int:
        """Connections opened since ``before`` (from :meth:`connections_total`), not
        counting the admin connection that reads the figure."""
        return self.connections_total() - before - 1

    def user_statistics(self, user: str = "app") -> dict[str, int]:
        """The server's per-user counters (``--userstat``): commands by kind, rollbacks."""
        with self._admin() as cursor:
            cursor.execute("SELECT * FROM information_schema.USER_STATISTICS WHERE USER = %s", [user])
            row = cursor.fetchone()
            names = [d[0].lower() for d in cursor.description]
        if row is None:
            return {n: 0 for n in names if n != "user"}
        return {n: int(v) for n, v in zip(names, row, strict=True) if n != "user"}

    def kill(self, connection_id: int) -> None:
        """``KILL`` one connection; one that is already gone is not an error."""
        import pymysql

        try:
            self.admin_query(f"KILL {int(connection_id)}")
        # pymysql.MySQLError, not pymysql.err.MySQLError: once Django's backend has imported
        # MySQLdb.converters (PyMySQL under its MySQLdb alias), the attribute ``pymysql.err``
        # is a second copy of the module, whose classes are not the ones PyMySQL raises.
        except pymysql.MySQLError as exc:
            if not exc.args or exc.args[0] != _ER_NO_SUCH_THREAD:
                raise

    def kill_user(self, user: str = "app") -> None:
        """``KILL`` every connection ``user`` holds, as a server-side failure would.

        One statement on the server (``KILL USER``): no race with a connection that
        ends between listing it and killing it.
        """
        self.admin_query(f"KILL USER '{user}'")

    def set_global(self, name: str, value: Any) -> None:
        """``SET GLOBAL name = value`` (the name is not quoted: pass a server variable)."""
        self.admin_query(f"SET GLOBAL {name} = %s", [value])


def main() -> None:
    """``python -m testbed.mariadb``: one server for a person to poke at, until Ctrl-C."""
    ensure_installed()
    server = MariaDBServer()
    run_until_interrupted(
        server,
        lambda: (
            f"mysql://{server.user}:{server.password}@{server.host}:{server.port}/{server.database}\n"
            f"admin: mariadb --socket={server.socket_path} -uroot   (Ctrl-C stops and cleans up)"
        ),
    )


if __name__ == "__main__":
    main()
