"""What test modules import: waits with a deadline, HTTP and in-process WSGI clients, a
gevent WSGI server, and the test site under real gunicorn. Fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.pywsgi

from testbed.servers import Gunicorn, child_env


@dataclasses.dataclass
class Backend:
    """One database backend of the shared suite (``tests/test_backends.py``)."""

    alias: str
    server: Any
    connection_id_sql: str
    sleep_sql: str


def wait_until(
    predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "condition",
    state: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` cooperatively until it is true; AssertionError after ``timeout``,
    naming ``what`` and, if given, what ``state()`` reads then (so a CI log says why)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            seen = f"; seen: {state()!r}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}{seen}")
        gevent.sleep(0.01)


class Ticker:
    """Counts every ``every`` seconds in a greenlet: if a wait blocks the gevent hub, the
    count stalls. A context manager; ``ticks`` is the count so far."""

    def __init__(self, every: float = 0.01) -> None:
        self.ticks = 0
        self._greenlet = gevent.spawn(self._run, every)

    def _run(self, every: float) -> None:
        while True:
            self.ticks += 1
            gevent.sleep(every)

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._greenlet.kill()


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
    """A response read in full: status, lower-cased headers, body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


def request(
    address: str, method: str, path: str, *, body: str = "", headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Response:
    """One HTTP request on a new connection (cooperative under gevent)."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def get(address: str, path: str, *, timeout: float = 20.0, method: str = "GET") -> Response:
    """One GET (or ``method``) on a new connection."""
    return request(address, method, path, timeout=timeout)


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


@contextlib.contextmanager
def gunicorn(db: Any, *args: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """``tests.gunicorn_app`` under real gunicorn gevent workers, on the MariaDB ``db``
    (None: ``env`` names another database); yields its address and process. ``args`` go
    to gunicorn, ``env`` to its environment."""
    if db is not None:
        env = {"TEST_MARIADB_PORT": str(db.port), **env}
    server = Gunicorn(
        "tests.gunicorn_app:application", config="tests/gunicorn_conf.py", args=args,
        env=child_env(**env),
    )
    with server:
        yield server.address, server.process


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes (other than this one) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and entry.name != str(os.getpid()):
                found.append(int(entry.name))
    return found
