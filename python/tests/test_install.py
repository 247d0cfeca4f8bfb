"""The package installs with pip (pyproject.toml, pure Python) and finds libcarl.so through
$CARL_LIB (the file or its directory), or, used in place from the source tree, in build/."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import BUILD, PYDIR, ROOT

PROBE = "import carl, numpy as np; r = carl.route(np.zeros((4, 8), np.float32), k=2); print(carl.__file__); " \
        "print(carl.library_path); print(r.experts.shape)"


def run(python, env, cwd):
    return subprocess.run([python, "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CARL_LIB", "PYTHONPATH")}
    env.update(extra)
    return env


def test_source_tree(tmp_path):
    """PYTHONPATH=python, no CARL_LIB: the library of the repository's build/ directory."""
    if os.path.abspath(BUILD) != os.path.join(ROOT, "build"):
        pytest.skip("the build directory is not build/")
    p = run(sys.executable, clean_env(PYTHONPATH=PYDIR), tmp_path)
    assert p.returncode == 0, p.stderr
    f, lib, shape = p.stdout.split("\n")[:3]
    assert f == os.path.join(PYDIR, "carl", "__init__.py")
    assert lib == os.path.join(ROOT, "build", "libcarl.so") and shape == "(4, 2)"


def test_carl_lib_directory_and_missing(tmp_path):
    p = run(sys.executable, clean_env(PYTHONPATH=PYDIR, CARL_LIB=BUILD), tmp_path)
    assert p.returncode == 0 and p.stdout.split("\n")[1] == os.path.join(BUILD, "libcarl.so"), p.stderr
    p = run(sys.executable, clean_env(PYTHONPATH=PYDIR, CARL_LIB=str(tmp_path / "none.so")), tmp_path)
    assert p.returncode != 0 and "libcarl.so not found" in p.stderr and "CARL_LIB" in p.stderr


def test_pip_install(tmp_path):
    """pip install into a virtual environment (offline: the system's setuptools and numpy)."""
    venv = tmp_path / "venv"
    p = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        pytest.skip("python3 -m venv is not available: %s" % p.stderr.strip()[-200:])
    src = tmp_path / "src"
    shutil.copytree(PYDIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-build-isolation", "--no-index",
                          "--quiet", str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    p = run(str(venv / "bin" / "python"), clean_env(CARL_LIB=os.path.join(BUILD, "libcarl.so")), tmp_path)
    assert p.returncode == 0, p.stderr
    f = p.stdout.split("\n")[0]
    assert f.startswith(str(venv)) and "site-packages" in f
    # with the library copied into the package folder, no CARL_LIB is needed
    pkg = os.path.dirname(f)
    shutil.copy(os.path.join(BUILD, "libcarl.so"), pkg)
    p = run(str(venv / "bin" / "python"), clean_env(), tmp_path)
    assert p.returncode == 0 and p.stdout.split("\n")[1] == os.path.join(pkg, "libcarl.so"), p.stderr
