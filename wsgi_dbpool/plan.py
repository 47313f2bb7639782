"""``python -m wsgi_dbpool plan``: size the pool for a fleet, with the arithmetic shown.

Every gunicorn worker process has its own pool, so the database sees up to
``hosts × workers × max_outstanding`` connections per alias. This planner divides the
server's ``max_connections`` (less a reserve for admin tools, migrations, cron jobs)
among the processes, then derives ``size`` and gunicorn's ``worker_connections`` from
how long a request holds its connection and how long it may wait.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    processes: int
    available: int
    max_outstanding: int
    size: int
    worker_connections: int
    fits: bool
    lines: tuple[str, ...]


def plan(
    *,
    max_connections: int,
    hosts: int,
    workers: int,
    aliases: int = 1,
    reserve: int | None = None,
    hold_ms: float = 50.0,
    timeout: float = 5.0,
) -> Plan:
    """The numbers, and the sentences that explain them."""
    for name, value in (("max_connections", max_connections), ("hosts", hosts),
                        ("workers", workers), ("aliases", aliases)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if hold_ms <= 0 or timeout <= 0:
        raise ValueError("hold_ms and timeout must be > 0")
    reserve = max(3, math.ceil(max_connections * 0.1)) if reserve is None else reserve
    processes = hosts * workers
    available = max_connections - reserve
    per_process = available // (processes * aliases)
    fits = per_process >= 1
    max_outstanding = max(per_process, 1)
    size = max(1, min(4, max_outstanding))
    # A worker can serve max_outstanding holds at once, max_outstanding / hold per second;
    # accepting more requests than it can serve within `timeout` only turns them into 503s.
    servable = math.ceil(max_outstanding * timeout * 1000 / hold_ms)
    worker_connections = max(max_outstanding, min(servable, 1000))
    lines = [
        f"processes          = hosts × workers = {hosts} × {workers} = {processes}",
        f"available          = max_connections − reserve = {max_connections} − {reserve} = {available}",
        f"max_outstanding    = available ÷ (processes × aliases on this server) "
        f"= {available} ÷ ({processes} × {aliases}) = {per_process}",
        f"size               = min(4, max_outstanding) = {size}",
        f"worker_connections = max_outstanding × timeout ÷ hold = {max_outstanding} × {timeout:g} s "
        f"÷ {hold_ms:g} ms = {servable} (capped to 1000, at least max_outstanding) = {worker_connections}",
        f"worst case at the server: {processes} × {aliases} × {max_outstanding} = "
        f"{processes * aliases * max_outstanding} of {max_connections} connections",
    ]
    return Plan(processes, available, max_outstanding, size, worker_connections, fits, tuple(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsgi_dbpool plan", description=__doc__.split("\n")[0])
    parser.add_argument("--max-connections", type=int, required=True, help="the server's max_connections")
    parser.add_argument("--hosts", type=int, required=True, help="machines running the app")
    parser.add_argument("--workers", type=int, required=True, help="gunicorn workers per machine")
    parser.add_argument("--aliases", type=int, default=1, help="pooled aliases on this database server")
    parser.add_argument("--reserve", type=int, help="connections kept free for others (default 10%%)")
    parser.add_argument("--hold-ms", type=float, default=50.0,
                        help="typical time a request holds its connection")
    parser.add_argument("--timeout", type=float, default=5.0, help="the pool's timeout, seconds")
    args = parser.parse_args(argv)
    result = plan(max_connections=args.max_connections, hosts=args.hosts, workers=args.workers,
                  aliases=args.aliases, reserve=args.reserve, hold_ms=args.hold_ms, timeout=args.timeout)
    print("\n".join(result.lines))
    print()
    if not result.fits:
        print(f"WARNING: the fleet does not fit: {result.processes} processes × {args.aliases} alias(es) "
              f"need at least one connection each, and the server offers {result.available}. "
              f"Put a server-side pooler in between (PgBouncer in transaction mode for PostgreSQL, "
              f"ProxySQL for MySQL/MariaDB), raise max_connections, or run fewer workers.")
        return 1
    print(f"PoolingMiddleware(app, size={result.size}, max_outstanding={result.max_outstanding}, "
          f"timeout={args.timeout:g})")
    print(f"gunicorn -k gevent -w {args.workers} --worker-connections {result.worker_connections}")
    return 0
