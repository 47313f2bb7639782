"""What is wrong with a pooled alias's settings: one list of rules, read in two places.

The constructor of :class:`~wsgi_dbpool.PoolingMiddleware` refuses the errors and warns
about the warnings (:func:`refuse_or_warn`); Django's system checks (``manage.py check``,
and every command that runs them) report the same messages with ids that
``SILENCED_SYSTEM_CHECKS`` accepts (:func:`check_pools`):

=====================  ==========================================================
``wsgi_dbpool.E001``   ``OPTIONS["pool"]``: Django's own pool stacked under ours
``wsgi_dbpool.E002``   ``hold="transaction"`` on PostgreSQL without
                       ``DISABLE_SERVER_SIDE_CURSORS``
``wsgi_dbpool.W001``   ``CONN_MAX_AGE = 0`` on a pooled alias
``wsgi_dbpool.W002``   ``AUTOCOMMIT = False`` with ``hold="transaction"``
``wsgi_dbpool.W000``   ``WSGI_APPLICATION`` could not be imported to read the settings
=====================  ==========================================================

How the checks find the middleware's settings (``aliases``, ``hold``): they live in
``wsgi.py``, which ``manage.py`` does not import. So the checks look at the middlewares
alive in the process (a test, ``runserver`` once it served); when there are none, they
import ``settings.WSGI_APPLICATION`` as ``runserver`` does, and the first
``PoolingMiddleware`` it builds stops there, handing back its settings, before it
installs anything (no pool, no signal receiver, no connection). Registered by
``INSTALLED_APPS = [..., "wsgi_dbpool"]`` (``wsgi_dbpool.apps``), and by every
middleware built in the process.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

logger = logging.getLogger("wsgi_dbpool")

# Every middleware built in this process, for the checks (weak: the checks keep none alive).
_live: weakref.WeakSet[Any] = weakref.WeakSet()
# True while check_pools() imports WSGI_APPLICATION to read the settings.
_inspecting = False


class _Inspected(BaseException):
    """Raised by the constructor while the checks import ``WSGI_APPLICATION``: carries the
    settings out and stops ``wsgi.py`` before the middleware installs anything.
    ``BaseException``, so an ``except Exception`` in ``wsgi.py`` does not swallow it."""

    def __init__(self, aliases: tuple[str, ...], hold: str) -> None:
        super().__init__()
        self.aliases = aliases
        self.hold = hold


def problems(aliases: Iterable[str], hold: str) -> list[CheckMessage]:
    """Every rule, for the pooled ``aliases`` of ``settings.DATABASES`` under ``hold``."""
    from django.conf import settings

    found: list[CheckMessage] = []
    for alias in aliases:
        if alias in settings.DATABASES:  # else a live middleware's alias since removed
            found += _alias_problems(alias, settings.DATABASES[alias], hold)
    return found


def _alias_problems(alias: str, database: dict[str, Any], hold: str) -> list[CheckMessage]:
    from django.core.checks import Error, Warning

    found: list[CheckMessage] = []
    where = f"DATABASES[{alias!r}]"
    if (database.get("OPTIONS") or {}).get("pool"):
        found.append(Error(
            f"{where}['OPTIONS']['pool'] turns on Django's own connection pool, and this "
            f"alias is pooled by wsgi_dbpool too: the two pools would stack. Remove 'pool' "
            f"from OPTIONS (wsgi_dbpool's size and max_outstanding replace it), or leave "
            f"{alias!r} out of PoolingMiddleware(aliases=...)",
            obj=where, id="wsgi_dbpool.E001",
        ))
    if (
        hold == "transaction"
        and "postgresql" in database.get("ENGINE", "")
        and not database.get("DISABLE_SERVER_SIDE_CURSORS")
    ):
        found.append(Error(
            f"hold='transaction' needs {where}['DISABLE_SERVER_SIDE_CURSORS'] = True: a "
            f"server-side cursor (QuerySet.iterator()) lives on in the session after its "
            f"statement, and the next fetch could run on another connection. Set it (as "
            f"behind PgBouncer in transaction mode), or use hold='lazy'",
            obj=where, id="wsgi_dbpool.E002",
        ))
    if database.get("CONN_MAX_AGE", 0) == 0:
        found.append(Warning(
            f"{where}['CONN_MAX_AGE'] is 0: Django closes the connection at the end of "
            f"every request, so the pool cannot reuse it. Set CONN_MAX_AGE to a number of "
            f"seconds below the server's wait_timeout (e.g. 60), or None for no limit.",
            obj=where, id="wsgi_dbpool.W001",
        ))
    if hold == "transaction" and not database.get("AUTOCOMMIT", True):
        found.append(Warning(
            f"hold='transaction' on {alias!r}, whose AUTOCOMMIT is False: every statement "
            f"opens a transaction Django leaves to you, so a connection is held until you "
            f"commit or roll back and the request ends, as with hold='lazy'",
            obj=where, id="wsgi_dbpool.W002",
        ))
    return found


def refuse_or_warn(middleware: Any, aliases: tuple[str, ...], hold: str) -> None:
    """The constructor's side: refuse the first error, log (and, for ``CONN_MAX_AGE``,
    ``warnings.warn``) each warning; then watch ``middleware`` for the system checks."""
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    if _inspecting:
        raise _Inspected(aliases, hold)
    found = problems(aliases, hold)
    for message in found:
        if message.is_serious():
            raise ImproperlyConfigured(message.msg)
    for message in found:
        logger.warning("%s", message.msg)
        if message.id == "wsgi_dbpool.W001":
            warnings.warn(message.msg, RuntimeWarning, stacklevel=3)  # at the user's line
    _live.add(middleware)
    checks.register(check_pools, "wsgi_dbpool")  # a set: once however many are built


def check_pools(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The system check: :func:`problems` for every middleware of the process, or, with
    none, for the one ``settings.WSGI_APPLICATION`` builds."""
    configurations = {(m.aliases, m.settings.hold) for m in list(_live)}
    found: list[CheckMessage] = []
    if not configurations:
        inspected = _inspect_wsgi_application()
        if isinstance(inspected, tuple):
            configurations.add(inspected)
        elif inspected is not None:
            found.append(inspected)
    for aliases, hold in sorted(configurations):
        found.extend(m for m in problems(aliases, hold) if m not in found)
    return found


def _inspect_wsgi_application() -> tuple[tuple[str, ...], str] | CheckMessage | None:
    """Import ``WSGI_APPLICATION`` until its first ``PoolingMiddleware`` reports its settings."""
    global _inspecting
    from django.conf import settings
    from django.core.checks import Warning
    from django.utils.module_loading import import_string

    path = getattr(settings, "WSGI_APPLICATION", None)
    if not path:
        return None
    _inspecting = True
    try:
        import_string(path)
    except _Inspected as inspected:
        return inspected.aliases, inspected.hold
    except Exception as exc:
        return Warning(
            f"could not import WSGI_APPLICATION {path!r} to read PoolingMiddleware's settings "
            f"({type(exc).__name__}: {exc}); the pool's settings were not checked",
            hint="Fix the import (runserver and gunicorn would fail on it too), or silence "
            "wsgi_dbpool.W000 where wsgi.py cannot be imported",
            id="wsgi_dbpool.W000",
        )
    finally:
        _inspecting = False
    return None  # no PoolingMiddleware in it
