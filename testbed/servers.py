"""The harness the tests, the benchmarks and the demo share: written once, used everywhere.

Loopback ports and waiting for a listener, Debian packages installed when missing (we run
as root on CI), a gunicorn on a free port with its output kept, a sampler of the peak
number of server connections, the common part of a test or bench Django site, and the
:class:`DatabaseServer` vocabulary that ``testbed.mariadb.MariaDBServer`` and
``testbed.postgres.PostgresServer`` both speak.

Nothing here imports gevent: under ``python -m gevent.monkey`` (the suite) ``time.sleep``
and ``threading`` are cooperative; in a plain process (bench, demo) they are native.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

logger = logging.getLogger("testbed.servers")

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_SBIN = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


# -- ports ----------------------------------------------------------------------------


_PORTS = random.Random()  # its own: the tests' seeded sequences must not see these draws


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback TCP port nobody has bound right now, below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) comes from the range it also gives every outgoing
    connection: with suites running side by side (make test's lanes), a client socket could
    take it before the server binds it ("Address already in use"). Below the range only
    servers bind, each checked free here.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORTS.randrange(20000, low) if low > 20100 else 0
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free loopback port found below {low}")


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    *,
    process: subprocess.Popen[Any] | None = None,
    timeout: float = 30.0,
    what: str = "the server",
    details: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``port`` accepts connections; raise RuntimeError if ``process`` exits
    first or ``timeout`` passes. ``details()`` (a log tail) is added to the message."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {process.returncode} before listening on "
                f"port {port}\n{details()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s\n{details()}")
        time.sleep(0.05)


# -- Debian packages --------------------------------------------------------------------


def which(name: str) -> str | None:
    """``shutil.which``, also looking in the sbin folders a non-login PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def apt_install(*packages: str) -> None:
    """``apt-get install`` Debian packages (root on CI); RuntimeError naming them if it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    logger.info("installing Debian packages: %s", " ".join(packages))
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"installing {' '.join(packages)} failed ({exc}); as root: "
            f"apt-get install {' '.join(packages)}"
        ) from exc


# What the suite, the demo and the benchmarks run, and the Debian packages that bring it.
DEBIAN_PACKAGES: dict[str, tuple[str, ...]] = {
    "mariadbd": ("mariadb-server", "mariadb-client"),
    "mariadb-install-db": ("mariadb-server",),
    "pg_ctlcluster": ("postgresql",),  # the server itself: /usr/lib/postgresql/*/bin
    "psql": ("postgresql-client",),
    "pgbouncer": ("pgbouncer",),
    "redis-server": ("redis-server",),
    "chromium": ("chromium",),
    "chromedriver": ("chromium-driver",),
    "wrk": ("wrk",),
}


def ensure_all_installed() -> None:
    """Everything the suite may start, in one ``apt-get`` call when anything is missing.

    ``make test`` calls it once before it runs several suites side by side, so that two
    harnesses never race for apt's lock.
    """
    missing = sorted({p for name, packages in DEBIAN_PACKAGES.items() if which(name) is None
                      for p in packages})
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        missing.append("postgresql")
    if missing:
        apt_install(*sorted(set(missing)))


def ensure_binary(name: str, *packages: str) -> str:
    """The path of ``name``, installing ``packages`` first when it is missing."""
    found = which(name)
    if found is None:
        apt_install(*packages)
        found = which(name)
    if found is None:
        raise RuntimeError(f"{name} not found after apt-get install {' '.join(packages)}")
    return found


# -- processes ----------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process: this one's, the checkout on
    ``PYTHONPATH``, no inherited ``DJANGO_SETTINGS_MODULE`` unless given, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def stop_process(process: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Send ``sig`` and wait; SIGKILL the process group (or the process) after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
        process.wait(timeout=10)


class Gunicorn:
    """One gunicorn serving ``app`` (``module:attribute``) on a free loopback port.

    Its output goes to a temporary file (:meth:`output`) unless ``capture=False`` (the
    demo shows it on the terminal). It runs in a session of its own, so that
    :meth:`stop` can kill the master and its workers together if SIGTERM is not enough.
    """

    def __init__(
        self,
        app: str,
        *,
        config: str,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port: int | None = None,
        capture: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.url = f"http://{self.address}"
        self._log = tempfile.TemporaryFile(mode="w+") if capture else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", config, "-b", self.address, *args, app],
            cwd=ROOT, env=env if env is not None else child_env(),
            stdout=self._log, stderr=subprocess.STDOUT if capture else None,
            start_new_session=True,
        )

    def wait_listening(self, timeout: float = 30.0) -> Gunicorn:
        """Return once it accepts connections; RuntimeError with its output if it died."""
        try:
            wait_for_port(self.port, process=self.process, timeout=timeout, what="gunicorn",
                          details=lambda: self.output()[-3000:])
        except RuntimeError:
            self.stop()
            raise
        return self

    def output(self) -> str:
        """Everything it printed so far (empty when not captured)."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (gunicorn's graceful stop), SIGKILL to the group after ``timeout``."""
        stop_process(self.process, timeout=timeout)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Gunicorn:
        return self.wait_listening()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- databases ------------------------------------------------------------------------------


class DatabaseServer(Protocol):
    """What the suite, the benchmarks and the demo ask of a throwaway database server.

    The application connects as ``user`` over TCP; the admin helpers connect as the
    server's superuser over its unix socket, so they never count as the application's.
    """

    host: str
    port: int
    user: str
    password: str
    database: str

    def start(self) -> DatabaseServer: ...

    def stop(self) -> None: ...

    def django_settings(
        self, *, conn_max_age: int | None = 60, options: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]: ...

    def admin_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]: ...

    def create_items(self, rows: int = 0) -> None: ...

    def processlist(self, user: str = "app") -> list[dict[str, Any]]: ...

    def connection_count(self, user: str = "app") -> int: ...

    def kill(self, connection_id: int) -> None: ...

    def kill_user(self, user: str = "app") -> None: ...


class ThrowawayServer:
    """What the throwaway servers share: a context manager, ``running``, a log tail.

    Subclasses set ``_process`` (the server's Popen, None when stopped) and define
    ``start()`` (returning self) and ``stop()``.
    """

    _process: subprocess.Popen[Any] | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the server process this object started is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _tail(path: str, lines: int = 30) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return f"(no log at {path})"


class PeakSampler:
    """Samples ``server.connection_count(user)`` every ``every`` seconds; ``peak`` is the most seen.

    A thread, hence a greenlet under gevent. ``ignore_errors`` keeps it sampling while
    the server restarts (the soak, the storms); otherwise an error stops it and
    :meth:`stop` raises it.
    """

    def __init__(
        self, server: DatabaseServer, *, every: float = 0.02, user: str = "app", ignore_errors: bool = False
    ) -> None:
        self.peak = 0
        self._server = server
        self._every = every
        self._user = user
        self._ignore_errors = ignore_errors
        self._error: Exception | None = None
        self._running = True
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            try:
                self.peak = max(self.peak, self._server.connection_count(self._user))
            except Exception as exc:
                if not self._ignore_errors:
                    self._error = exc
                    return
            time.sleep(self._every)

    def stop(self) -> int:
        """Stop sampling; the peak."""
        self._running = False
        self._thread.join(timeout=5)
        if self._error is not None:
            raise RuntimeError(f"sampling the server's connections failed: {self._error!r}") from self._error
        return self.peak

    def __enter__(self) -> PeakSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Django --------------------------------------------------------------------------------


def site_settings(
    databases: dict[str, dict[str, Any]], *, urlconf: str | None = None, **extra: Any
) -> dict[str, Any]:
    """``settings.configure()`` arguments for a bare test or bench site: no apps, no
    middleware, Django's logging left alone; ``extra`` adds or overrides."""
    settings: dict[str, Any] = {
        "DEBUG": False,
        "SECRET_KEY": "tests-only",
        "ALLOWED_HOSTS": ["*"],
        "INSTALLED_APPS": [],
        "MIDDLEWARE": [],
        "USE_TZ": True,
        "LOGGING_CONFIG": None,
        "DATABASES": databases,
    }
    if urlconf is not None:
        settings["ROOT_URLCONF"] = urlconf
    return {**settings, **extra}


def run_until_interrupted(server: Any, describe: Callable[[], str]) -> None:
    """``python -m testbed.mariadb`` / ``testbed.postgres``: start ``server``, print ``describe()``,
    and keep it until Ctrl-C or SIGTERM, then stop it and remove its files."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # A plain SIGTERM would end Python without running atexit, leaving the server behind;
    # SIGINT is set explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    with server:
        print(describe(), flush=True)
        try:
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if TYPE_CHECKING:  # mypy checks that both harnesses speak the protocol
    from testbed.mariadb import MariaDBServer
    from testbed.postgres import PostgresServer

    def _speak_the_protocol(m: MariaDBServer, p: PostgresServer) -> tuple[DatabaseServer, DatabaseServer]:
        return m, p
