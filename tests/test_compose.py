"""Behaviour 9: composable with other middleware, stacked, and with unpooled aliases."""

from __future__ import annotations

from tests.helpers import call, get, serve, wait_until


class Outer:
    """A typical outer middleware: wraps the iterable and forwards close()."""

    def __init__(self, app):
        self.app = app
        self.closed = 0

    def __call__(self, environ, start_response):
        result = self.app(environ, start_response)

        def chunks():
            try:
                yield from result
            finally:
                self.closed += 1
                if hasattr(result, "close"):
                    result.close()

        return chunks()


def test_wrapped_by_another_middleware(make_app, db):
    pooled = make_app(size=1)
    outer = Outer(pooled)
    with serve(outer) as address:
        ids = {get(address, "/id/").json()["id"] for _ in range(20)}
        chunks = get(address, "/stream/?chunks=3").lines()
    assert len(ids) == 1 and {c["id"] for c in chunks} == ids
    wait_until(lambda: pooled.stats()["default"]["in_use"] == 0, what="release")
    assert outer.closed == 21


def test_stacked_twice_checks_out_once(make_app, db):
    inner = make_app(size=1)
    outer = make_app(inner, size=1)
    with serve(outer) as address:
        ids = {get(address, "/id/").json()["id"] for _ in range(10)}
    assert len(ids) == 1
    assert outer.stats()["default"]["checkouts"] == 10
    assert inner.stats()["default"]["checkouts"] == 0  # it reused the outer's binding
    assert db.connection_count("app") == 1


def test_two_aliases_are_both_bound_and_returned(make_app, db):
    app = make_app(aliases=["default", "other"], size=1)
    with serve(app) as address:
        first = get(address, "/both/").json()
        second = get(address, "/both/").json()
    assert first == second and first["default"] != first["other"]
    assert db.connection_count("app") == 2


def test_unpooled_alias_leaves_no_connection_behind(make_app, db):
    app = make_app(aliases=["default"], size=1)
    with serve(app) as address:
        get(address, "/id/")
        response = get(address, "/unpooled/")
        assert response.status == 200
        # Only the pooled connection remains: the 'other' one the request opened is gone.
        wait_until(lambda: db.connection_count("app") == 1, what="unpooled connection closed")


def test_non_django_inner_app(make_app, db):
    def plain(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]

    app = make_app(plain, size=1)
    assert call(app, "/")[2] == b"plain"
    assert app.stats()["default"]["checkouts"] == 1
