"""The package as users get it: sdist and wheel build, install in a fresh venv, import; and
an install into a project that already has the newest Django keeps that Django."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import django
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    return out


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> str:
    done = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_wheel_and_sdist_install_and_import(dist, tmp_path):
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    python = fresh_venv(tmp_path / "venv")
    pip(python, "install", "-q", str(wheels[0]))
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


def test_install_keeps_the_django_a_project_already_has(dist, tmp_path):
    """A Django 6.1 project that installs us keeps its Django: the requirement admits it.

    (``Django>=4.2,<6`` made pip downgrade such a project to 5.2.) The Django of the
    venv running the tests is installed first: ``make test`` runs this on the newest one.
    """
    python = fresh_venv(tmp_path / "project")
    pip(python, "install", "-q", f"Django=={django.__version__}")
    pip(python, "install", "-q", str(next(dist.glob("*.whl"))))
    shown = pip(python, "show", "Django")
    assert f"Version: {django.__version__}\n" in shown, shown
    listed = pip(python, "check")  # nothing installed conflicts with anything else
    assert "No broken requirements" in listed
