"""``python -m wsgi_dbpool plan ...``: the capacity planner (see :mod:`wsgi_dbpool.plan`)."""

import sys

from .plan import main

if len(sys.argv) < 2 or sys.argv[1] != "plan":
    sys.exit("usage: python -m wsgi_dbpool plan --max-connections N --hosts N --workers N [...]")
sys.exit(main(sys.argv[2:]))
