"""The Django site every benchmark stack serves: settings, views and WSGI in one module.

Chosen by environment variables, so one gunicorn command line serves each stack:
``BENCH_STACK`` (``per_request``, ``persistent``, ``wsgi_dbpool``), ``BENCH_DB_PORT``,
``POOL_SIZE``, ``POOL_MAX_OUTSTANDING``, ``BENCH_RESET``.
"""

from __future__ import annotations

import os

import pymysql

pymysql.version_info = (2, 2, 7, "final", 0)  # Django asks for mysqlclient's version
pymysql.install_as_MySQLdb()

STACK = os.environ.get("BENCH_STACK", "wsgi_dbpool")
POOL_SIZE = int(os.environ.get("POOL_SIZE", "4"))
POOL_MAX = int(os.environ.get("POOL_MAX_OUTSTANDING", "20"))

DEBUG = False
SECRET_KEY = "bench-only"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "bench.djsite"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": "app",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("BENCH_DB_PORT", "3306"),
        "CONN_MAX_AGE": 0 if STACK == "per_request" else 60,
        "OPTIONS": {"charset": "utf8mb4"},
    }
}

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.djsite")

from django.db import connection  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def query(request: HttpRequest) -> HttpResponse:
    """One indexed lookup."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM items WHERE id = %s", [1 + (id(request) >> 4) % 1000])
        row = cursor.fetchone()
    return HttpResponse(row[0] if row else "-")


def hold(request: HttpRequest) -> HttpResponse:
    """Holds its connection about 50 ms, as a slow report would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(0.05)")
    return HttpResponse("held")


def nodb(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("query/", query), path("hold/", hold), path("nodb/", nodb)]


def _application():  # type: ignore[no-untyped-def]
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    if STACK == "wsgi_dbpool":
        from wsgi_dbpool import PoolingMiddleware

        return PoolingMiddleware(
            app, size=POOL_SIZE, max_outstanding=POOL_MAX, timeout=30,
            linger=float(os.environ.get("POOL_LINGER", "5")),
            skip=lambda environ: environ["PATH_INFO"] == "/nodb/",
        )
    return app


application = _application()
