"""The ctypes mirrors of the public structs against the C compiler's layout, and the symbols that
libcarl.so exports against the public headers."""

import ctypes
import os
import re
import shutil
import subprocess

import pytest

from conftest import BUILD, ROOT
import carl
from carl import _lib


def test_struct_layout(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to read the headers' layout")
    ncol = len(carl.sim({"steps": 1, "tokens": 4, "experts": 2, "d": 2, "routers": [{"name": "topk", "opts": {"k": 1}}],
                         "topologies": [carl.Topology.make(1, 2).to_dict()], "scenarios": ["zipf"],
                         "seeds": [1]}).columns)
    structs = list(_lib.STRUCTS) + list(_lib.sim_run_type(ncol))
    lines = []
    for cls in structs:
        lines.append('printf("%s size %%zu\\n", sizeof(%s));' % (cls._cname_, cls._cname_))
        ren = getattr(cls, "_cfield_", {})
        for name, _t in cls._fields_:
            lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (cls._cname_, name, cls._cname_,
                                                                         ren.get(name, name)))
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"carl/topo.h\"\n#include \"carl/route.h\"\n"
                   "#include \"carl/plan.h\"\n#include \"carl/place.h\"\n#include \"carl/step.h\"\n"
                   "#include \"carl/balance.h\"\n#include \"carl/sim.h\"\n"
                   "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", os.path.join(ROOT, "include"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    want = dict((" ".join(l.split()[:2]), int(l.split()[2])) for l in out if l)
    for cls in structs:
        assert want["%s size" % cls._cname_] == ctypes.sizeof(cls), cls._cname_
        for name, _t in cls._fields_:
            assert want["%s %s" % (cls._cname_, name)] == getattr(cls, name).offset, "%s.%s" % (cls._cname_, name)


def _public_names():
    names = set()
    inc = os.path.join(ROOT, "include", "carl")
    for h in os.listdir(inc):
        text = open(os.path.join(inc, h)).read()
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        names |= set(re.findall(r"\bcarl_\w*[A-Za-z0-9]", text))
    return names


def test_exports():
    """Every exported symbol is a carl_* name that a public header declares; internals are hidden;
    what the bindings call is there."""
    nm = shutil.which("nm")
    if not nm:
        pytest.skip("no nm")
    out = subprocess.run([nm, "-D", "--defined-only", carl.library_path], capture_output=True, text=True,
                         check=True).stdout
    syms = {l.split()[-1] for l in out.splitlines() if l.strip()}
    public = _public_names()
    assert syms, "no symbols"
    outside = sorted(s for s in syms if s not in public)
    assert not outside, "exported but not in include/carl/*.h: %s" % outside[:20]
    assert "carl__abort" in syms  # the CARL_ASSERT macro of core.h calls it
    assert not [s for s in syms if s.startswith("carl__") and s != "carl__abort"]
    for f in ("carl_router_create", "carl_router_backward", "carl_step_route", "carl_plan_build",
              "carl_place_compute", "carl_sim_config_create", "carl_topo_to_json", "carl_mem_free"):
        assert f in syms, f
    # the static library's internals (e.g. the registry table) are not exported
    a = os.path.join(BUILD, "libcarl.a")
    if os.path.exists(a):
        allsyms = subprocess.run([nm, "--defined-only", a], capture_output=True, text=True).stdout
        internal = {l.split()[-1] for l in allsyms.splitlines() if " T carl__" in l or " D carl__" in l or " R carl__" in l}
        internal.discard("carl__abort")
        assert internal and not (internal & syms)
