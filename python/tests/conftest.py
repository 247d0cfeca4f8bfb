"""Shared setup: the package from this source tree, the library and the `carl` binary of the build
directory ($CARL_BUILD, default build/ of the repository), helpers to run the CLI."""

import json
import math
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.dirname(HERE)
ROOT = os.path.dirname(PYDIR)
BUILD = os.path.abspath(os.environ.get("CARL_BUILD", os.path.join(ROOT, "build")))
CLI = os.path.join(BUILD, "carl")
TOPOS = os.path.join(ROOT, "configs", "topologies")

sys.path.insert(0, PYDIR)
os.environ.setdefault("CARL_LIB", os.path.join(BUILD, "libcarl.so"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import carl  # noqa: E402


def topo_path(name):
    return os.path.join(TOPOS, name + ".json")


def run_cli(*args, ok=True):
    """Run build/carl with args (from the repository root); returns the CompletedProcess."""
    if not os.path.exists(CLI):
        pytest.skip("the carl binary is not built (%s)" % CLI)
    p = subprocess.run([CLI] + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True)
    if ok and p.returncode != 0:
        raise AssertionError("carl %s failed (%d):\n%s%s" % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
    return p


def load_json(path):
    with open(path) as f:
        return json.load(f)


def cjson_text(d):
    """The text cJSON (1.7, the CLI's JSON writer) prints for the double d: an integral value as an
    integer, else 15 significant digits when they read back within DBL_EPSILON (relative), else 17."""
    d = float(d)
    if math.isnan(d) or math.isinf(d):
        return "null"
    vi = 2147483647 if d >= 2147483647 else -2147483648 if d <= -2147483648 else int(d)
    if d == float(vi):
        return "%d" % vi
    s = "%1.15g" % d
    t = float(s)
    if not abs(t - d) <= max(abs(t), abs(d)) * sys.float_info.epsilon:
        s = "%1.17g" % d
    return s


def assert_same_tree(a, b, path="", skip=()):
    """Equality of a report read from a file (a) and one computed here (b): the same keys and
    strings, and every number of b printed as the CLI prints numbers (cjson_text) is the text of a."""
    if path in skip:
        return
    if isinstance(a, dict):
        assert isinstance(b, dict), "%s: dict vs %r" % (path, type(b))
        assert set(a) == set(b), "%s: keys %s vs %s" % (path, sorted(a), sorted(b))
        for k in a:
            assert_same_tree(a[k], b[k], path + "/" + k, skip)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), "%s: lists of %d and %s" % (path, len(a), len(b) if isinstance(b, list) else b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, "%s[%d]" % (path, i), skip)
    elif isinstance(a, str) or isinstance(b, str):
        assert a == b, "%s: %r vs %r" % (path, a, b)
    else:
        assert cjson_text(a) == cjson_text(b), "%s: %r vs %r" % (path, a, b)


@pytest.fixture
def h800():
    return carl.Topology(topo_path("h800-2x8"))
