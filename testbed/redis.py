"""A throwaway Redis server: the Celery broker and result store of the Celery tests.

Debian's ``redis-server`` (installed with ``apt-get`` when missing), on a free loopback
port, in a temporary directory, with persistence off; gone (process and files) after
:meth:`RedisServer.stop` or at interpreter exit.

``python -m testbed.redis`` starts one and waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from testbed.servers import ensure_binary, free_port, which


def ensure_installed() -> None:
    """Install Debian's Redis server when it is missing (we run as root on CI)."""
    ensure_binary("redis-server", "redis-server")


class RedisServer:
    """One ``redis-server`` on loopback, for as long as the caller needs it."""

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.basedir = tempfile.mkdtemp(prefix="wsgi_dbpool-redis-")
        self.log_path = os.path.join(self.basedir, "redis.log")
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        """Start ``redis-server`` and wait until it answers ``PING``."""
        binary = which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run ensure_installed() first")
        args = [
            binary, "--port", str(self.port), "--bind", self.host, "--dir", self.basedir,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", self.log_path, "--databases", "2",
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start-up:\n{self._log_tail()}")
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return self
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer within 30 s ({exc}):\n{self._log_tail()}"
                    ) from None
            time.sleep(0.05)

    def command(self, *words: str) -> bytes:
        """Send one inline command and return the first reply line (``PING``, ``FLUSHALL``)."""
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(4096)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server and remove its files; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """``python -m testbed.redis``: one server for a person to poke at, until Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    ensure_installed()
    with RedisServer() as server:
        print(f"{server.url}   (Ctrl-C stops and cleans up)")
        with contextlib.suppress(KeyboardInterrupt):
            while server._process is not None and server._process.poll() is None:
                time.sleep(1)


if __name__ == "__main__":
    main()
