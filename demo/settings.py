"""Demo settings. The database comes from the launcher (``DEMO_DATABASE``, JSON),
``DATABASE_URL`` (parsed with dj-database-url), or an SQLite file under ``demo/var/``."""

from __future__ import annotations

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
VAR = HERE / "var"

DEBUG = False
SECRET_KEY = os.environ.get("DEMO_SECRET_KEY", "demo-only-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
INSTALLED_APPS = ["django.contrib.staticfiles", "demo"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database() -> dict:
    if "DEMO_DATABASE" in os.environ:
        return json.loads(os.environ["DEMO_DATABASE"])
    if "DATABASE_URL" in os.environ:
        import dj_database_url

        return dict(dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60))
    path = Path(os.environ.get("DEMO_SQLITE_PATH", VAR / "demo.sqlite3"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "CONN_MAX_AGE": 60,
        "OPTIONS": {"timeout": 20},
    }


DATABASES = {"default": _database()}
if DATABASES["default"]["ENGINE"].endswith("mysql"):
    import pymysql

    pymysql.install_as_MySQLdb()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "wsgi_dbpool": {"handlers": ["console"], "level": "INFO"},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
