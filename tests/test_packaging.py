"""The package as users get it: sdist and wheel build, install in a fresh venv, import."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_wheel_and_sdist_install_and_import(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheels[0])],
                   check=True, capture_output=True, timeout=300)
    smoke = (
        "import importlib.resources, wsgi_dbpool\n"
        "from wsgi_dbpool import PoolingMiddleware, PoolTimeout, PoolError\n"
        "assert sorted(wsgi_dbpool.__all__) == wsgi_dbpool.__all__\n"
        "assert importlib.resources.files('wsgi_dbpool').joinpath('py.typed').is_file()\n"
        "print(wsgi_dbpool.__version__)\n"
    )
    done = subprocess.run([str(python), "-c", smoke], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.1.0"
