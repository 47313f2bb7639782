"""A throwaway PgBouncer in transaction mode, in front of a test PostgreSQL cluster.

PgBouncer refuses to run as root, so it runs as the cluster's system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.postgres import OS_USER, PostgresServer


def _psql() -> str:
    """psql speaks the simple query protocol PgBouncer's admin console wants."""
    found = shutil.which("psql")
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql-client"], check=True, env=env)
        found = shutil.which("psql") or "psql"
    return found


def ensure_installed() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, env=env)
        found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found


class PgBouncer:
    def __init__(self, server: PostgresServer, *, port: int, pool_size: int) -> None:
        self.binary = ensure_installed()
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
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = open(os.path.join(self.basedir, "pgbouncer.log")).read()[-2000:]
                self.stop()
                raise RuntimeError(f"pgbouncer did not start:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.basedir, ignore_errors=True)

    def clients(self) -> int:
        """Client connections PgBouncer holds now (its admin console's SHOW CLIENTS)."""
        done = subprocess.run(
            [_psql(), "-h", "127.0.0.1", "-p", str(self.port), "-U", "app", "-At", "pgbouncer",
             "-c", "SHOW CLIENTS"],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": "app"}, timeout=10,
        )
        return len([line for line in done.stdout.splitlines() if line.strip()]) - 1  # not psql
