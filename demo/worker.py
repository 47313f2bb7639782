"""``python -m demo.worker`` (``make worker``): the guestbook export, made by a Celery gevent worker.

Starts a throwaway Redis (the broker), prepares the demo's database as ``python -m demo``
does (SQLite by default; ``DEMO_DB=mariadb`` or ``DATABASE_URL`` as there), starts
``celery -A demo.celery worker -P gevent -c 50`` with ``pool_tasks(app, size=4,
max_outstanding=5)``, sends ``--exports`` exports at once and prints what the pool did.
``--keep`` leaves the worker running (Ctrl-C stops everything this started).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from demo.__main__ import ROOT, database, run_django


def main() -> None:
    # Ctrl-C (SIGINT) stops everything this started, also when a shell started us in the
    # background, where SIGINT comes ignored (make test's lanes do).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="python -m demo.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--exports", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--db", choices=["sqlite", "mariadb"], default=os.environ.get("DEMO_DB", "sqlite"))
    parser.add_argument("--keep", action="store_true", help="keep the worker running until Ctrl-C")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from testbed.redis import RedisServer, ensure_installed

    ensure_installed()
    with RedisServer() as redis_server, database(args.db) as (db_env, description):
        from demo import workers

        env = {
            **os.environ, **db_env, "DJANGO_SETTINGS_MODULE": "demo.settings",
            "CELERY_BROKER_URL": redis_server.url,
            "DEMO_POOL_DIR": workers.shared_dir(),  # its pool on make demo's live page
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        run_django(env, "migrate", "--no-input", "-v", "0")
        subprocess.run([sys.executable, "-m", "demo.seed"], cwd=ROOT, env=env, check=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "demo.celery", "worker", "-P", "gevent",
             "-c", str(args.concurrency), "--without-heartbeat", "--without-gossip",
             "--without-mingle", "--loglevel=WARNING"],
            cwd=ROOT, env=env,
        )
        try:
            _demonstrate(redis_server.url, args, description)
            if args.keep:
                print(f"  worker running; broker {redis_server.url}. Ctrl-C stops it.", flush=True)
                signal.signal(signal.SIGTERM, lambda signum, frame: None)
                try:
                    worker.wait()
                except KeyboardInterrupt:
                    pass
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)  # warm shutdown: the pool closes its connections
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(timeout=10)
            print("worker stopped", flush=True)


def _demonstrate(broker: str, args: argparse.Namespace, description: str) -> None:
    from celery import Celery

    client = Celery("demo.client", broker=broker, backend=broker)
    client.conf.broker_connection_retry_on_startup = True
    client.send_task("demo.celery.pool_stats").get(timeout=60)  # the worker is up
    started = time.monotonic()
    results = [client.send_task("demo.celery.export_notes") for _ in range(args.exports)]
    done = [r.get(timeout=120) for r in results]
    elapsed = time.monotonic() - started
    stats = client.send_task("demo.celery.pool_stats").get(timeout=30)["stats"]["default"]
    print(
        f"\n  {len(done)} exports of {done[0]['notes']} notes by one gevent worker "
        f"(-c {args.concurrency}) in {elapsed:.2f} s; last file {done[-1]['path']}\n"
        f"  database: {description}\n"
        f"  pool: size={stats['size']} max_outstanding={stats['max_outstanding']}; "
        f"checkouts={stats['checkouts']} waits={stats['waits']} timeouts={stats['timeouts']} "
        f"server connections opened={stats['opened']} idle now={stats['idle']}\n",
        flush=True,
    )
    client.close()


if __name__ == "__main__":
    main()
