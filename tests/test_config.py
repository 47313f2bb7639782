"""Behaviour 6: bad input fails at construction, naming the argument and the fix."""

from __future__ import annotations

import pytest


def _app(environ, start_response):  # a stand-in inner app; never called here
    raise AssertionError("not called")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": 0}, ValueError, "size must be at least 1"),
        ({"size": 2.5}, TypeError, "size must be an int"),
        ({"size": True}, TypeError, "size must be an int"),
        ({"size": "4"}, TypeError, "size must be an int"),
        ({"size": 4, "max_outstanding": 3}, ValueError, "max_outstanding=3 is below size=4"),
        ({"max_outstanding": 0}, ValueError, "max_outstanding must be at least 1"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0"),
        ({"timeout": "30"}, TypeError, "timeout must be a number of seconds"),
        ({"ping_after": -0.5}, ValueError, "ping_after must be >= 0"),
        ({"aliases": "default"}, TypeError, "write aliases=\\['default'\\]"),
        ({"aliases": []}, ValueError, "aliases names no database"),
        ({"skip": "health"}, TypeError, "skip must be a callable"),
        ({"linger": None}, TypeError, "linger must be a number of seconds"),
        ({"linger": -1}, ValueError, "linger must be >= 0"),
        ({"hold_warning": 0}, ValueError, "hold_warning must be > 0"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a finite number of seconds"),
        ({"linger": float("inf")}, ValueError, "linger must be a finite number of seconds"),
        ({"statement_timeout": float("nan")}, ValueError,
         "statement_timeout must be a finite number of seconds"),
        ({"max_hold": float("inf")}, ValueError, "max_hold must be a finite number of seconds"),
        ({"statement_timeout": 0.0001}, ValueError,
         r"statement_timeout must be at least 0\.001 seconds"),
    ],
    ids=[
        "size-zero", "size-float", "size-bool", "size-str", "cap-below-size", "cap-zero",
        "timeout-negative", "timeout-str", "ping-negative", "aliases-str", "aliases-empty",
        "skip-not-callable", "linger-none", "linger-negative", "hold-warning-zero",
        "timeout-nan", "linger-inf", "statement-timeout-nan", "max-hold-inf",
        "statement-timeout-below-1ms",
    ],
)
def test_bad_arguments_fail_at_construction(django_site, kwargs, error, message):
    from wsgi_dbpool import PoolingMiddleware

    with pytest.raises(error, match=message):
        PoolingMiddleware(_app, **{"aliases": ["default"], **kwargs})


def test_unknown_alias_is_improperly_configured(django_site):
    from django.core.exceptions import ImproperlyConfigured

    from wsgi_dbpool import PoolingMiddleware

    with pytest.raises(ImproperlyConfigured, match=r"\['replica'\] are not in settings.DATABASES"):
        PoolingMiddleware(_app, aliases=["default", "replica"])


def test_non_callable_app_is_a_type_error(django_site):
    from wsgi_dbpool import PoolingMiddleware

    with pytest.raises(TypeError, match="app must be a WSGI application"):
        PoolingMiddleware("myproject.wsgi", aliases=["default"])  # type: ignore[arg-type]


def test_conn_max_age_zero_warns(django_site, caplog):
    from django.conf import settings

    from wsgi_dbpool import PoolingMiddleware

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    try:
        with pytest.warns(RuntimeWarning, match="CONN_MAX_AGE'\\] is 0.*Set CONN_MAX_AGE"):
            PoolingMiddleware(_app, aliases=["default"])
    finally:
        settings.DATABASES["default"]["CONN_MAX_AGE"] = 60
    assert "CONN_MAX_AGE" in caplog.text


def test_construction_never_connects(db):
    from wsgi_dbpool import PoolingMiddleware

    before = db.connections_total()
    app = PoolingMiddleware(_app)  # every alias
    assert db.connections_opened_since(before) == 0
    assert set(app.stats()) == {
        "default", "other", "short", "proxied", "proxied_plain", "pg", "tuned", "pg_tuned"
    }
    assert all(s["opened"] == 0 for s in app.stats().values())


def test_misconfigured_engine_fails_at_construction(django_site):
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from wsgi_dbpool import PoolingMiddleware

    settings.DATABASES["broken"] = {"ENGINE": "django.db.backends.nosuchdb", "CONN_MAX_AGE": 60}
    try:
        with pytest.raises(ImproperlyConfigured, match=r"DATABASES\['broken'\].*nosuchdb"):
            PoolingMiddleware(_app, aliases=["broken"])
    finally:
        del settings.DATABASES["broken"]


def test_django_own_pool_on_a_pooled_alias_is_refused(django_site):
    """Django's OPTIONS["pool"] under ours would give every pooled wrapper a pool of its own."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from wsgi_dbpool import PoolingMiddleware

    settings.DATABASES["stacked"] = {
        "ENGINE": "django.db.backends.postgresql", "NAME": "app", "CONN_MAX_AGE": 60,
        "OPTIONS": {"pool": {"min_size": 2, "max_size": 4}},
    }
    try:
        with pytest.raises(ImproperlyConfigured, match=r"\['OPTIONS'\]\['pool'\].*Remove"):
            PoolingMiddleware(_app, aliases=["stacked"])
        settings.DATABASES["stacked"]["OPTIONS"] = {"pool": False}  # Django's own "off"
        PoolingMiddleware(_app, aliases=["stacked"])
    finally:
        del settings.DATABASES["stacked"]


def test_close_twice_is_a_no_op(make_app, db):
    from tests.helpers import call

    app = make_app(size=1)
    call(app, "/id/")
    app.close()
    app.close()
    assert app.stats()["default"]["idle"] == 0
    assert call(app, "/id/")[0] == "200 OK"  # still usable after close()


def test_checkout_nested_and_across_greenlets(make_app, db):
    import gevent
    from django.db import connections

    app = make_app(size=2, max_outstanding=2, timeout=5)
    with app.checkout():
        outer = connections["default"]
        with app.checkout():  # nested: the same connection, no second checkout
            assert connections["default"] is outer
            assert app.stats()["default"]["in_use"] == 1

        def spawned() -> bool:
            # A greenlet does not inherit its parent's binding: it checks out its own.
            with app.checkout():
                return connections["default"] is not outer

        assert gevent.spawn(spawned).get(timeout=5) is True
        assert connections["default"] is outer
    assert app.stats()["default"]["in_use"] == 0
