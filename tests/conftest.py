"""Session fixtures: a throwaway MariaDB, a configured Django, servers and clients.

The suite runs under gevent: ``make test`` starts pytest through
``python -m gevent.monkey --module pytest`` so that everything is patched before any
module is imported. Tests that need an unpatched process (plain threads, gunicorn
``--preload``) run their own subprocess.
"""

from __future__ import annotations

import gevent.monkey

if not gevent.monkey.is_module_patched("socket"):  # plain `pytest`: patch as early as we can
    gevent.monkey.patch_all()

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import wait_until
from tests.mariadb import MariaDBServer, install_pymysql
from tests.mariadb import ensure_installed as ensure_mariadb
from tests.postgres import PostgresServer
from tests.postgres import ensure_installed as ensure_postgres
from tests.servers import site_settings


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    ensure_mariadb()
    with MariaDBServer(max_connections=200) as server:
        server.create_items()
        yield server


@pytest.fixture(scope="session")
def fault_proxy(mariadb: MariaDBServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(mariadb.port)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    ensure_postgres()
    with PostgresServer() as server:
        server.create_items()
        yield server


@pytest.fixture(scope="session")
def django_site(
    mariadb: MariaDBServer, fault_proxy: FaultProxy, postgres: PostgresServer
) -> MariaDBServer:
    """Django configured once for the session, every alias on the throwaway server.

    ``proxied`` reaches it through the fault-injecting proxy, with the driver timeouts
    the README recommends, so that a network fault ends in an error, never a hang.
    """
    import django
    from django.conf import settings

    install_pymysql()
    proxied = mariadb.django_settings(
        conn_max_age=60, options={"connect_timeout": 2, "read_timeout": 2, "write_timeout": 2}
    )
    proxied["PORT"] = str(fault_proxy.port)
    settings.configure(**site_settings({
        "default": mariadb.django_settings(conn_max_age=60),
        "other": mariadb.django_settings(conn_max_age=60),
        "short": mariadb.django_settings(conn_max_age=1),
        "proxied": proxied,
        "pg": postgres.django_settings(conn_max_age=60),
    }, urlconf="tests.site"))
    django.setup()
    return mariadb


@pytest.fixture
def db(django_site: MariaDBServer) -> Iterator[MariaDBServer]:
    """The server, with no app connection left over from an earlier test."""
    if not django_site.running:  # a fault test that failed half-way
        django_site.start_again()
    django_site.kill_user("app")
    wait_until(lambda: django_site.connection_count("app") == 0, what="app connections gone")
    django_site.admin_query("TRUNCATE TABLE app.items")
    yield django_site


@pytest.fixture
def make_app(db: MariaDBServer) -> Iterator[Callable[..., Any]]:
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
