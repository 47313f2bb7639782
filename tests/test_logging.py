"""The `wsgi_dbpool` logger: creation, per-connection DEBUG lines, long-hold warnings."""

from __future__ import annotations

import logging

import gevent
import pytest

from tests.helpers import call, get, serve, wait_until


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


# -- quiet at the cap ------------------------------------------------------------------


@pytest.mark.parametrize("hold", ["request", "lazy", "transaction"])
def test_503s_at_the_cap_log_one_line_and_no_django_500(make_app, db, hold, caplog, monkeypatch):
    from wsgi_dbpool import quiet

    monkeypatch.setattr(quiet, "EVERY", 1.0)
    app = make_app(size=1, max_outstanding=1, timeout=0.2, hold=hold)
    with serve(app) as address, caplog.at_level(logging.WARNING):
        holder = gevent.spawn(get, address, "/sleep/2500/")
        wait_until(lambda: app.stats()["default"]["in_use"] == 1, what="the only slot taken")
        burst = [gevent.spawn(get, address, "/id/") for _ in range(5)]
        gevent.joinall(burst, timeout=10, raise_error=True)
        gevent.sleep(1.1)  # past EVERY: the next 503 is logged, with the ones left out
        late = get(address, "/id/")
        holder.join(timeout=10)
        failed = get(address, "/boom/")  # a real 500: still Django's to log
    assert [job.value.status for job in burst] == [503] * 5 and late.status == 503
    assert all(job.value.headers["retry-after"] == "1" for job in burst)
    assert holder.value.status == 200 and failed.status == 500
    assert app.stats()["default"]["timeouts"] == 6
    ours = [r.getMessage() for r in caplog.records if r.name == "wsgi_dbpool" and "503 for" in r.getMessage()]
    assert len(ours) == 2, ours
    assert ours[0].startswith("503 for GET /id/: no connection for 'default'")
    assert "4 more 503(s) for 'default' not logged" in ours[1]
    # Django's own records: the real 500 only, with its traceback; none for the 503s.
    django = [r for r in caplog.records if r.name == "django.request"]
    assert [r.getMessage() for r in django] == ["Internal Server Error: /boom/"]
    assert django[0].exc_info is not None and isinstance(django[0].exc_info[1], ValueError)


@pytest.mark.parametrize("hold", ["lazy", "transaction"])
def test_503s_while_the_database_is_unreachable_log_no_django_500(make_app, db, fault_proxy, hold, caplog):
    # fail_fast: the breaker answers 503 at once inside the view; that is no real 500 either.
    app = make_app(aliases=["proxied_plain"], hold=hold)
    try:
        assert call(app, "/id/?alias=proxied_plain")[0].startswith("200")
        app.close()  # the next request must connect: through the proxy, now refusing
        fault_proxy.set_mode("reset")
        with caplog.at_level(logging.WARNING):
            first = call(app, "/id/?alias=proxied_plain")[0]  # the connect fails: the breaker opens
            wait_until(lambda: app.stats()["proxied_plain"]["breaker_open"] == 1, what="the breaker open")
            refused = [call(app, "/id/?alias=proxied_plain")[0] for _ in range(5)]
    finally:
        fault_proxy.set_mode("pass")
    assert [status[:3] for status in refused] == ["503"] * 5, (first, refused)
    django = [r for r in caplog.records if r.name == "django.request"]
    # At most the first request's, whose connect failed for real; none for the breaker's 503s.
    assert len(django) <= 1, [r.getMessage() for r in django]
