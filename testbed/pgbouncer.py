"""A throwaway PgBouncer in transaction mode, in front of a test PostgreSQL cluster.

PgBouncer refuses to run as root, so it runs as the cluster's system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile

from testbed.postgres import OS_USER, PostgresServer
from testbed.servers import ensure_binary, stop_process, wait_for_port, which


def ensure_installed() -> str:
    """The ``pgbouncer`` binary, installed from Debian when missing."""
    return ensure_binary("pgbouncer", "pgbouncer")


class PgBouncer:
    """One ``pgbouncer`` in transaction mode in front of ``server``, ``pool_size`` server
    connections at most; call :func:`ensure_installed` first."""

    def __init__(self, server: PostgresServer, *, port: int, pool_size: int) -> None:
        self.binary = which("pgbouncer") or "pgbouncer"
        self.server = server
        self.port = port
        self.basedir = tempfile.mkdtemp(prefix="wsgi_dbpool-pgbouncer-")
        account = pwd.getpwnam(OS_USER)
        os.chown(self.basedir, account.pw_uid, account.pw_gid)
        config = os.path.join(self.basedir, "pgbouncer.ini")
        with open(os.path.join(self.basedir, "userlist.txt"), "w") as fh:
            fh.write('"app" "app"\n')
        with open(config, "w") as fh:
            fh.write(
                f"[databases]\napp = host=127.0.0.1 port={server.port} dbname=app\n\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
                f"unix_socket_dir = {self.basedir}\nauth_type = trust\n"
                f"auth_file = {self.basedir}/userlist.txt\npool_mode = transaction\n"
                f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
                f"ignore_startup_parameters = extra_float_digits,options\n"
                f"admin_users = app\nlogfile = {self.basedir}/pgbouncer.log\n"
            )
        self.process = subprocess.Popen([self.binary, config], user=OS_USER,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, process=self.process, timeout=20, what="pgbouncer", details=self._log_tail)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.basedir, "pgbouncer.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()[-2000:]
        except OSError:
            return "(no pgbouncer log)"

    def stop(self) -> None:
        """Stop it (SIGINT: PgBouncer's immediate shutdown) and remove its files."""
        stop_process(self.process, sig=signal.SIGINT, timeout=10)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def clients(self) -> int:
        """Client connections PgBouncer holds now (its admin console's SHOW CLIENTS)."""
        done = subprocess.run(
            [ensure_binary("psql", "postgresql-client"), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "app", "-At", "pgbouncer", "-c", "SHOW CLIENTS"],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": "app"}, timeout=10,
        )
        return len([line for line in done.stdout.splitlines() if line.strip()]) - 1  # not psql
