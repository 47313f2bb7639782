"""``python -m bench.storm_limit PORT SLOTS SECONDS``: holds per second with no HTTP, no Django.

SLOTS PyMySQL connections (as the app user) each run ``SELECT SLEEP(0.05)`` back to
back under gevent for SECONDS; prints the rate. This is the ceiling a pool capped at
SLOTS connections can reach on the storm scenario.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import pymysql  # noqa: E402


def main() -> None:
    port, slots, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    # Connect first (a connect costs ~25 ms of CPU), then count only the holds.
    connections = [
        pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="app")
        for _ in range(slots)
    ]
    done = 0
    deadline = time.monotonic() + seconds

    def worker(conn: pymysql.Connection) -> None:
        nonlocal done
        with conn.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute("SELECT SLEEP(0.05)")
                cursor.fetchall()
                done += 1

    started = time.monotonic()
    gevent.joinall([gevent.spawn(worker, c) for c in connections], raise_error=True)
    elapsed = time.monotonic() - started
    for conn in connections:
        conn.close()
    print(f"{done / elapsed:.1f}")


if __name__ == "__main__":
    main()
