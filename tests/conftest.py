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

import contextlib
import http.client
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.pywsgi
import pytest

from tests.faultproxy import FaultProxy
from tests.mariadb import MariaDBServer, ensure_installed, install_pymysql
from tests.postgres import PostgresServer

ITEMS_TABLE = (
    "CREATE TABLE IF NOT EXISTS app.items "
    "(id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB"
)


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
def mariadb() -> Iterator[MariaDBServer]:
    ensure_installed()
    server = MariaDBServer(max_connections=200)
    server.start()
    server.admin_query(ITEMS_TABLE)
    for statement in OTHER_SCHEMA:
        server.admin_query(statement)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_proxy(mariadb: MariaDBServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(mariadb.port)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(port=_free_port())
    server.start()
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user="app", password="app",
                         dbname="app", autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id SERIAL PRIMARY KEY, name VARCHAR(50) NOT NULL)")
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="tests.site",
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
        LOGGING_CONFIG=None,
        DATABASES={
            "default": mariadb.django_settings(conn_max_age=60),
            "other": mariadb.django_settings(conn_max_age=60),
            "short": mariadb.django_settings(conn_max_age=1),
            "proxied": proxied,
            "pg": postgres.django_settings(conn_max_age=60),
            # Connect options a session reset must not forget (tests/test_clean.py).
            "tuned": mariadb.django_settings(conn_max_age=60, options=TUNED_OPTIONS),
            "pg_tuned": postgres.django_settings(conn_max_age=60, options=PG_TUNED_OPTIONS),
        },
    )
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
    django_site.admin_query("TRUNCATE TABLE app_other.items")
    django_site.admin_query("TRUNCATE TABLE app.short_names")
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


def wait_until(
    predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        gevent.sleep(0.01)


class PeakConnections:
    """Samples the app user's server connections in a greenlet; ``peak`` is the most seen."""

    def __init__(self, db: MariaDBServer, every: float = 0.005) -> None:
        self.peak = 0
        self._running = True

        def sample() -> None:
            while self._running:
                self.peak = max(self.peak, db.connection_count("app"))
                gevent.sleep(every)

        self._greenlet = gevent.spawn(sample)

    def __enter__(self) -> PeakConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._greenlet.join(timeout=5)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """A real gevent WSGI server on a free loopback port; yields its address."""
    server = gevent.pywsgi.WSGIServer(
        ("127.0.0.1", 0), app, log=None, error_log=logging.getLogger("pywsgi")
    )
    server.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.stop(timeout=5)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


def get(address: str, path: str, *, timeout: float = 20.0, method: str = "GET") -> Response:
    """One HTTP request on a new connection (cooperative under gevent)."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def environ_for(path: str) -> dict[str, Any]:
    """A WSGI environ for a GET of ``path``, as a server would build it."""
    from webob import Request

    return dict(Request.blank(path).environ)


def call(app: Any, path: str, **environ: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call a WSGI app in-process like a well-behaved server: iterate, then close()."""
    from webob import Request

    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    env = Request.blank(path).environ
    env.update(environ)
    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], body
