"""The two throwaway databases the benchmarks run against, behind one small interface.

:func:`bench_database` starts MariaDB or PostgreSQL with the ``items`` table (1,000 rows) the
bench views query. Beside the test servers' own helpers (``connection_count``, ``kill_user``,
``port``), each answers the two questions the benchmarks ask the *server*:

- :meth:`app_connects`: how many connections the ``app`` user has opened so far (MariaDB's
  ``USER_STATISTICS``; PostgreSQL's log, written with ``log_connections``);
- :meth:`allow_connections`: let ``n`` connections in, for the no-cap stack. MariaDB takes
  ``max_connections`` at run time; PostgreSQL only at start, so its cluster starts with
  ``max_connections=400`` and every stack there is capped by its own pool alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from testbed.mariadb import MariaDBServer
from testbed.mariadb import ensure_installed as ensure_mariadb
from testbed.postgres import PostgresServer
from testbed.postgres import ensure_installed as ensure_postgres
from testbed.servers import ensure_binary

__all__ = ["BACKENDS", "BenchDatabase", "bench_database"]

BACKENDS = ("mariadb", "postgresql")
POSTGRES_MAX_CONNECTIONS = 400


class BenchDatabase(Protocol):
    backend: str
    port: int

    def connection_count(self, user: str = "app") -> int: ...
    def kill_user(self, user: str = "app") -> None: ...
    def app_connects(self) -> int: ...
    def allow_connections(self, n: int) -> None: ...


class BenchMariaDB(MariaDBServer):
    backend = "mariadb"

    def app_connects(self) -> int:
        return self.user_statistics("app")["total_connections"]

    def allow_connections(self, n: int) -> None:
        self.admin_query(f"SET GLOBAL max_connections = {int(n)}")


class BenchPostgres(PostgresServer):
    backend = "postgresql"

    def start(self) -> BenchPostgres:
        super().start()
        # log_connections applies to new sessions after a reload: no restart needed.
        self.admin_query("ALTER SYSTEM SET log_connections = on")
        self.admin_query("SELECT pg_reload_conf()")
        return self

    _sampler: Any = None
    _sampler_lock = threading.Lock()

    def connection_count(self, user: str = "app") -> int:
        """As the test helper's, on one kept admin connection: a fresh one per sample would
        fork a backend each time, CPU taken from the worker under test."""
        import psycopg

        with self._sampler_lock:
            if self._sampler is None or self._sampler.closed:
                self._sampler = psycopg.connect(host=self.socket_dir, port=self.port, user="postgres",
                                                dbname="postgres", autocommit=True, connect_timeout=5)
            row = self._sampler.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE usename = %s AND backend_type = 'client backend'", [user],
            ).fetchone()
        return int(row[0])

    def stop(self) -> None:
        with self._sampler_lock:
            if self._sampler is not None:
                self._sampler.close()
                self._sampler = None
        super().stop()

    def app_connects(self) -> int:
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return sum("connection authorized: user=app " in line for line in log)

    def allow_connections(self, n: int) -> None:
        if n > self.max_connections:
            raise ValueError(f"the cluster started with max_connections={self.max_connections}, below {n}")


@contextlib.contextmanager
def bench_database(
    backend: str = "mariadb", max_connections: int = 100, mariadb_args: Sequence[str] = ()
) -> Iterator[BenchMariaDB | BenchPostgres]:
    """A throwaway ``backend`` with the ``items`` table (1,000 rows); the server and wrk
    installed first when missing. ``max_connections`` is MariaDB's (PostgreSQL's is 400);
    ``mariadb_args``: more of ``mariadbd``'s options."""
    ensure_binary("wrk", "wrk")
    db: BenchMariaDB | BenchPostgres
    if backend == "mariadb":
        ensure_mariadb()
        db = BenchMariaDB(max_connections=max_connections, extra_args=mariadb_args)
    elif backend == "postgresql":
        ensure_postgres()
        db = BenchPostgres(max_connections=POSTGRES_MAX_CONNECTIONS)
    else:
        raise ValueError(f"backend {backend!r}: choose one of {BACKENDS}")
    with db:
        db.create_items(rows=1000)
        yield db
