"""Django set-up for the subprocess tests, which must control when gevent patches."""

from __future__ import annotations

import os


def setup_django() -> None:
    """Configure Django on ``TEST_PGBOUNCER_PORT`` (PostgreSQL behind PgBouncer in
    transaction mode) when set, else on the MariaDB at ``TEST_MARIADB_PORT``."""
    import django
    from django.conf import settings

    from testbed.mariadb import install_pymysql, mysql_settings
    from testbed.postgres import postgres_settings
    from testbed.servers import site_settings

    install_pymysql()
    if "TEST_PGBOUNCER_PORT" in os.environ:
        # Transaction pooling: no server-side cursors, no prepared statements (a later
        # transaction may run on another server connection).
        database = postgres_settings(
            os.environ["TEST_PGBOUNCER_PORT"], options={"prepare_threshold": None},
            DISABLE_SERVER_SIDE_CURSORS=True,
        )
    else:
        database = mysql_settings(os.environ["TEST_MARIADB_PORT"])
    settings.configure(**site_settings({"default": database}, urlconf="tests.site"))
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
