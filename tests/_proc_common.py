"""Django set-up for the subprocess tests, which must control when gevent patches."""

from __future__ import annotations

import os


def setup_django() -> None:
    from tests.mariadb import install_pymysql

    install_pymysql()
    if "TEST_PGBOUNCER_PORT" in os.environ:  # PostgreSQL behind PgBouncer in transaction mode
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "app", "USER": "app", "PASSWORD": "app",
            "HOST": "127.0.0.1", "PORT": os.environ["TEST_PGBOUNCER_PORT"],
            "CONN_MAX_AGE": 60,
            # Transaction pooling: no server-side cursors, no prepared statements (a later
            # transaction may run on another server connection).
            "DISABLE_SERVER_SIDE_CURSORS": True,
            "OPTIONS": {"prepare_threshold": None},
        }
        _configure(database)
        return
    database = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": "app",
        "HOST": "127.0.0.1",
        "PORT": os.environ["TEST_MARIADB_PORT"],
        "CONN_MAX_AGE": 60,
    }
    _configure(database)


def _configure(database: dict) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="tests.site",
        INSTALLED_APPS=[],
        DATABASES={"default": database},
        LOGGING_CONFIG=None,
    )
    django.setup()


def connection_id() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


def hold(seconds: float) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID(), SLEEP(%s)", [seconds])
        return int(cursor.fetchone()[0])
