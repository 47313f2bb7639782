"""Fixtures: throwaway MariaDB and PostgreSQL servers, a configured Django, app factories.

The suite runs under gevent: ``make test`` starts pytest through
``python -m gevent.monkey --module pytest`` so that everything is patched before any
module is imported. Tests that need an unpatched process (plain threads, gunicorn
``--preload``) run their own subprocess.

Servers start once per session, and only when a test asks for one: Django is configured
with the ports reserved up front, so a test that needs Django but no server (argument
checks) starts nothing. A test is marked by the servers its fixtures start (``mariadb``,
``postgresql``), and the tests that need no server run first.
"""

from __future__ import annotations

import gevent.monkey

if not gevent.monkey.is_module_patched("socket"):  # plain `pytest`: patch as early as we can
    gevent.monkey.patch_all()

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from testbed import mariadb as mariadb_harness
from testbed import pgbouncer as pgbouncer_harness
from testbed import postgres as postgres_harness
from testbed.faultproxy import FaultProxy
from testbed.mariadb import MariaDBServer, install_pymysql
from testbed.pgbouncer import PgBouncer
from testbed.postgres import PostgresServer
from testbed.servers import free_port, site_settings
from tests.helpers import Backend, wait_until

# A test whose fixtures include one of these gets the marker: the server it starts.
SERVER_MARKERS = {"mariadb": "mariadb", "postgres": "postgresql", "pgbouncer": "postgresql"}


# -- collection ---------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"mariadb: {mariadb_harness.version() or 'not installed (the harness installs it when needed)'}",
        f"postgresql: {postgres_harness.version() or 'not installed (the harness installs it when needed)'}",
    ]


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marker in SERVER_MARKERS.items():
            if fixture in fixtures and not item.get_closest_marker(marker):
                item.add_marker(marker)

    def starts_something(item: pytest.Item) -> bool:
        return any(item.get_closest_marker(m) for m in ("mariadb", "postgresql", "demo", "slow"))

    items.sort(key=starts_something)  # stable: server-free tests first, each group in file order


# -- servers -------------------------------------------------------------------------


# A strict sql_mode, a time zone and a user variable, set by the alias's init_command,
# plus a non-default isolation level and collation: what a fresh connection has.
TUNED_OPTIONS = {
    "init_command": "SET sql_mode = 'TRADITIONAL', time_zone = '+03:00', @from_init = 42",
    "isolation_level": "repeatable read",
    "collation": "utf8mb4_bin",
}
PG_TUNED_OPTIONS = {"options": "-c statement_timeout=12345 -c application_name=tuned"}
# A second schema the app user may write to: where `USE app_other` would send writes.
OTHER_SCHEMA = (
    "CREATE DATABASE IF NOT EXISTS app_other",
    "CREATE TABLE IF NOT EXISTS app_other.items "
    "(id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB",
    "GRANT ALL ON app_other.* TO 'app'@'127.0.0.1'",
    "CREATE TABLE IF NOT EXISTS app.short_names (name VARCHAR(10) NOT NULL) ENGINE=InnoDB",
)


@pytest.fixture(scope="session")
def mariadb_port() -> int:
    """The port the session's MariaDB will listen on, fixed before anything starts."""
    return free_port()


@pytest.fixture(scope="session")
def postgres_port() -> int:
    """The port the session's PostgreSQL will listen on, fixed before anything starts."""
    return free_port()


@pytest.fixture(scope="session")
def mariadb(mariadb_port: int) -> Iterator[MariaDBServer]:
    """The session's MariaDB, started at the first test that needs it."""
    mariadb_harness.ensure_installed()
    with MariaDBServer(port=mariadb_port, max_connections=200) as server:
        server.create_items()
        for statement in OTHER_SCHEMA:
            server.admin_query(statement)
        yield server


@pytest.fixture(scope="session")
def postgres(postgres_port: int) -> Iterator[PostgresServer]:
    """The session's PostgreSQL, started at the first test that needs it."""
    postgres_harness.ensure_installed()
    with PostgresServer(port=postgres_port) as server:
        server.create_items()
        yield server


@pytest.fixture(scope="session")
def fault_proxy(mariadb_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(mariadb_port)
    yield proxy
    proxy.stop()


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    """A small PostgreSQL (``max_connections=10``: 7 for clients) behind a PgBouncer in
    transaction mode with a server pool of 4; both gone after the test."""
    postgres_harness.ensure_installed()
    pgbouncer_harness.ensure_installed()
    with PostgresServer(max_connections=10) as small:
        bouncer = PgBouncer(small, port=free_port(), pool_size=4)
        try:
            yield bouncer
        finally:
            bouncer.stop()


# -- Django ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def django_site(mariadb_port: int, fault_proxy: FaultProxy, postgres_port: int) -> None:
    """Django configured once for the session, every alias on the throwaway servers.

    Configuring connects to nothing, so no server is started here: the fixtures that
    need one (``db``, ``pg_db``) start it. ``proxied`` reaches MariaDB through the
    fault-injecting proxy, with the driver timeouts the README recommends, so that a
    network fault ends in an error, never a hang.
    """
    import django
    from django.conf import settings

    install_pymysql()
    mysql = mariadb_harness.mysql_settings
    settings.configure(**site_settings({
        "default": mysql(mariadb_port),
        "other": mysql(mariadb_port),
        "short": mysql(mariadb_port, conn_max_age=1),
        "proxied": mysql(
            fault_proxy.port, options={"connect_timeout": 2, "read_timeout": 2, "write_timeout": 2}
        ),
        # The same, without PyMySQL's default TLS attempt, whose SSL context costs ~35 ms of
        # CPU per connect (tests/test_underfire.py: 200 clients reconnecting at once).
        "proxied_plain": mysql(fault_proxy.port, options={
            "connect_timeout": 2, "read_timeout": 2, "write_timeout": 2, "ssl_disabled": True,
        }),
        # As behind PgBouncer in transaction mode: what hold="transaction" needs.
        "pg": postgres_harness.postgres_settings(postgres_port, DISABLE_SERVER_SIDE_CURSORS=True),
        # Connect options a session reset must not forget (tests/test_clean.py).
        "tuned": mysql(mariadb_port, options=TUNED_OPTIONS),
        "pg_tuned": postgres_harness.postgres_settings(postgres_port, options=PG_TUNED_OPTIONS),
    }, urlconf="tests.site"))
    django.setup()


@pytest.fixture
def db(mariadb: MariaDBServer, django_site: None) -> Iterator[MariaDBServer]:
    """The MariaDB server, with no app connection left over from an earlier test."""
    if not mariadb.running:  # a fault test that failed half-way
        mariadb.start_again()
    mariadb.kill_user("app")
    wait_until(lambda: mariadb.connection_count("app") == 0, what="app connections gone")
    mariadb.admin_query("TRUNCATE TABLE app.items")
    mariadb.admin_query("TRUNCATE TABLE app_other.items")
    mariadb.admin_query("TRUNCATE TABLE app.short_names")
    yield mariadb


@pytest.fixture(params=["request", "lazy", "transaction"])
def hold(request: pytest.FixtureRequest) -> str:
    """Each ``hold`` mode in turn, for the suites that run in all three."""
    return str(request.param)


@pytest.fixture
def pg_db(postgres: PostgresServer, django_site: None) -> PostgresServer:
    """The PostgreSQL server, with no app connection left over and ``items`` empty."""
    postgres.kill_user("app")
    wait_until(lambda: postgres.connection_count("app") == 0, what="pg connections gone")
    postgres.app_query("TRUNCATE items")
    wait_until(lambda: postgres.connection_count("app") == 0, what="the truncating connection gone")
    return postgres


@pytest.fixture(
    params=[
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn, ready as ``db`` / ``pg_db`` make it; marked by the one it starts."""
    if request.param == "mariadb":
        return Backend("default", request.getfixturevalue("db"), "SELECT CONNECTION_ID()", "SELECT SLEEP(%s)")
    return Backend("pg", request.getfixturevalue("pg_db"), "SELECT pg_backend_pid()", "SELECT pg_sleep(%s)")


@pytest.fixture
def make_app(django_site: None) -> Iterator[Callable[..., Any]]:
    """Builds a PoolingMiddleware over Django's handler; checks for leaks afterwards."""
    from django.core.wsgi import get_wsgi_application

    from wsgi_dbpool import PoolingMiddleware

    made: list[PoolingMiddleware] = []

    def factory(inner: Any = None, **kwargs: Any) -> PoolingMiddleware:
        kwargs.setdefault("aliases", ["default"])
        app = PoolingMiddleware(inner or get_wsgi_application(), **kwargs)
        made.append(app)
        return app

    yield factory
    for app in made:
        wait_until(
            lambda app=app: all(s["in_use"] == 0 for s in app.stats().values()),
            what="every connection returned",
        )
        app.close()
