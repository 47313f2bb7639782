"""Views for the max_hold tests (``tests/test_max_hold.py``): the shared site's URLs plus
one that gets stuck inside a transaction until the test lets it go."""

from __future__ import annotations

import gevent.event
from django.db import DatabaseError, connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from tests import site

# Set by the test to let every stuck view go on.
RELEASE = gevent.event.Event()
_SLEEP = {"mysql": "SELECT SLEEP(%s)", "postgresql": "SELECT pg_sleep(%s)"}


def stuck(request: HttpRequest) -> HttpResponse:
    """INSERTs a row inside ``atomic()`` and waits, holding its connection, until
    ``RELEASE`` (``where=app``) or inside a long statement (``where=db``); then one more
    statement, and the commit."""
    alias = request.GET.get("alias", "default")
    connection = connections[alias]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute("INSERT INTO items (name) VALUES ('stuck')")
        if request.GET.get("where") == "db":
            try:
                cursor.execute(_SLEEP[connection.vendor], [30])
            except DatabaseError:
                pass  # ended by the server: the statement after it must still be refused
        else:
            RELEASE.wait(timeout=60)
        cursor.execute("SELECT 1")
    return JsonResponse({"committed": True})


urlpatterns = [path("stuck/", stuck), *site.urlpatterns]
