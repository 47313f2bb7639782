"""``reset="session"``: give the next holder a session like a freshly opened one.

The default return path (see :mod:`wsgi_dbpool.verdict`) costs no round trip and
clears transactions, but server session state set by hand outlives the request:
user variables, temporary tables, named locks (``GET_LOCK``), ``LOCK TABLES``,
``SET SESSION`` variables, ``USE``. With ``reset="session"`` every return asks the
server to reset the session (MySQL/MariaDB ``COM_RESET_CONNECTION``, PostgreSQL
``DISCARD ALL``), then replays what opening the connection set up: the driver's
connect options (database, character set, ``sql_mode``, ``init_command``) and
Django's own session set-up. A backend with neither gets a fresh connection instead.
"""

from __future__ import annotations

from typing import Any

from . import _internals
from .drivers import driver_of


def reset_session(wrapper: Any) -> bool:
    """Reset the server session of ``wrapper``'s open connection; False if unsupported.

    The wrapper must be out of any transaction (the verdict rolls back first).
    """
    raw = wrapper.connection
    if not driver_of(raw).reset_session(raw):  # COM_RESET_CONNECTION, DISCARD ALL
        return False
    wrapper.init_connection_state()
    # The server's autocommit is its default again: put back what Django believes.
    _internals.set_driver_autocommit(wrapper, wrapper.autocommit)
    return True
