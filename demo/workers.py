"""Every worker's pool numbers, for the live pool page: one small file per worker.

A request reaches one worker, whose ``stats()`` is that worker's alone. So each worker
writes its numbers to ``$DEMO_POOL_DIR/<pid>.json`` twice a second (``publish``, from
gunicorn's ``post_worker_init``, and from the Celery worker's ``worker_ready`` in
``demo/celery.py``, labelled by its kind), and the page reads every fresh file
(``read_all``): per worker, and summed. A worker that stops removes its file; one that
died is dropped once its file is a few seconds old. ``python -m demo`` and
``python -m demo.worker`` share :data:`DEFAULT_DIR` unless ``DEMO_POOL_DIR`` is set, so
``make demo`` and ``make worker`` show on one page.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

DIR_ENV = "DEMO_POOL_DIR"
DEFAULT_DIR = Path(__file__).resolve().parent / "var" / "pool"
EVERY = 0.5
STALE_AFTER = 3.0


def _folder() -> Path | None:
    folder = os.environ.get(DIR_ENV)
    return Path(folder) if folder else None


def shared_dir() -> str:
    """``DEMO_POOL_DIR``, or :data:`DEFAULT_DIR` (made if missing): for the launchers."""
    folder = os.environ.get(DIR_ENV) or str(DEFAULT_DIR)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return folder


def publish(application: Any, every: float = EVERY, kind: str = "gunicorn") -> None:
    """In a worker: write its pool's numbers every ``every`` seconds, in the background.
    ``kind`` names the worker on the page: ``gunicorn``, or ``celery``."""
    folder = _folder()
    if folder is None or not hasattr(application, "stats"):
        return
    target = folder / f"{os.getpid()}.json"

    def write() -> None:
        if _stopped.is_set():  # removed: a timer that fires later must not bring it back
            return
        body = {"pid": os.getpid(), "kind": kind, "time": time.time(), "aliases": application.stats()}
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(body))
        os.replace(temporary, target)  # readers never see half a file
        timer = threading.Timer(every, write)  # a greenlet under gevent
        timer.daemon = True
        timer.start()

    write()


# Set by remove(): the worker is stopping, its numbers stay off the page.
_stopped = threading.Event()


def remove() -> None:
    """In a worker that stops: its numbers leave the page at once, and no timer still
    pending writes them back (a slow shutdown outlived one, seen in CI)."""
    _stopped.set()
    folder = _folder()
    if folder is not None:
        with contextlib.suppress(OSError):
            (folder / f"{os.getpid()}.json").unlink()


def read_all() -> dict[int, dict[str, Any]] | None:
    """Every live worker's ``{"kind": ..., "aliases": {alias: stats}}``, by pid; None when
    nothing is published."""
    folder = _folder()
    if folder is None:
        return None
    workers: dict[int, dict[str, Any]] = {}
    now = time.time()
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(path.read_text())
            if now - body["time"] <= STALE_AFTER:
                workers[int(body["pid"])] = {
                    "kind": body.get("kind", "gunicorn"), "aliases": body["aliases"],
                }
    return workers or None


def summed(workers: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The workers' numbers (``{alias: stats}`` by pid) added up, per alias (settings like
    ``size`` too: the totals)."""
    total: dict[str, dict[str, float]] = {}
    for aliases in workers.values():
        for alias, numbers in aliases.items():
            into = total.setdefault(alias, {})
            for key, value in numbers.items():
                if isinstance(value, (int, float)):
                    into[key] = into.get(key, 0) + value
    return total
