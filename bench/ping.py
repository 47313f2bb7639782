"""What the stale-connection check costs: one ping, paid only after ``ping_after`` idle.

    python -m bench.ping

Against a throwaway MariaDB on loopback, under gevent: Django's ``is_usable()`` (a
``COM_PING``) beside a ``SELECT 1`` and a fresh connect, medians over many calls.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.mariadb import MariaDBServer, ensure_installed, install_pymysql  # noqa: E402
from testbed.servers import site_settings  # noqa: E402


def median_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    ensure_installed()
    install_pymysql()
    import django
    from django.conf import settings

    with MariaDBServer() as db:
        settings.configure(**site_settings({"default": db.django_settings()}))
        django.setup()
        from django.db import connections

        wrapper = connections["default"]
        wrapper.ensure_connection()

        def select_one() -> None:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()

        def reconnect() -> None:
            wrapper.close()
            wrapper.ensure_connection()

        ping = median_us(wrapper.is_usable, 2000)
        select = median_us(select_one, 2000)
        connect = median_us(reconnect, 100)
    print("# stale check cost (loopback MariaDB, PyMySQL, gevent), median µs per call\n")
    print("| what | µs |")
    print("|---|---:|")
    print(f"| ping (is_usable), paid after ping_after idle | {ping:.0f} |")
    print(f"| SELECT 1, for scale | {select:.0f} |")
    print(f"| a fresh connect (close + connect + Django's session set-up) | {connect:.0f} |")


if __name__ == "__main__":
    main()
