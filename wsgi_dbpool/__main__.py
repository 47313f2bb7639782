"""``python -m wsgi_dbpool plan ...``: the capacity planner (see :mod:`wsgi_dbpool.plan`);
``python -m wsgi_dbpool drain|pause|resume --pid N``: steer every worker of a running
server (see :mod:`wsgi_dbpool.control`)."""

import sys

from . import control
from .plan import main

if len(sys.argv) >= 2 and sys.argv[1] in control.COMMANDS:
    sys.exit(control.main(sys.argv[1:]))
if len(sys.argv) < 2 or sys.argv[1] != "plan":
    sys.exit(
        "usage: python -m wsgi_dbpool plan --max-connections N --hosts N --workers N [...]\n"
        "       python -m wsgi_dbpool drain|pause|resume --pid <gunicorn master pid>"
    )
sys.exit(main(sys.argv[2:]))
