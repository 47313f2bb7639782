"""Fixtures of the demo tests: ``python -m demo`` started as a new user runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.servers import ROOT, child_env, free_port
from tests.helpers import wait_until


class Demo:
    """A running ``python -m demo`` and what it printed."""

    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log = log

    def banner(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=40)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def start(*args: str, **env: str) -> Demo:
        port = free_port()
        log = tmp_path / f"demo-{port}.log"
        environ = child_env(DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"), **env)
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "demo", "--port", str(port), *args],
                cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, text=True,
            )
        demo = Demo(process, port, log)
        started.append(demo)
        wait_until(lambda: "Ctrl-C stops everything" in demo.banner() or process.poll() is not None,
                   timeout=120, what="the demo banner")
        assert process.poll() is None, demo.banner()
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.stop()
