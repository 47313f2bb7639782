"""``python -m demo``: migrate, seed and serve the demo under gunicorn gevent workers.

The database: SQLite under demo/var/ by default; ``DEMO_DB=mariadb`` starts a throwaway
MariaDB (installed with apt-get if missing) for as long as the demo runs;
``DATABASE_URL`` points at your own MySQL/MariaDB/PostgreSQL. Ctrl-C stops everything
this command started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.servers import Gunicorn, child_env  # noqa: E402


@contextlib.contextmanager
def database(kind: str) -> Iterator[tuple[dict[str, str], str]]:
    """Environment for the demo's processes, and a one-line description of the database."""
    if os.environ.get("DATABASE_URL"):
        yield {}, "DATABASE_URL=" + os.environ["DATABASE_URL"].split("@")[-1]
        return
    if kind == "mariadb":
        from testbed.mariadb import MariaDBServer, ensure_installed

        ensure_installed()
        with MariaDBServer(max_connections=100) as server:
            settings = server.django_settings(conn_max_age=60)
            yield (
                {"DEMO_DATABASE": json.dumps(settings)},
                f"throwaway MariaDB on 127.0.0.1:{server.port} (datadir {server.datadir}, removed on exit)",
            )
        return
    path = os.environ.get("DEMO_SQLITE_PATH", str(ROOT / "demo" / "var" / "demo.sqlite3"))
    yield {}, f"SQLite at {path}"


def run_django(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")))
    parser.add_argument("--db", choices=["sqlite", "mariadb"], default=os.environ.get("DEMO_DB", "sqlite"))
    args = parser.parse_args()

    stop = {"asked": False}

    def ask_stop(signum: int, frame: object) -> None:
        stop["asked"] = True

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)

    from demo import workers

    with database(args.db) as (db_env, description):
        # DEMO_POOL_DIR: each worker's pool numbers, for /pool/ (demo/workers.py); shared
        # with python -m demo.worker, so a Celery worker shows on the page too.
        env = child_env(**db_env, DJANGO_SETTINGS_MODULE="demo.settings", DEMO_POOL_DIR=workers.shared_dir())
        run_django(env, "migrate", "--no-input", "-v", "0")
        subprocess.run([sys.executable, "-m", "demo.seed"], cwd=ROOT, env=env, check=True)
        gunicorn = Gunicorn(
            "demo.wsgi:application", config="demo/gunicorn_conf.py", args=["-w", str(args.workers)],
            env=env, port=args.port, capture=False,
        )
        try:
            try:
                gunicorn.wait_listening()
            except RuntimeError as exc:
                raise SystemExit(str(exc)) from None
            pool = "off (POOL=off)" if env.get("POOL") == "off" else (
                f"size={env.get('POOL_SIZE', '4')} max_outstanding={env.get('POOL_MAX_OUTSTANDING', '20')} "
                f"timeout={env.get('POOL_TIMEOUT', '10')}s"
            )
            print(
                f"\n  wsgi_dbpool demo on http://127.0.0.1:{args.port}/\n"
                f"    notes (read/write)   http://127.0.0.1:{args.port}/\n"
                f"    streamed CSV export  http://127.0.0.1:{args.port}/export.csv\n"
                f"    slow report          http://127.0.0.1:{args.port}/slow?seconds=1\n"
                f"    live pool            http://127.0.0.1:{args.port}/pool/   (JSON: /pool.json)\n"
                f"  database: {description}\n"
                f"  pool:     {pool}; gunicorn -k gevent, {args.workers} worker(s)\n"
                f"  Ctrl-C stops everything this started.\n",
                flush=True,
            )
            while not stop["asked"] and gunicorn.process.poll() is None:
                time.sleep(0.2)
        finally:
            gunicorn.stop()
            print("demo stopped", flush=True)


if __name__ == "__main__":
    main()
