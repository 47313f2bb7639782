"""gunicorn for the benchmarks: one gevent worker, room for every client, quiet."""

import os

worker_class = "gevent"
workers = int(os.environ.get("BENCH_WORKERS", "1"))
worker_connections = 4000
backlog = 4096
graceful_timeout = 10
timeout = 120
loglevel = "warning"
control_socket_disable = True  # gunicorn >= 24: no shared ~/.gunicorn control socket
