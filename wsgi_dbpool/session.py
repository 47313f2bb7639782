"""``reset="session"``: wipe what a request left in the server session before reuse.

The default return path (see :mod:`wsgi_dbpool.binding`) costs no round trip and
clears transactions, but server session state set by hand outlives the request:
user variables, temporary tables, named locks (``GET_LOCK``), ``LOCK TABLES``,
``SET SESSION`` variables. With ``reset="session"`` every return asks the server to
reset the session (MySQL/MariaDB ``COM_RESET_CONNECTION``, PostgreSQL ``DISCARD ALL``)
and replays Django's own session set-up; a backend with neither gets a fresh
connection instead.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("wsgi_dbpool")

COM_RESET_CONNECTION = 0x1F  # MySQL >= 5.7, MariaDB >= 10.2

RESET_MODES = ("transaction", "session")


def reset_session(wrapper: Any) -> bool:
    """Reset the server session of ``wrapper``'s open connection; False if unsupported.

    Django's own per-connection set-up (isolation level, ``SQL_AUTO_IS_NULL``, time
    zone, autocommit) is replayed afterwards, as a new connection would have it.
    """
    raw = wrapper.connection
    if wrapper.vendor == "mysql" and hasattr(raw, "_execute_command"):  # PyMySQL
        # PyMySQL has no public call for this command; these are the two steps its
        # own commands (ping, autocommit) take: send the command, read the OK packet.
        raw._execute_command(COM_RESET_CONNECTION, b"")
        raw._read_ok_packet()
    elif wrapper.vendor == "postgresql":
        with raw.cursor() as cursor:
            cursor.execute("DISCARD ALL")
    else:
        return False
    wrapper.init_connection_state()
    # The server's autocommit is its default again: put back what Django believes.
    wrapper._set_autocommit(wrapper.autocommit)
    return True
