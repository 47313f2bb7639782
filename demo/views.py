"""The demo's pages: read and write, a streamed export, a slow report, the live pool."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator

from django import forms
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render

from . import workers
from .models import Note


class NoteForm(forms.ModelForm):
    class Meta:
        model = Note
        fields = ["author", "text"]


def notes(request: HttpRequest) -> HttpResponse:
    """Reads the latest notes and, on POST, writes one inside a transaction."""
    form = NoteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
        return redirect("notes")
    context = {
        "form": form,
        "notes": Note.objects.all()[:15],
        "count": Note.objects.count(),
        "vendor": connection.vendor,
    }
    return render(request, "demo/notes.html", context)


class _Echo:
    def write(self, value: str) -> str:
        return value


def export(request: HttpRequest) -> StreamingHttpResponse:
    """Every note as CSV, streamed: the generator keeps querying, 100 rows at a time,
    after the view has returned, on the connection the pool bound for this request."""
    writer = csv.writer(_Echo())

    def rows() -> Iterator[str]:
        yield writer.writerow(["id", "author", "text", "created", "connection"])
        last = 0
        while True:
            chunk = list(Note.objects.filter(id__gt=last).order_by("id")[:100])
            if not chunk:
                return
            for note in chunk:
                yield writer.writerow(
                    [note.id, note.author, note.text, note.created.isoformat(), id(connection.connection)]
                )
            last = chunk[-1].id

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="notes.csv"'
    return response


def slow(request: HttpRequest) -> HttpResponse:
    """A slow report holding its connection (?seconds=, at most 5)."""
    seconds = min(float(request.GET.get("seconds", "0.5")), 5.0)
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT SLEEP(%s), CONNECTION_ID()", [seconds])
            _, server_id = cursor.fetchone()
        return JsonResponse({"held_seconds": seconds, "connection_id": server_id})
    with transaction.atomic():  # elsewhere: hold the connection in a transaction
        count = Note.objects.count()
        time.sleep(seconds)  # cooperative under gevent
    return JsonResponse({"held_seconds": seconds, "notes": count})


def api(request: HttpRequest) -> JsonResponse:
    """A view that waits on an external API (an LLM, a payment provider) between two
    queries: what ``hold="transaction"`` is for. The wait is 50 ms (?ms=, at most 2000),
    cooperative under gevent, as an HTTP call would be."""
    wait = min(float(request.GET.get("ms", "50")), 2000.0) / 1000
    before = Note.objects.count()
    time.sleep(wait)  # the "API call": no database work, and, per transaction, no connection
    latest = Note.objects.order_by("-id").values_list("id", flat=True).first()
    return JsonResponse({"notes": before, "latest": latest, "waited_seconds": wait})


def health(request: HttpRequest) -> HttpResponse:
    """Touches no database; wsgi.py skips the pool for it, so it never queues."""
    return HttpResponse("ok", content_type="text/plain")


def _pool_state(request: HttpRequest) -> dict:
    middleware = request.META.get("wsgi_dbpool.middleware")
    state: dict = {
        "pid": os.getpid(),
        "database": connection.vendor,
        "pooling": middleware is not None,
        "time": time.time(),
    }
    if middleware is not None:
        state["aliases"] = middleware.stats()
        # Every worker's numbers, from the files they publish, and their sum: what
        # the whole server holds.
        # (the gunicorn workers, and a Celery worker running pool_tasks: make worker).
        others = workers.read_all() or {}
        others[os.getpid()] = {"kind": "gunicorn", "aliases": state["aliases"]}  # live, not 0.5 s old
        every = dict(sorted(others.items()))
        state["workers"] = {str(pid): worker["aliases"] for pid, worker in every.items()}
        state["kinds"] = {str(pid): worker["kind"] for pid, worker in every.items()}
        state["total"] = workers.summed({pid: worker["aliases"] for pid, worker in every.items()})
        state["settings"] = {
            "size": middleware.size,
            "max_outstanding": middleware.max_outstanding,
            "timeout": middleware.timeout,
            "linger": middleware.linger,
            "hold": middleware.hold,
        }
    return state


def pool_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_pool_state(request))


def pool_page(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/pool.html", {"state": _pool_state(request)})
