"""The `wsgi_dbpool` logger: creation, per-connection DEBUG lines, long-hold warnings."""

from __future__ import annotations

import logging

import gevent

from tests.helpers import get, serve, wait_until


def test_creation_is_logged_with_its_settings(make_app, caplog):
    with caplog.at_level(logging.INFO, logger="wsgi_dbpool"):
        make_app(size=3, max_outstanding=7)
    assert "pooling 'default': size=3 max_outstanding=7" in caplog.text


def test_debug_lines_name_the_server_connection(make_app, db, caplog):
    app = make_app()
    with serve(app) as address, caplog.at_level(logging.DEBUG, logger="wsgi_dbpool"):
        first = get(address, "/id/").json()["id"]
        second = get(address, "/id/").json()["id"]
        wait_until(lambda: app.stats()["default"]["in_use"] == 0, what="release")
    assert first == second
    assert f"checkout 'default': connection {first}" in caplog.text  # once connected
    assert f"return 'default': connection {first}" in caplog.text


def test_long_hold_is_warned_once_while_the_request_runs(make_app, db, caplog):
    app = make_app(hold_warning=0.3)
    with serve(app) as address, caplog.at_level(logging.INFO, logger="wsgi_dbpool"):
        slow = gevent.spawn(get, address, "/sleep/1500/")
        wait_until(lambda: "has held its connections" in caplog.text, timeout=5, what="warning")
        assert not slow.ready()  # warned while it still ran, not after
        slow.get(timeout=10)
        quick = [get(address, "/id/") for _ in range(3)]
        wait_until(lambda: "released its connections" in caplog.text, timeout=5, what="the end noted")
    warnings = [r for r in caplog.records if "has held its connections" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "GET /sleep/1500/" in warnings[0].getMessage() and "'default'" in warnings[0].getMessage()
    assert all(r.status == 200 for r in quick)
