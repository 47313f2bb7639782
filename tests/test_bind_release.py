"""Behaviours 1, 2 and 10: bind before the app, release on close() exactly once."""

from __future__ import annotations

import gc
import logging

import gevent
import pytest

from tests.helpers import call, get, serve, wait_until


def test_sequential_requests_share_one_server_connection(make_app, db):
    app = make_app(size=2)
    before = db.connections_total()
    with serve(app) as address:
        ids = {get(address, "/id/").json()["id"] for _ in range(200)}
    # The server's own count of connections opened: exactly one for 200 requests.
    assert db.connections_opened_since(before) == 1
    assert len(ids) == 1
    assert db.connection_count("app") == 1
    assert app.stats()["default"]["opened"] == 1
    assert app.stats()["default"]["created"] == 1  # no throwaway wrappers


def test_connection_is_bound_while_a_response_streams(make_app, db):
    app = make_app()
    with serve(app) as address:
        first = get(address, "/id/").json()["id"]
        chunks = get(address, "/stream/?chunks=5").lines()
    assert [c["chunk"] for c in chunks] == [0, 1, 2, 3, 4]
    assert {c["id"] for c in chunks} == {first}


def test_connection_held_until_the_server_calls_close(make_app, db):
    app = make_app()
    status, _, _ = call(app, "/id/")
    assert status == "200 OK"
    result = app(_environ("/stream/?chunks=2"), lambda *a: None)
    next(iter(result))
    assert app.stats()["default"]["in_use"] == 1
    result.close()
    assert app.stats()["default"]["in_use"] == 0
    result.close()  # twice: nothing more is returned
    stats = app.stats()["default"]
    assert (stats["in_use"], stats["idle"]) == (0, 1)


def test_release_when_iteration_raises(make_app, db):
    app = make_app()
    result = app(_environ("/stream/?chunks=1&fail=1"), lambda *a: None)
    with pytest.raises(RuntimeError, match="the generator failed"):
        list(result)
    result.close()
    assert app.stats()["default"]["in_use"] == 0


def test_release_when_the_app_raises_before_returning(make_app, db):
    from django.db import connection

    def failing_app(environ, start_response):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        raise KeyError("inner app failed")

    app = make_app(failing_app)
    with pytest.raises(KeyError):
        app(_environ("/"), lambda *a: None)
    stats = app.stats()["default"]
    assert (stats["in_use"], stats["idle"]) == (0, 1)
    assert db.connection_count("app") == 1


def test_release_when_the_client_disconnects_mid_stream(make_app, db):
    import socket

    app = make_app()
    with serve(app) as address:
        host, port = address.split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"GET /stream/?chunks=50&pause=0.05 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"chunk" in sock.recv(4096)
        assert app.stats()["default"]["in_use"] == 1
        sock.close()
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release after disconnect")
        assert app.stats()["default"]["idle"] == 1
        # The connection went back clean: the next request reuses it.
        assert get(address, "/session/").json()["rows"] == 0
    assert db.connection_count("app") == 1


def test_dropped_response_is_returned_when_collected(make_app, db, caplog):
    app = make_app()
    result = app(_environ("/id/"), lambda *a: None)
    assert app.stats()["default"]["in_use"] == 1
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        del result
        gc.collect()
        # Released on the hub at once, not at the next call into the middleware.
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, timeout=1, what="released")
    assert "without close()" in caplog.text


def test_checkout_binds_outside_a_request(make_app, db):
    from django.db import connection

    app = make_app(size=1)
    request_id = call(app, "/id/")[2]

    def job():
        with app.checkout():
            with connection.cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                return cursor.fetchone()[0]

    job_id = gevent.spawn(job).get(timeout=10)
    assert str(job_id).encode() in request_id  # the very same server connection
    assert app.stats()["default"]["in_use"] == 0
    assert db.connection_count("app") == 1


def test_checkout_inside_a_request_reuses_the_bound_connection(make_app, db):
    from django.db import connection
    from django.http import JsonResponse

    holder: dict[str, object] = {}

    def inner(environ, start_response):
        outer_wrapper = connection._connections  # noqa: F841 - keep Django's local alive
        from django.db import connections

        before = connections["default"]
        with app.checkout():
            holder["same"] = connections["default"] is before
            holder["in_use"] = app.stats()["default"]["in_use"]
        response = JsonResponse({})
        start_response("200 OK", list(response.items()))
        return [b"{}"]

    app = make_app(inner)
    call(app, "/")
    assert holder == {"same": True, "in_use": 1}


def _environ(path: str) -> dict:
    from webob import Request

    return Request.blank(path).environ


@pytest.mark.parametrize("hold", ["request", "lazy", "transaction"])
def test_a_request_leaves_no_reference_cycle(make_app, db, hold):
    """Nothing the middleware keeps per request refers back to the request: a cycle (the
    environ holding the work, the work its environ) left every request's whole graph,
    response included, to the garbage collector, a collection every few hundred requests
    (seen as 2% of the worker's instructions on /query/). Django's own request is acyclic."""
    app = make_app(hold=hold)
    assert call(app, "/id/")[0] == "200 OK"  # warm: the pool, Django's caches, the URLconf
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            assert call(app, "/id/")[0] == "200 OK"
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
