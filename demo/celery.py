"""The demo's Celery app: the guestbook export, generated in the background.

``celery -A demo.celery worker -P gevent -c 50`` with ``DJANGO_SETTINGS_MODULE=demo.settings``
and ``CELERY_BROKER_URL`` set (``make worker`` does all of it). The one line that matters is
``pool_tasks(...)``: every task runs on the demo's pooled, capped connections.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from celery import Celery, signals

from demo import workers
from wsgi_dbpool.celery import pool_tasks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

app = Celery("demo")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
pool = pool_tasks(
    app,
    size=int(os.environ.get("POOL_SIZE", "4")),
    max_outstanding=int(os.environ.get("POOL_MAX_OUTSTANDING", "5")),
    timeout=float(os.environ.get("POOL_TIMEOUT", "30")),
)

EXPORTS = Path(__file__).resolve().parent / "var" / "exports"


@signals.worker_ready.connect
def _publish(sender: object = None, **kwargs: object) -> None:
    """Show this worker's pool on the demo's live page, beside the gunicorn workers."""
    workers.publish(pool, kind="celery")


@signals.worker_shutdown.connect
def _unpublish(sender: object = None, **kwargs: object) -> None:
    workers.remove()


@app.task(bind=True)
def export_notes(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Write every note to ``demo/var/exports/<task id>.csv``; return the path and the count."""
    from demo.models import Note

    EXPORTS.mkdir(parents=True, exist_ok=True)
    path = EXPORTS / f"{self.request.id}.csv"
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "author", "text", "created"])
        for note in Note.objects.order_by("id").iterator(chunk_size=200):
            writer.writerow([note.id, note.author, note.text, note.created.isoformat()])
            count += 1
    return {"path": str(path), "notes": count}


@app.task
def pool_stats() -> dict[str, object]:
    """The worker process's pool, as ``pool.stats()`` sees it."""
    return {"pid": os.getpid(), "stats": pool.stats()}
